//! The container image: `deploy/image/build` makes an OCI archive from this build's `sluice`
//! binary without pulling anything, and the archive is what the Dockerfile promises — user
//! 65532, `/sluice` as the entrypoint, `controller` as the command, the OCI labels naming the
//! source, the crate's version and the commit, the CA bundle, the libraries the binary links, and
//! no shell. Also: the chart's appVersion is the crate's version (its default image tag).
//! Needs root, buildah and skopeo (Debian's packages): skipped without, failed under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Root with buildah and skopeo, or `false` after printing why (a panic under `CI=true`).
fn can_build_images() -> bool {
    let missing: Vec<&str> = ["buildah", "skopeo"]
        .into_iter()
        .filter(|t| Command::new(t).arg("--version").output().is_err())
        .collect();
    let root_user = run(Command::new("id").arg("-u")).trim() == "0";
    if missing.is_empty() && root_user {
        return true;
    }
    let msg = format!(
        "skipped: building images needs root and buildah + skopeo (missing: {missing:?}, root: {root_user})"
    );
    assert!(!in_ci(), "CI=true but {msg}");
    eprintln!("{msg}");
    false
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart = std::fs::read_to_string(root().join("deploy/helm/sluice/Chart.yaml")).unwrap();
    let chart: Value = serde_yaml::from_str(&chart).unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"), "{chart}");
}

/// The files of the archive's single layer, as `tar -t` lists them (no leading `./`).
fn layer_files(unpacked: &Path, manifest: &Value) -> Vec<String> {
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer, FROM scratch: {manifest}");
    let digest = layers[0]["digest"].as_str().unwrap();
    let blob = unpacked
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    run(Command::new("tar").arg("-tf").arg(blob))
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect()
}

fn read_json(path: PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn image_build_makes_a_non_root_shell_less_oci_archive() {
    if !can_build_images() {
        return;
    }
    let binary = env!("CARGO_BIN_EXE_sluice");
    let version_line = run(Command::new(binary).arg("--version"));
    let commit = version_line
        .trim()
        .rsplit_once("(commit ")
        .and_then(|(_, c)| c.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version output: {version_line}"))
        .to_string();

    let work = root()
        .join("target")
        .join(format!("image-test-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let _cleanup = RemoveOnDrop(work.clone());
    let archive = work.join("sluice.tar");
    let printed = run(Command::new(root().join("deploy/image/build"))
        .arg("--binary")
        .arg(binary)
        .arg("--out")
        .arg(&archive));
    let digest = std::fs::read_to_string(work.join("sluice.tar.digest")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        printed.trim(),
        format!("ghcr.io/sluice-rs/sluice:{version}@{}", digest.trim())
    );

    // The image's configuration, as a runtime reads it.
    let config: Value = serde_json::from_str(&run(Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci-archive:{}", archive.display()))))
    .unwrap();
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532", "{config}");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/sluice"]), "{config}");
    assert_eq!(c["Cmd"], serde_json::json!(["controller"]), "{config}");
    let labels = &c["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"], version,
        "{labels}"
    );
    assert_eq!(
        labels["org.opencontainers.image.revision"], commit,
        "{labels}"
    );
    assert_eq!(
        labels["org.opencontainers.image.source"], "https://github.com/sluice-rs/sluice",
        "{labels}"
    );

    // Its one layer: the binary, its libraries, the CA bundle; no shell, no package manager.
    let unpacked = work.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked));
    let index = read_json(unpacked.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(manifest_digest, digest.trim(), "{index}");
    let manifest = read_json(
        unpacked
            .join("blobs/sha256")
            .join(manifest_digest.trim_start_matches("sha256:")),
    );
    let files = layer_files(&unpacked, &manifest);
    for want in [
        "sluice",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "usr/lib64/ld-linux-x86-64.so.2",
        "usr/lib/x86_64-linux-gnu/libc.so.6",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} missing: {files:?}");
    }
    for shell in [
        "bin/sh",
        "usr/bin/sh",
        "bin/bash",
        "usr/bin/bash",
        "bin/busybox",
    ] {
        assert!(!files.iter().any(|f| f == shell), "{shell} in the image");
    }
    let executables: Vec<&String> = files
        .iter()
        .filter(|f| f.contains("/bin/") || f.starts_with("bin/") || f.contains("sbin"))
        .collect();
    assert!(
        executables.is_empty(),
        "binaries besides /sluice: {executables:?}"
    );
}

/// Removes a directory when dropped, also when an assertion failed (the archive is large).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
