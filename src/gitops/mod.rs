//! Rollback written back to Git: carries out the engine's "revert in Git"
//! ([`crate::engine::git_revert`]) for a Rollout Flux applied.
//!
//! ```text
//!  Rollout labels kustomize.toolkit.fluxcd.io/{name,namespace} ─▶ Kustomization (spec.path,
//!  sourceRef) ─▶ GitRepository (url, ref.branch) ─▶ clone ─▶ the file declaring the Rollout
//!  (the annotation's path, else the first under spec.path) ─▶ images set back ─▶ commit ─▶ push
//! ```
//!
//! The push credentials come from the Secret the annotation names (`username`, `password`) and
//! never reach an error, Event, log or status. Bounded: [`TIMEOUT`] for the whole operation,
//! [`repo::MAX_FETCH_BYTES`] fetched, [`MAX_FILES`] files of at most [`MAX_FILE_BYTES`] read.
//! Idempotent: a file that already has the stable images is not committed again, so a revert
//! retried after a crash or a conflict never pushes twice. Decides nothing: what to revert and
//! whether is the engine's.

pub mod edit;
mod repo;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt};

use crate::api::argo::rollout::Rollout;
use crate::engine::git_revert::GitRevert;
use edit::Edit;
pub use repo::GitError;

/// The whole revert (reads, clone, commit, push) gives up after this long.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Files looked at for the Rollout's declaration, at most.
pub const MAX_FILES: usize = 2000;
/// A manifest larger than this is not read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

const FLUX_NAME_LABEL: &str = "kustomize.toolkit.fluxcd.io/name";
const FLUX_NAMESPACE_LABEL: &str = "kustomize.toolkit.fluxcd.io/namespace";

/// What a revert did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A commit was pushed.
    Pushed {
        commit: String,
        url: String,
        path: String,
    },
    /// The file already declares the stable images: nothing pushed.
    AlreadyInGit { url: String, path: String },
}

/// Why a revert was not made.
#[derive(Debug, thiserror::Error)]
pub enum RevertError {
    #[error(
        "Rollout {0} has no {FLUX_NAME_LABEL} / {FLUX_NAMESPACE_LABEL} labels: it was not applied by a Flux Kustomization, so its Git repository is unknown"
    )]
    NotFromFlux(String),
    #[error("reading {kind} {namespace}/{name} (the Rollout's Git source): {source}")]
    Read {
        kind: &'static str,
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("{kind} {namespace}/{name} has no {field}; cannot find the Rollout's Git repository")]
    Field {
        kind: &'static str,
        namespace: String,
        name: String,
        field: &'static str,
    },
    #[error(
        "Kustomization {namespace}/{name} takes its manifests from a {kind}; only a GitRepository can be written back to"
    )]
    NotGit {
        namespace: String,
        name: String,
        kind: String,
    },
    #[error(
        "reading the push-credentials Secret {namespace}/{name} named by the sluice.dev/git-revert annotation: {source}"
    )]
    Secret {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error(
        "no file under {dir} in {url} declares Rollout {name}; name it in the annotation (`<secret>:<path>`)"
    )]
    NotDeclared {
        url: String,
        dir: String,
        name: String,
    },
    #[error(
        "{path} in {url} no longer declares the aborted image(s) of Rollout {name}: changed in Git since, left alone"
    )]
    Diverged {
        url: String,
        path: String,
        name: String,
    },
    #[error(
        "the aborted update of Rollout {0} changed no container image; only image changes are reverted"
    )]
    NothingToRevert(String),
    #[error("writing the work tree of {url}: {source}")]
    WorkTree { url: String, source: std::io::Error },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("reverting Rollout {0} in Git took longer than {TIMEOUT:?}; gave up")]
    TimedOut(String),
    #[error("reverting Rollout {0} in Git stopped unexpectedly; see the controller's log")]
    Stopped(String),
}

