//! Build script: records the git commit the binary was built from as `SLUICE_GIT_COMMIT`, for
//! `sluice --version`. It never fails the build: outside a git checkout of this crate (a source
//! tarball, a container build context without `.git`) the commit is "unknown". An explicit
//! `SLUICE_GIT_COMMIT` in the build's environment wins (image builds pass it in).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SLUICE_GIT_COMMIT");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let commit = match std::env::var("SLUICE_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => git_commit(Path::new(&manifest_dir)).unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=SLUICE_GIT_COMMIT={commit}");
}

/// The short commit of HEAD, only when the crate's own directory is the top of a work tree:
/// a tarball unpacked inside some other repository must not report that repository's commit.
fn git_commit(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = Path::new(&top).canonicalize().ok()? == dir.canonicalize().ok()?;
    if !same {
        return None;
    }
    // Rebuild when HEAD moves: HEAD itself (branch switches) and the ref it points to (commits).
    for file in ["HEAD", "packed-refs"] {
        watch(dir, file);
    }
    if let Some(reference) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch(dir, &reference);
    }
    git(dir, &["rev-parse", "--short=12", "HEAD"])
}

fn watch(dir: &Path, git_file: &str) {
    // Only existing files: cargo reruns a build script on every build for a missing one.
    if let Some(path) = git(
        dir,
        &[
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            git_file,
        ],
    ) && Path::new(&path).exists()
    {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}
