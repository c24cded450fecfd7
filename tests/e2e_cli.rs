//! The CLI verbs (`sluice get|list|promote|abort|retry|pause|resume|undo|restart|set image|status`)
//! as the built binary, against the real cluster and a real `sluice controller`; the kstatus
//! Ready condition through `kubectl wait`; and `sluice lint` (offline) against the
//! invalid-manifest catalogue and every example.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::controller::ControllerProcess;
use common::{TestEnv, TestNamespace};
use kube::api::{Api, PostParams};
use serde_json::json;
use sluice::api::argo::rollout::{Rollout, RolloutPhase};

const TIMEOUT: Duration = Duration::from_secs(60);

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- lint (offline) -------------------------------------------------------------------------

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn lint_rejects_every_invalid_manifest_with_its_expected_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = yaml_files(&root.join("tests/invalid"));
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for file in &files {
        let expect = std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect:"))
            .map(|e| e.trim().to_string())
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", file.display()));
        let out = sluice().arg("lint").arg("-f").arg(file).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.code() != Some(1) || !stdout.contains(&expect) {
            failures.push(format!(
                "{}: expected {expect:?}\n{}",
                file.display(),
                text(&out)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn lint_accepts_every_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = yaml_files(&root.join("examples"));
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for file in &files {
        let out = sluice().arg("lint").arg("-f").arg(file).output().unwrap();
        if !out.status.success() {
            failures.push(format!("{}:\n{}", file.display(), text(&out)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn lint_names_the_field_of_engine_and_template_errors() {
    let dir = std::env::temp_dir().join(format!("sluice-lint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: web}\nspec:\n  \
         minReadySeconds: 700\n  selector: {matchLabels: {app: web}}\n  template:\n    \
         metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx}]}\n  \
         strategy: {canary: {steps: [{setWeight: 10}]}}\n---\n\
         apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n  \
         metrics:\n  - name: m\n    successCondition: 'result[0] >='\n    \
         provider: {prometheus: {address: 'http://p', query: up}}\n",
    )
    .unwrap();
    let out = sluice().arg("lint").arg("-f").arg(&file).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout.contains("Rollout/web: InvalidSpec: spec.progressDeadlineSeconds"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("AnalysisTemplate/t: spec.metrics[0]"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_binary_answers_as_the_kubectl_plugin() {
    let dir = std::env::temp_dir().join(format!("sluice-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("kubectl-sluice");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sluice"), &link).unwrap();
    let out = Command::new(&link).arg("--help").output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Usage: kubectl sluice"),
        "{}",
        text(&out)
    );
}

// ---- verbs on the real cluster ---------------------------------------------------------------

struct Fixture {
    env: TestEnv,
    ns: TestNamespace,
    ctl: ControllerProcess,
    rollouts: Api<Rollout>,
}

impl Fixture {
    async fn new(prefix: &str) -> Option<Fixture> {
        let env = common::test_env().await?;
        let ns = env.namespace(prefix).await;
        let ctl = ControllerProcess::start_with(&env, &ns.name, &["--leader-elect=false"]).await;
        let rollouts = Api::namespaced(env.client.clone(), &ns.name);
        Some(Fixture {
            env,
            ns,
            ctl,
            rollouts,
        })
    }

    /// Runs `sluice ARGS -n <ns>` against the test cluster.
    fn cli(&self, args: &[&str]) -> Output {
        sluice()
            .args(args)
            .args(["-n", &self.ns.name])
            .env("KUBECONFIG", &self.env.kubeconfig)
            .output()
            .expect("running sluice")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "sluice {args:?}: {}\ncontroller log:\n{}",
            text(&out),
            self.ctl.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn create(&self, name: &str, steps: serde_json::Value) {
        let rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": name},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
                },
                "strategy": {"canary": {"steps": steps}},
            },
        }))
        .unwrap();
        self.rollouts
            .create(&PostParams::default(), &rollout)
            .await
            .expect("creating the Rollout");
    }

    async fn wait(&self, name: &str, what: &str, check: impl Fn(&Rollout) -> bool) -> Rollout {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let r = self.rollouts.get(name).await.expect("reading the Rollout");
            let observed = r.status.as_ref().is_some_and(|s| {
                s.observed_generation == r.metadata.generation.unwrap_or_default().to_string()
            });
            if observed && check(&r) {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {}\ncontroller log:\n{}",
                serde_json::to_string_pretty(&r.status).unwrap_or_default(),
                self.ctl.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_phase(&self, name: &str, phase: RolloutPhase) -> Rollout {
        self.wait(name, &format!("phase {phase:?}"), |r| {
            r.status.as_ref().and_then(|s| s.phase) == Some(phase)
        })
        .await
    }
}

fn image(r: &Rollout) -> String {
    r.spec
        .template
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

#[tokio::test]
async fn every_verb_against_the_real_cluster() {
    let Some(f) = Fixture::new("cli").await else {
        return;
    };
    let name = "web";
    f.create(
        name,
        json!([{"setWeight": 50}, {"pause": {}}, {"setWeight": 75}, {"pause": {}}]),
    )
    .await;
    f.wait_phase(name, RolloutPhase::Healthy).await;

    // kstatus: `kubectl wait --for=condition=Ready` returns once the rollout is Healthy.
    let out = f
        .env
        .kubectl()
        .args(["-n", &f.ns.name, "wait", "--for=condition=Ready"])
        .arg(format!("rollout/{name}"))
        .arg("--timeout=60s")
        .output()
        .unwrap();
    assert!(out.status.success(), "kubectl wait: {}", text(&out));
    let r = f.rollouts.get(name).await.unwrap();
    let ready = r
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    assert_eq!(ready.observed_generation, r.metadata.generation);

    // status: Healthy is exit 0.
    let out = f.cli(&["status", name, "--timeout", "30s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Healthy"));

    // list
    let list = f.ok(&["list", "rollouts"]);
    assert!(list.contains(name) && list.contains("Healthy"), "{list}");

    // set image starts an update that stops at the first pause.
    f.ok(&["set", "image", name, "web=registry.invalid/web:2"]);
    let r = f.wait_phase(name, RolloutPhase::Paused).await;
    assert_eq!(image(&r), "registry.invalid/web:2");
    assert_eq!(r.status.as_ref().unwrap().current_step_index, Some(1));

    // get rollout: the tree, current step marked, both revisions.
    let tree = f.ok(&["get", "rollout", name]);
    for want in [
        "Status:        Paused",
        "▶ 1 pause",
        "# revision:2",
        "# revision:1",
        "canary",
        "stable",
        "ReplicaSet",
        "Pod",
    ] {
        assert!(tree.contains(want), "no {want:?} in\n{tree}");
    }
    // --watch draws the same tree until interrupted.
    let mut watch = sluice()
        .args(["get", "rollout", name, "--watch", "-n", &f.ns.name])
        .env("KUBECONFIG", &f.env.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("# revision:2"),
        "get --watch printed no tree"
    );

    // status while paused times out: exit 2.
    let out = f.cli(&["status", name, "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // promote: on to the next pause.
    f.ok(&["promote", name]);
    f.wait(name, "step 3 paused", |r| {
        let s = r.status.clone().unwrap_or_default();
        s.current_step_index == Some(3) && s.phase == Some(RolloutPhase::Paused)
    })
    .await;

    // abort: Degraded, and status says so with exit 1.
    f.ok(&["abort", name]);
    f.wait_phase(name, RolloutPhase::Degraded).await;
    let out = f.cli(&["status", name, "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = f
        .env
        .kubectl()
        .args(["-n", &f.ns.name, "wait", "--for=condition=Stalled"])
        .arg(format!("rollout/{name}"))
        .arg("--timeout=30s")
        .output()
        .unwrap();
    assert!(out.status.success(), "kubectl wait Stalled: {}", text(&out));

    // retry (Argo's spelling too): the update starts again.
    f.ok(&["retry", "rollout", name]);
    f.wait(name, "retried and paused at step 1", |r| {
        let s = r.status.clone().unwrap_or_default();
        !s.abort && s.phase == Some(RolloutPhase::Paused) && s.current_step_index == Some(1)
    })
    .await;

    // promote --full: straight to Healthy on the new image.
    f.ok(&["promote", name, "--full"]);
    f.wait(name, "fully promoted", |r| {
        let s = r.status.clone().unwrap_or_default();
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs == s.current_pod_hash
    })
    .await;

    // pause / resume: spec.paused on and off.
    f.ok(&["pause", name]);
    let r = f.wait_phase(name, RolloutPhase::Paused).await;
    assert_eq!(r.spec.paused, Some(true));
    f.ok(&["resume", name]);
    let r = f.wait_phase(name, RolloutPhase::Healthy).await;
    assert_ne!(r.spec.paused, Some(true));

    // restart: spec.restartAt set, and the controller records it.
    f.ok(&["restart", name]);
    f.wait(name, "restart observed", |r| {
        r.spec.restart_at.is_some()
            && r.status.as_ref().and_then(|s| s.restarted_at.as_ref()) == r.spec.restart_at.as_ref()
    })
    .await;

    // undo: back to revision 1's template (image 1), as a new update.
    let before = f
        .rollouts
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
        .current_pod_hash;
    let out = f.ok(&["undo", name]);
    assert!(out.contains("revision 1"), "{out}");
    let r = f.rollouts.get(name).await.unwrap();
    assert_eq!(image(&r), "registry.invalid/web:1");
    // A new revision clears promoteFull (as in Argo), so promote once the controller has seen it:
    // sent earlier, on a loaded machine, the promotion was for the previous revision and lost.
    f.wait(name, "the undone template planned", |r| {
        let s = r.status.clone().unwrap_or_default();
        s.current_pod_hash != before && s.phase == Some(RolloutPhase::Paused)
    })
    .await;
    f.ok(&["promote", name, "--full"]);
    f.wait(name, "healthy on the undone template", |r| {
        let s = r.status.clone().unwrap_or_default();
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs == s.current_pod_hash
    })
    .await;

    // Errors name the rollout.
    let out = f.cli(&["promote", "missing"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        text(&out)
    );
}

/// `sluice lint` and the apiserver (through kubectl, which reads YAML 1.1) agree on manifests
/// whose meaning depends on how YAML is read, on names and on ports.
#[tokio::test]
async fn lint_agrees_with_kubectl_and_the_apiserver() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("lint-agree").await;
    let template = |name: &str, value: &str| {
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: {name}}}\n\
             spec:\n  args: [{{name: flag, value: {value}}}]\n  metrics:\n  - name: m\n    \
             provider: {{web: {{url: 'http://x/{{{{args.flag}}}}'}}}}\n"
        )
    };
    let canary = |name: &str, port: &str, skip: &str| {
        format!(
            "apiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata: {{name: {name}}}\nspec:\n  \
             targetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}\n  skipAnalysis: {skip}\n  \
             service: {{port: {port}}}\n  analysis: {{interval: 1m, threshold: 5, stepWeight: 10, maxWeight: 50}}\n"
        )
    };
    // (what, manifest, valid)
    let cases = [
        ("a quoted 'on' string", template("quoted", "'on'"), true),
        ("unquoted on is a boolean", template("on-bool", "on"), false),
        ("unquoted y is a boolean", template("y-bool", "y"), false),
        (
            "unquoted off is a boolean",
            template("off-bool", "off"),
            false,
        ),
        ("a plain word", template("plain", "onward"), true),
        ("an upper-case name", template("Web-Rate", "'x'"), false),
        (
            "an underscore in the name",
            template("web_rate", "'x'"),
            false,
        ),
        (
            "yes in a boolean field",
            canary("yes-bool", "8080", "yes"),
            true,
        ),
        (
            "Off in a boolean field",
            canary("off-field", "8080", "Off"),
            true,
        ),
        ("a hex port", canary("hex-port", "0x1F90", "false"), true),
        ("port 70000", canary("big-port", "70000", "false"), false),
        ("port 0", canary("zero-port", "0", "false"), false),
    ];
    let dir = env.dir.join(format!("lint-agree-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut disagreements = Vec::new();
    for (i, (what, manifest, valid)) in cases.iter().enumerate() {
        let file = dir.join(format!("{i}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        let lint = sluice().arg("lint").arg("-f").arg(&file).output().unwrap();
        let apiserver = env
            .kubectl()
            .args(["create", "--dry-run=server", "-n", &ns.name, "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let lint_ok = lint.status.success();
        let api_ok = apiserver.status.success();
        if lint_ok != *valid || api_ok != *valid {
            disagreements.push(format!(
                "{what}: expected valid={valid}, lint {}, apiserver {}\n{manifest}\nlint: {}\nkubectl: {}",
                lint_ok,
                api_ok,
                text(&lint),
                text(&apiserver)
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n\n"));
}