/// Where the Rollout's manifests come from.
struct Source {
    url: String,
    branch: String,
    /// The Kustomization's `spec.path`, relative to the repository's root.
    dir: String,
}

fn dynamic(client: &Client, ns: &str, group: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, "v1", kind);
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

async fn get(
    api: &Api<DynamicObject>,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<DynamicObject, RevertError> {
    api.get(name).await.map_err(|source| RevertError::Read {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    })
}

/// The Kustomization that applied `rollout`, and its GitRepository.
async fn source(client: &Client, rollout: &Rollout) -> Result<Source, RevertError> {
    let id = format!(
        "{}/{}",
        rollout.namespace().unwrap_or_default(),
        rollout.name_any()
    );
    let labels = rollout.labels();
    let (Some(name), Some(namespace)) = (
        labels.get(FLUX_NAME_LABEL),
        labels.get(FLUX_NAMESPACE_LABEL),
    ) else {
        return Err(RevertError::NotFromFlux(id));
    };
    let api = dynamic(
        client,
        namespace,
        "kustomize.toolkit.fluxcd.io",
        "Kustomization",
        "kustomizations",
    );
    let kustomization = get(&api, "Kustomization", namespace, name).await?;
    let spec = &kustomization.data["spec"];
    let reference = &spec["sourceRef"];
    let kind = reference["kind"].as_str().unwrap_or_default();
    if kind != "GitRepository" {
        return Err(RevertError::NotGit {
            namespace: namespace.clone(),
            name: name.clone(),
            kind: kind.to_string(),
        });
    }
    let repo_name = reference["name"].as_str().unwrap_or_default().to_string();
    let repo_namespace = reference["namespace"]
        .as_str()
        .unwrap_or(namespace)
        .to_string();
    let dir = spec["path"].as_str().unwrap_or("./").to_string();
    let api = dynamic(
        client,
        &repo_namespace,
        "source.toolkit.fluxcd.io",
        "GitRepository",
        "gitrepositories",
    );
    let repository = get(&api, "GitRepository", &repo_namespace, &repo_name).await?;
    let url = repository.data["spec"]["url"]
        .as_str()
        .map(str::to_string)
        .ok_or(RevertError::Field {
            kind: "GitRepository",
            namespace: repo_namespace.clone(),
            name: repo_name.clone(),
            field: "spec.url",
        })?;
    // Flux's default branch.
    let branch = repository.data["spec"]["ref"]["branch"]
        .as_str()
        .unwrap_or("master")
        .to_string();
    Ok(Source { url, branch, dir })
}

/// The Secret's `username` / `password`, when it has them.
async fn credentials(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<repo::Credentials>, RevertError> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|source| RevertError::Secret {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source: Box::new(source),
        })?;
    let data = secret.data.unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
    };
    Ok(match (text("username"), text("password")) {
        (Some(username), Some(password)) => Some(repo::Credentials { username, password }),
        _ => None,
    })
}

/// Reverts the aborted update of `rollout` in Git as `revert` says.
pub async fn revert(
    client: &Client,
    rollout: &Rollout,
    revert: &GitRevert,
) -> Result<Outcome, RevertError> {
    let namespace = rollout.namespace().unwrap_or_default();
    let id = format!("{namespace}/{}", rollout.name_any());
    if revert.images.is_empty() {
        return Err(RevertError::NothingToRevert(id));
    }
    let work = async {
        let source = source(client, rollout).await?;
        let credentials = credentials(client, &namespace, &revert.target.secret).await?;
        let remote = repo::Remote {
            url: source.url.clone(),
            branch: source.branch.clone(),
            credentials,
        };
        let job = Job {
            remote,
            dir: source.dir,
            name: rollout.name_any(),
            id: id.clone(),
            revert: revert.clone(),
            deadline: Instant::now() + TIMEOUT,
        };
        tokio::task::spawn_blocking(move || job.run())
            .await
            .unwrap_or_else(|_| Err(RevertError::Stopped(id.clone())))
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(RevertError::TimedOut(id.clone())))
}

