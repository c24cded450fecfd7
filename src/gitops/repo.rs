//! Clone, commit and push one file change, with `git2` (libgit2, built vendored with the
//! `https` feature on the system's OpenSSL).
//!
//! Why `git2` and not `gix`: gix (pure Rust, preferred for having no C build) cannot push yet,
//! and a revert is nothing without its push; libgit2 is the library Git hosts and Flux's own
//! source-controller used for years. Blocking: run it on a blocking thread.
//!
//! Bounded: at most [`MAX_FETCH_BYTES`] are fetched, and the clone gives up at the deadline
//! (checked in the transfer callback); libgit2's socket timeouts need its `unsafe` options, which
//! this crate forbids, so the caller also bounds the whole operation. The credentials go to
//! libgit2 through its callback only (never into the URL), at most once per operation, and never
//! into an error message.

use std::path::Path;
use std::time::Instant;

use git2::build::RepoBuilder;
use git2::{Cred, FetchOptions, PushOptions, RemoteCallbacks, Repository, Signature};

/// At most this much is fetched from the repository.
pub const MAX_FETCH_BYTES: usize = 256 * 1024 * 1024;

/// Why a Git operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cloning {url} (branch {branch}): {message}")]
    Clone {
        url: String,
        branch: String,
        message: String,
    },
    #[error("committing to the clone of {url}: {message}")]
    Commit { url: String, message: String },
    #[error(
        "pushing to {url} (branch {branch}): {message}; check the credentials Secret and that the branch accepts pushes"
    )]
    Push {
        url: String,
        branch: String,
        message: String,
    },
}

/// Basic-auth credentials (Flux's `username` / `password` Secret keys).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// Where to push.
#[derive(Clone, Debug)]
pub struct Remote {
    pub url: String,
    pub branch: String,
    pub credentials: Option<Credentials>,
}

fn callbacks<'a>(credentials: Option<&'a Credentials>, deadline: Instant) -> RemoteCallbacks<'a> {
    let mut callbacks = RemoteCallbacks::new();
    let mut offered = false;
    callbacks.credentials(move |_url, _user, _allowed| match credentials {
        // Once: libgit2 asks again after a refusal, forever.
        Some(c) if !offered => {
            offered = true;
            Cred::userpass_plaintext(&c.username, &c.password)
        }
        _ => Err(git2::Error::from_str(
            "the server refused the credentials (or asked for some and none were given)",
        )),
    });
    callbacks.transfer_progress(move |progress| {
        progress.received_bytes() <= MAX_FETCH_BYTES && Instant::now() < deadline
    });
    callbacks
}

/// libgit2's message, without anything a server could echo of the credentials.
fn message(error: &git2::Error, credentials: Option<&Credentials>) -> String {
    let mut text = error.message().to_string();
    if let Some(c) = credentials.filter(|c| !c.password.is_empty()) {
        text = text.replace(&c.password, "<redacted>");
    }
    text
}

/// Clones `remote`'s branch into `dir` (an empty directory).
pub fn clone(remote: &Remote, dir: &Path, deadline: Instant) -> Result<Repository, GitError> {
    let credentials = remote.credentials.as_ref();
    let mut fetch = FetchOptions::new();
    fetch.remote_callbacks(callbacks(credentials, deadline));
    RepoBuilder::new()
        .branch(&remote.branch)
        .fetch_options(fetch)
        .clone(&remote.url, dir)
        .map_err(|e| GitError::Clone {
            url: remote.url.clone(),
            branch: remote.branch.clone(),
            message: message(&e, credentials),
        })
}

/// Commits the file at `path` (relative to the work tree) as it is now on the checked-out
/// branch; returns the new commit's id.
pub fn commit(repo: &Repository, url: &str, path: &Path, text: &str) -> Result<String, GitError> {
    let err = |e: git2::Error| GitError::Commit {
        url: url.to_string(),
        message: e.message().to_string(),
    };
    let mut index = repo.index().map_err(err)?;
    index.add_path(path).map_err(err)?;
    index.write().map_err(err)?;
    let tree = repo
        .find_tree(index.write_tree().map_err(err)?)
        .map_err(err)?;
    let parent = repo.head().and_then(|h| h.peel_to_commit()).map_err(err)?;
    let author = Signature::now("Sluice", "sluice@sluice.dev").map_err(err)?;
    let id = repo
        .commit(Some("HEAD"), &author, &author, text, &tree, &[&parent])
        .map_err(err)?;
    Ok(id.to_string())
}

/// Pushes the checked-out branch to `remote` (a fast-forward: a refused update is an error).
pub fn push(repo: &Repository, remote: &Remote, deadline: Instant) -> Result<(), GitError> {
    // Outlives the callbacks that fill it.
    let refused: std::cell::RefCell<Option<String>> = Default::default();
    let credentials = remote.credentials.as_ref();
    let err = |message: String| GitError::Push {
        url: remote.url.clone(),
        branch: remote.branch.clone(),
        message,
    };
    let mut origin = repo
        .find_remote("origin")
        .map_err(|e| err(message(&e, credentials)))?;
    let mut callbacks = callbacks(credentials, deadline);
    callbacks.push_update_reference(|reference, status| {
        if let Some(status) = status {
            *refused.borrow_mut() = Some(format!("the server refused {reference}: {status}"));
        }
        Ok(())
    });
    let mut options = PushOptions::new();
    options.remote_callbacks(callbacks);
    let spec = format!("refs/heads/{0}:refs/heads/{0}", remote.branch);
    origin
        .push(&[spec.as_str()], Some(&mut options))
        .map_err(|e| err(message(&e, credentials)))?;
    drop(options);
    match refused.into_inner() {
        Some(refusal) => Err(err(refusal)),
        None => Ok(()),
    }
}
