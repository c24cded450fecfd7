//! The gates: Flagger's in-memory store of which Canaries may pass a confirm gate (key
//! `<name>.<namespace>`) or are asked to roll back (key `rollback.<name>.<namespace>`). A gate
//! nobody opened is closed. Lost on restart, as in Flagger.

use std::collections::HashMap;
use std::sync::Mutex;

/// Open or closed, by key.
#[derive(Debug, Default)]
pub struct Gates {
    open: Mutex<HashMap<String, bool>>,
}

/// The key of a Canary's confirm gate.
pub fn gate_key(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}")
}

/// The key of a Canary's rollback gate.
pub fn rollback_key(name: &str, namespace: &str) -> String {
    format!("rollback.{name}.{namespace}")
}

impl Gates {
    pub fn open(&self, key: &str) {
        self.set(key, true);
    }

    pub fn close(&self, key: &str) {
        self.set(key, false);
    }

    pub fn is_open(&self, key: &str) -> bool {
        self.lock().get(key).copied().unwrap_or(false)
    }

    fn set(&self, key: &str, open: bool) {
        self.lock().insert(key.to_string(), open);
    }

    /// The map; a panic elsewhere while holding it leaves plain booleans, still valid.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_start_closed_and_keep_what_they_were_told() {
        let gates = Gates::default();
        let key = gate_key("podinfo", "test");
        assert_eq!(key, "podinfo.test");
        assert!(!gates.is_open(&key));
        gates.open(&key);
        assert!(gates.is_open(&key));
        assert!(
            !gates.is_open(&rollback_key("podinfo", "test")),
            "the rollback gate is another key"
        );
        assert!(!gates.is_open(&gate_key("podinfo", "other")));
        gates.close(&key);
        assert!(!gates.is_open(&key));
        assert_eq!(rollback_key("podinfo", "test"), "rollback.podinfo.test");
    }
}