/// The blocking part: clone, edit, commit, push, in a directory removed afterwards.
struct Job {
    remote: repo::Remote,
    dir: String,
    name: String,
    id: String,
    revert: GitRevert,
    deadline: Instant,
}

impl Job {
    fn run(&self) -> Result<Outcome, RevertError> {
        let work = std::env::temp_dir().join(format!(
            "sluice-git-revert-{}-{}",
            std::process::id(),
            self.revert.aborted_hash
        ));
        let _ = std::fs::remove_dir_all(&work);
        let result = self.run_in(&work);
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    fn run_in(&self, work: &Path) -> Result<Outcome, RevertError> {
        let url = self.remote.url.clone();
        let repository = repo::clone(&self.remote, work, self.deadline)?;
        let (path, edit) = self.find(work)?;
        let shown = path.to_string_lossy().to_string();
        let text = match edit {
            Edit::Changed(text) => text,
            Edit::AlreadyReverted => return Ok(Outcome::AlreadyInGit { url, path: shown }),
            Edit::Diverged => {
                return Err(RevertError::Diverged {
                    url,
                    path: shown,
                    name: self.name.clone(),
                });
            }
            Edit::NotDeclared => {
                return Err(RevertError::NotDeclared {
                    url,
                    dir: self.dir.clone(),
                    name: self.name.clone(),
                });
            }
        };
        std::fs::write(work.join(&path), text).map_err(|source| RevertError::WorkTree {
            url: url.clone(),
            source,
        })?;
        let commit = repo::commit(&repository, &url, &path, &self.message())?;
        repo::push(&repository, &self.remote, self.deadline)?;
        Ok(Outcome::Pushed {
            commit,
            url,
            path: shown,
        })
    }

    /// The file declaring the Rollout (relative to the root) and the edit it needs.
    fn find(&self, work: &Path) -> Result<(PathBuf, Edit), RevertError> {
        let candidates = match &self.revert.target.path {
            Some(path) => vec![PathBuf::from(path)],
            None => manifests(work, &work.join(self.dir.trim_start_matches("./"))),
        };
        for path in candidates {
            let file = work.join(&path);
            // Not through a symlink: a repository must not make the controller write elsewhere.
            let small = std::fs::symlink_metadata(&file)
                .is_ok_and(|m| m.is_file() && m.len() <= MAX_FILE_BYTES);
            let Some(text) = small.then(|| std::fs::read_to_string(&file).ok()).flatten() else {
                continue;
            };
            match edit::revert_images(&text, &self.name, &self.revert.images) {
                Edit::NotDeclared => continue,
                edit => return Ok((path, edit)),
            }
        }
        Err(RevertError::NotDeclared {
            url: self.remote.url.clone(),
            dir: self.dir.clone(),
            name: self.name.clone(),
        })
    }

    fn message(&self) -> String {
        let to: Vec<&str> = self.revert.images.iter().map(|c| c.to.as_str()).collect();
        let changes: String = self
            .revert
            .images
            .iter()
            .map(|c| format!("{}: {} -> {}\n", c.container, c.from, c.to))
            .collect();
        format!(
            "Revert Rollout {} to {}\n\nSluice aborted the update to pod template {}: {}\n\n{changes}",
            self.id,
            to.join(", "),
            self.revert.aborted_hash,
            self.revert.reason,
        )
    }
}

/// YAML files under `dir` (relative to `root`), sorted, at most [`MAX_FILES`] looked at.
fn manifests(root: &Path, dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_FILES {
                return out;
            }
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && entry.file_name() != ".git" {
                pending.push(path);
            } else if kind.is_file()
                && path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && let Ok(relative) = path.strip_prefix(root)
            {
                out.push(relative.to_path_buf());
            }
        }
    }
    out.sort();
    out
}
