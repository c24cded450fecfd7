//! CSRF tokens: an HMAC of the viewer's identity under a key made at start, so a token is good
//! for one viewer of one dashboard process only and nothing is stored per viewer.
//!
//! Every POST must carry the token of the page it came from; a cross-site form cannot read it.

use ring::hmac;

pub struct Csrf {
    key: hmac::Key,
}

impl Csrf {
    /// A fresh random key (from the operating system).
    pub fn new() -> Csrf {
        let rng = ring::rand::SystemRandom::new();
        // Generation fails only without an OS random source, where nothing could be secret.
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .expect("the operating system's random number generator");
        Csrf { key }
    }

    /// The token for `viewer` (a user name, or a hash of the bearer token).
    pub fn token(&self, viewer: &str) -> String {
        hex(hmac::sign(&self.key, viewer.as_bytes()).as_ref())
    }

    /// Whether `token` is `viewer`'s (constant time).
    pub fn verify(&self, viewer: &str, token: &str) -> bool {
        match unhex(token) {
            Some(tag) => hmac::verify(&self.key, viewer.as_bytes(), &tag).is_ok(),
            None => false,
        }
    }
}

impl Default for Csrf {
    fn default() -> Self {
        Self::new()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_for_its_viewer_only() {
        let csrf = Csrf::new();
        let token = csrf.token("alice");
        assert!(csrf.verify("alice", &token));
        assert!(!csrf.verify("bob", &token));
        assert!(!csrf.verify("alice", ""));
        assert!(!csrf.verify("alice", "zz"));
        assert!(
            !Csrf::new().verify("alice", &token),
            "another process's key"
        );
    }
}
