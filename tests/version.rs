//! `sluice --version`: the crate version and the git commit of the checkout it was built from,
//! and the build script's fallbacks — "unknown" outside a git checkout of this crate (a source
//! tarball, also one unpacked inside some other repository) and an explicit `SLUICE_GIT_COMMIT`.
//! No cluster needed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn git_head() -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root())
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn version_prints_the_crate_version_and_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Built from a tarball there is no commit to compare with; the build script's own test
    // below covers that case.
    let commit = git_head().unwrap_or_else(|| "unknown".to_string());
    assert_eq!(
        stdout.trim(),
        format!("sluice {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

/// Compiles `build.rs` as a plain program (it is one) into `dir` and returns its path.
fn build_script(dir: &Path) -> PathBuf {
    let exe = dir.join("build-script");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = Command::new(rustc)
        .args(["--edition", "2024", "-O", "-o"])
        .arg(&exe)
        .arg(root().join("build.rs"))
        .output()
        .unwrap();
    assert!(out.status.success(), "rustc build.rs: {out:?}");
    exe
}

/// Runs the build script as cargo would for a crate in `manifest_dir`; returns the commit it sets.
fn commit_for(script: &Path, manifest_dir: &Path, explicit: Option<&str>) -> String {
    let mut cmd = Command::new(script);
    cmd.env("CARGO_MANIFEST_DIR", manifest_dir)
        .env_remove("SLUICE_GIT_COMMIT");
    if let Some(c) = explicit {
        cmd.env("SLUICE_GIT_COMMIT", c);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("cargo:rustc-env=SLUICE_GIT_COMMIT="))
        .unwrap_or_else(|| panic!("no SLUICE_GIT_COMMIT in the build script's output:\n{stdout}"))
        .to_string()
}

#[test]
fn build_script_says_unknown_outside_a_checkout_and_takes_an_explicit_commit() {
    let tmp = std::env::temp_dir().join(format!("sluice-version-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let script = build_script(&tmp);

    // A tarball unpacked outside any repository.
    let tarball = tmp.join("sluice-0.1.0");
    std::fs::create_dir_all(&tarball).unwrap();
    assert_eq!(commit_for(&script, &tarball, None), "unknown");

    // A tarball unpacked inside this repository's work tree (target/ is in one): not HEAD's
    // commit of the surrounding repository.
    let nested = root()
        .join("target")
        .join(format!("version-test-{}", std::process::id()));
    std::fs::create_dir_all(&nested).unwrap();
    let in_repo = commit_for(&script, &nested, None);
    std::fs::remove_dir_all(&nested).unwrap();
    assert_eq!(in_repo, "unknown");

    // The crate's own checkout, and an explicit commit (image builds without .git).
    if let Some(head) = git_head() {
        assert_eq!(commit_for(&script, root(), None), head);
    }
    assert_eq!(commit_for(&script, &tarball, Some("0123abcd")), "0123abcd");
    std::fs::remove_dir_all(&tmp).unwrap();
}
