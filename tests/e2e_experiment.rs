//! Standalone Experiments on the real cluster, run by `sluice controller` as a process: the
//! ReplicaSets, Service and AnalysisRun an Experiment makes (named, labelled and owned as Argo
//! makes them), its phases over `duration`, a failed analysis, a template past its progress
//! deadline, and `kubectl argo rollouts terminate` (Argo's own plugin binary, when cached).
//!
//! Each test gets its own namespace and its own controller limited to it.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::controller::ControllerProcess;
use common::{TestEnv, TestNamespace, eventually};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use sluice::api::argo::analysis::{AnalysisPhase, AnalysisRun, AnalysisTemplate};
use sluice::api::argo::experiment::{Experiment, TemplateStatusCode};

struct Fixture {
    env: TestEnv,
    ns: TestNamespace,
    ctl: ControllerProcess,
    experiments: Api<Experiment>,
}

async fn fixture(prefix: &str) -> Option<Fixture> {
    let env = common::test_env().await?;
    let ns = env.namespace(prefix).await;
    let ctl = ControllerProcess::start_with(&env, &ns.name, &["--leader-elect=false"]).await;
    let experiments = Api::namespaced(env.client.clone(), &ns.name);
    Some(Fixture {
        env,
        ns,
        ctl,
        experiments,
    })
}

impl Fixture {
    async fn create<K>(&self, yaml: &str) -> K
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let object: K = serde_yaml::from_str(yaml).expect("test manifest");
        Api::<K>::namespaced(self.env.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating {yaml}: {e}"))
    }

    /// A Prometheus AnalysisTemplate whose one measurement is `value` (success when it is 1).
    async fn template(&self, name: &str, value: i32) {
        let yaml = format!(
            r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: {name}}}
spec:
  metrics:
  - name: constant
    count: 1
    successCondition: result[0] == 1
    provider:
      prometheus:
        address: {address}
        query: vector({value})
"#,
            address = self.env.prometheus_url
        );
        self.create::<AnalysisTemplate>(&yaml).await;
    }

    async fn wait_phase(&self, name: &str, want: AnalysisPhase, within: Duration) -> Experiment {
        let what = format!(
            "Experiment {}/{name} to be {want} (controller log: {})",
            self.ns.name,
            self.ctl.log.display()
        );
        eventually(within, &what, || async {
            let exp = self.experiments.get(name).await.ok()?;
            let phase = exp.status.as_ref().and_then(|s| s.phase);
            (phase == Some(want)).then_some(exp)
        })
        .await
    }

    async fn replica_set(&self, name: &str) -> Option<ReplicaSet> {
        Api::<ReplicaSet>::namespaced(self.env.client.clone(), &self.ns.name)
            .get_opt(name)
            .await
            .expect("reading a ReplicaSet")
    }
}

fn experiment_yaml(name: &str, extra_spec: &str, canary_labels: &str) -> String {
    format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Experiment
metadata: {{name: {name}}}
spec:
{extra_spec}
  templates:
  - name: baseline
    selector: {{matchLabels: {{app: web, track: baseline}}}}
    template:
      metadata: {{labels: {{app: web, track: baseline}}}}
      spec:
        containers:
        - {{name: web, image: "registry.example/web:1", ports: [{{name: http, containerPort: 8080}}]}}
    service: {{}}
  - name: canary
    replicas: 2
    selector: {{matchLabels: {{app: web, track: canary}}}}
    template:
      metadata: {{labels: {{app: web, track: canary{canary_labels}}}}}
      spec:
        containers:
        - {{name: web, image: "registry.example/web:2"}}
"#
    )
}

fn owned_by(object: &impl Resource, exp: &Experiment) -> bool {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == exp.uid().as_ref())
}

