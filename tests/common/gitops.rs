//! A real GitOps agent in end-to-end tests: a Git repository on the environment's Git server
//! (`tests/env/git-http.py`), written with plain `git commit && git push`, and Flux's
//! GitRepository + Kustomization syncing it (source-controller and kustomize-controller run by
//! `tests/env/gitops`). Helpers read the Kustomization the way `flux get` / `flux events` do.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::{Value, json};

use super::{TestEnv, eventually, is_ci, say};

/// The Git server and where its repositories live (`SLUICE_GIT_URL`, `SLUICE_GIT_ROOT`).
#[derive(Clone, Debug)]
pub struct GitopsEnv {
    /// Base URL: a repository `<root>/<name>.git` is `<git_url>/<name>.git`.
    pub git_url: String,
    /// Directory of the server's bare repositories.
    pub git_root: PathBuf,
}

impl GitopsEnv {
    /// From the env file's variables, when `tests/env/up` started Flux.
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Option<GitopsEnv> {
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        Some(GitopsEnv {
            git_url: get("SLUICE_GIT_URL")?,
            git_root: PathBuf::from(get("SLUICE_GIT_ROOT")?),
        })
    }
}

impl TestEnv {
    /// Flux and its Git server, or `None` after printing "skipped: ..." when `tests/env/up` did
    /// not start them (a panic instead when `CI=true`).
    pub fn gitops_or_skip(&self) -> Option<GitopsEnv> {
        if self.gitops.is_none() {
            let msg =
                "skipped: no Flux in the test env (tests/env/up starts it unless SLUICE_FLUX=0)";
            if is_ci() {
                panic!("CI=true but {msg}");
            }
            say(msg);
        }
        self.gitops.clone()
    }
}

/// A bare repository on the Git server and a working copy of it; both removed on drop.
pub struct Repo {
    /// The URL Flux clones.
    pub url: String,
    bare: PathBuf,
    work: PathBuf,
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Sluice e2e",
            "-c",
            "user.email=e2e@sluice.test",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap_or_else(|e| panic!("running git {args:?}: {e}"));
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Repo {
    /// Creates the bare repository `<name>.git` (branch `main`) and an empty working copy.
    pub fn create(gitops: &GitopsEnv, name: &str) -> Repo {
        let bare = gitops.git_root.join(format!("{name}.git"));
        let work = std::env::temp_dir().join(format!("sluice-gitops-{name}"));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("creating the working copy");
        git(
            &gitops.git_root,
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                &bare.to_string_lossy(),
            ],
        );
        let url = format!("{}/{name}.git", gitops.git_url);
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["remote", "add", "origin", &url]);
        Repo { url, bare, work }
    }

    /// Writes a file of the working copy (path relative to the repository's root).
    pub fn write(&self, path: &str, content: &str) {
        let file = self.work.join(path);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).expect("creating a directory in the working copy");
        }
        std::fs::write(&file, content).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }

    /// Deletes a file of the working copy (the next commit removes it from Git).
    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.work.join(path))
            .unwrap_or_else(|e| panic!("removing {path}: {e}"));
    }

    /// `git add -A && git commit && git push` over HTTP; returns the new commit's SHA.
    pub fn commit_and_push(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(
            &self.work,
            &["push", "-q", "origin", "HEAD:refs/heads/main"],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

impl Repo {
    /// The messages of the commits on the server's `main`, newest first.
    pub fn remote_messages(&self) -> Vec<String> {
        git(&self.bare, &["log", "--format=%B%x00", "main"])
            .split('\0')
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect()
    }

    /// The server's `main` commit.
    pub fn remote_head(&self) -> String {
        git(&self.bare, &["rev-parse", "main"])
    }

    /// A file as the server's `main` holds it.
    pub fn remote_file(&self, path: &str) -> String {
        git(&self.bare, &["show", &format!("main:{path}")])
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
        let _ = std::fs::remove_dir_all(&self.bare);
    }
}

/// A GitRepository named `name` on `url`'s branch `main`, polled every 2 s.
pub fn git_repository(name: &str, url: &str) -> Value {
    json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": name},
        "spec": {"url": url, "interval": "2s", "timeout": "20s", "ref": {"branch": "main"}},
    })
}

fn kustomizations_api(env: &TestEnv, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization");
    Api::namespaced_with(
        env.client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "kustomizations"),
    )
}

/// The Kustomization `name` in `ns` as it is now.
pub async fn kustomization(env: &TestEnv, ns: &str, name: &str) -> DynamicObject {
    kustomizations_api(env, ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("reading Kustomization {ns}/{name}: {e}"))
}

/// A condition of a Flux object: (status, reason, message).
pub fn condition(obj: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    let list = obj.data.pointer("/status/conditions")?.as_array()?;
    let c = list.iter().find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// A field of `status` as a string ("" when absent).
pub fn status_str(obj: &DynamicObject, field: &str) -> String {
    obj.data["status"][field]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The Kustomization's inventory: its entries' ids (`<ns>_<name>_<group>_<kind>`), sorted.
pub fn inventory(obj: &DynamicObject) -> Vec<String> {
    let mut ids: Vec<String> = obj
        .data
        .pointer("/status/inventory/entries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids
}

/// Asks for a reconcile now (`flux reconcile kustomization --with-source` without the source:
/// the `reconcile.fluxcd.io/requestedAt` annotation) and waits until kustomize-controller has
/// finished one that saw it (`status.lastHandledReconcileAt`); returns the Kustomization then.
pub async fn force_reconcile(
    env: &TestEnv,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> DynamicObject {
    let token = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let api = kustomizations_api(env, ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}}),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("annotating Kustomization {ns}/{name}: {e}"));
    eventually(
        timeout,
        &format!("kustomize-controller to handle the reconcile request {token} of {ns}/{name}"),
        || async {
            let k = api.get(name).await.ok()?;
            (status_str(&k, "lastHandledReconcileAt") == token).then_some(k)
        },
    )
    .await
}

/// kustomize-controller's Events on Kustomizations in `ns`: (name, count, reason, message).
pub async fn flux_events(env: &TestEnv, ns: &str) -> Vec<(String, i32, String, String)> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("Kustomization"))
        .map(|e| {
            (
                e.metadata.name.unwrap_or_default(),
                e.count.unwrap_or(1),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}