#[tokio::test]
async fn experiment_runs_its_templates_and_analysis_for_its_duration_then_scales_down() {
    let Some(f) = fixture("exp-run").await else {
        return;
    };
    f.template("ok", 1).await;
    let spec = "  duration: 5s\n  scaleDownDelaySeconds: 3\n  analyses:\n  - {name: check, templateName: ok}";
    let exp: Experiment = f.create(&experiment_yaml("demo", spec, "")).await;

    let running = f
        .wait_phase("demo", AnalysisPhase::Running, Duration::from_secs(60))
        .await;
    let status = running.status.clone().unwrap_or_default();
    assert!(status.available_at.is_some(), "{status:?}");

    // The ReplicaSets: named, labelled, annotated and owned as Argo makes them, plus Sluice's
    // experiment labels (a query selects each template's pods).
    for (template, replicas) in [("baseline", 1), ("canary", 2)] {
        let rs = f
            .replica_set(&format!("demo-{template}"))
            .await
            .unwrap_or_else(|| panic!("no ReplicaSet demo-{template}"));
        assert!(owned_by(&rs, &exp), "{:?}", rs.metadata);
        let labels = rs.labels();
        assert!(
            labels.contains_key("rollouts-pod-template-hash"),
            "{labels:?}"
        );
        assert_eq!(
            labels.get("sluice.dev/experiment").map(String::as_str),
            Some("demo")
        );
        assert_eq!(
            labels
                .get("sluice.dev/experiment-template")
                .map(String::as_str),
            Some(template)
        );
        let annotations = rs.annotations();
        assert_eq!(
            annotations
                .get("experiment.argoproj.io/template-name")
                .map(String::as_str),
            Some(template)
        );
        assert_eq!(rs.spec.as_ref().and_then(|s| s.replicas), Some(replicas));
        let ts = status
            .template_statuses
            .iter()
            .find(|t| t.name == template)
            .unwrap_or_else(|| panic!("no template status {template}: {status:?}"));
        assert_eq!(ts.available_replicas, replicas, "{ts:?}");
        assert_eq!(ts.status, Some(TemplateStatusCode::Running), "{ts:?}");
    }

    // The baseline's Service selects its pods by hash, with the container's port.
    let services: Api<Service> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let svc = eventually(Duration::from_secs(30), "Service demo-baseline", || async {
        services.get_opt("demo-baseline").await.ok().flatten()
    })
    .await;
    assert!(owned_by(&svc, &exp));
    let spec = svc.spec.clone().unwrap_or_default();
    let hash = f
        .replica_set("demo-baseline")
        .await
        .and_then(|rs| rs.labels().get("rollouts-pod-template-hash").cloned());
    assert_eq!(
        spec.selector
            .as_ref()
            .and_then(|s| s.get("rollouts-pod-template-hash"))
            .cloned(),
        hash
    );
    assert_eq!(spec.ports.unwrap_or_default()[0].port, 8080);

    let done = f
        .wait_phase("demo", AnalysisPhase::Successful, Duration::from_secs(90))
        .await;
    let status = done.status.unwrap_or_default();
    let run_status = status
        .analysis_runs
        .iter()
        .find(|r| r.name == "check")
        .unwrap_or_else(|| panic!("no analysis status: {status:?}"));
    assert_eq!(run_status.analysis_run, "demo-check");
    assert_eq!(
        run_status.phase,
        Some(AnalysisPhase::Successful),
        "{status:?}"
    );
    let runs: Api<AnalysisRun> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let run = runs.get("demo-check").await.expect("the AnalysisRun");
    assert!(owned_by(&run, &exp));
    assert!(
        status
            .template_statuses
            .iter()
            .all(|t| t.status == Some(TemplateStatusCode::Successful)),
        "{status:?}"
    );

    // After scaleDownDelaySeconds both ReplicaSets go to zero and the Service goes.
    for template in ["baseline", "canary"] {
        eventually(
            Duration::from_secs(60),
            &format!("ReplicaSet demo-{template} scaled to 0"),
            || async {
                let rs = f.replica_set(&format!("demo-{template}")).await?;
                (rs.spec.and_then(|s| s.replicas) == Some(0)).then_some(())
            },
        )
        .await;
    }
    eventually(
        Duration::from_secs(60),
        "Service demo-baseline deleted",
        || async {
            services
                .get_opt("demo-baseline")
                .await
                .ok()
                .and_then(|s| s.is_none().then_some(()))
        },
    )
    .await;
}

#[tokio::test]
async fn a_failed_analysis_fails_the_experiment() {
    let Some(f) = fixture("exp-fail").await else {
        return;
    };
    f.template("bad", 0).await;
    let spec = "  scaleDownDelaySeconds: 0\n  analyses:\n  - {name: check, templateName: bad}";
    f.create::<Experiment>(&experiment_yaml("doomed", spec, ""))
        .await;
    let failed = f
        .wait_phase("doomed", AnalysisPhase::Failed, Duration::from_secs(90))
        .await;
    let status = failed.status.unwrap_or_default();
    assert_eq!(
        status.analysis_runs.first().and_then(|r| r.phase),
        Some(AnalysisPhase::Failed),
        "{status:?}"
    );
    eventually(
        Duration::from_secs(60),
        "ReplicaSet doomed-canary scaled to 0",
        || async {
            let rs = f.replica_set("doomed-canary").await?;
            (rs.spec.and_then(|s| s.replicas) == Some(0)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_template_never_available_fails_at_its_progress_deadline() {
    let Some(f) = fixture("exp-deadline").await else {
        return;
    };
    let spec = "  progressDeadlineSeconds: 5";
    f.create::<Experiment>(&experiment_yaml(
        "stuck",
        spec,
        ", sim/never-ready: \"true\"",
    ))
    .await;
    let failed = f
        .wait_phase("stuck", AnalysisPhase::Failed, Duration::from_secs(90))
        .await;
    let status = failed.status.unwrap_or_default();
    let canary = status
        .template_statuses
        .iter()
        .find(|t| t.name == "canary")
        .unwrap_or_else(|| panic!("{status:?}"));
    assert_eq!(
        canary.status,
        Some(TemplateStatusCode::Failed),
        "{status:?}"
    );
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("progressDeadlineSeconds (5)")),
        "{status:?}"
    );
}

/// Argo's kubectl plugin, as the conformance script caches it.
fn argo_plugin() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let dir = PathBuf::from(home).join(".cache/sluice/conformance");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path().join("kubectl-argo-rollouts"))
        .find(|p| p.is_file())
}

#[tokio::test]
async fn terminate_ends_an_experiment_without_duration_successfully() {
    let Some(f) = fixture("exp-term").await else {
        return;
    };
    f.template("ok", 1).await;
    // No duration and nothing required: it would run forever.
    let spec = "  scaleDownDelaySeconds: 0\n  analyses:\n  - {name: check, templateName: ok}";
    f.create::<Experiment>(&experiment_yaml("forever", spec, ""))
        .await;
    f.wait_phase("forever", AnalysisPhase::Running, Duration::from_secs(60))
        .await;
    match argo_plugin() {
        Some(plugin) => {
            let out = std::process::Command::new(plugin)
                .args(["terminate", "experiment", "forever", "-n", &f.ns.name])
                .env("KUBECONFIG", &f.env.kubeconfig)
                .output()
                .expect("running kubectl-argo-rollouts");
            assert!(out.status.success(), "{out:?}");
        }
        None => {
            // The plugin's exact patch.
            let patch = serde_json::json!({"spec": {"terminate": true}});
            f.experiments
                .patch(
                    "forever",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await
                .expect("terminating");
        }
    }
    f.wait_phase(
        "forever",
        AnalysisPhase::Successful,
        Duration::from_secs(60),
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "ReplicaSet forever-baseline scaled to 0",
        || async {
            let rs = f.replica_set("forever-baseline").await?;
            (rs.spec.and_then(|s| s.replicas) == Some(0)).then_some(())
        },
    )
    .await;
}

/// An AnalysisTemplate declaring `args`, whose query carries each one (so the run must resolve
/// them) and always measures 1.
async fn template_with_args(f: &Fixture, name: &str, args: &[&str]) {
    let declared: Vec<String> = args.iter().map(|a| format!("{{name: {a}}}")).collect();
    let mut query = "vector(1)".to_owned();
    for (i, arg) in args.iter().enumerate() {
        query = format!("label_replace({query}, \"a{i}\", \"{{{{args.{arg}}}}}\", \"\", \"\")");
    }
    let yaml = format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: {name}}}
spec:
  args: [{declared}]
  metrics:
  - name: constant
    count: 1
    successCondition: result[0] == 1
    provider:
      prometheus:
        address: {address}
        query: '{query}'
"#,
        declared = declared.join(", "),
        address = f.env.prometheus_url
    );
    f.create::<AnalysisTemplate>(&yaml).await;
}

#[tokio::test]
async fn experiment_placeholders_in_analysis_args_are_filled_in_when_the_run_is_made() {
    let Some(f) = fixture("exp-args").await else {
        return;
    };
    template_with_args(&f, "hashes", &["baseline-hash", "canary-rs", "started"]).await;
    let spec = r#"  duration: 1h
  analyses:
  - name: check
    templateName: hashes
    requiredForCompletion: true
    args:
    - {name: baseline-hash, value: "{{templates.baseline.podTemplateHash}}"}
    - {name: canary-rs, value: "rs={{ templates.canary.replicaset.name }}"}
    - {name: started, value: "{{experiment.availableAt}}"}"#;
    f.create::<Experiment>(&experiment_yaml("tagged", spec, ""))
        .await;
    let done = f
        .wait_phase(
            "tagged",
            AnalysisPhase::Successful,
            Duration::from_secs(120),
        )
        .await;
    let runs: Api<AnalysisRun> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let run = runs.get("tagged-check").await.expect("the AnalysisRun");
    let value = |name: &str| {
        run.spec
            .args
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.value.clone())
    };
    let baseline = f.replica_set("tagged-baseline").await.expect("baseline RS");
    let hash = baseline.labels().get("rollouts-pod-template-hash").cloned();
    assert!(hash.is_some(), "{:?}", baseline.metadata);
    assert_eq!(value("baseline-hash"), hash, "{:?}", run.spec.args);
    assert_eq!(value("canary-rs").as_deref(), Some("rs=tagged-canary"));
    let available = done
        .status
        .and_then(|s| s.available_at)
        .expect("availableAt");
    assert_eq!(value("started"), Some(available.0.to_string()));
}

#[tokio::test]
async fn an_unknown_placeholder_in_analysis_args_errs_the_experiment_naming_it() {
    let Some(f) = fixture("exp-badarg").await else {
        return;
    };
    template_with_args(&f, "hashes", &["baseline-hash"]).await;
    let spec = r#"  scaleDownDelaySeconds: 0
  analyses:
  - name: check
    templateName: hashes
    args:
    - {name: baseline-hash, value: "{{templates.nope.podTemplateHash}}"}"#;
    f.create::<Experiment>(&experiment_yaml("typo", spec, ""))
        .await;
    let errored = f
        .wait_phase("typo", AnalysisPhase::Error, Duration::from_secs(90))
        .await;
    let status = errored.status.unwrap_or_default();
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("baseline-hash") && message.contains("{{templates.nope.podTemplateHash}}"),
        "{message}"
    );
    let runs: Api<AnalysisRun> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    assert!(
        runs.get_opt("typo-check")
            .await
            .expect("listing runs")
            .is_none()
    );
}
