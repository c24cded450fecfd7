//! Teams switch between Argo Rollouts and Sluice both ways: Argo's controller must run unchanged
//! on Sluice's CRDs, and Sluice's controller on the CRDs it installs.
//!
//! CRD-shape tests run on a private kube-apiserver (`common::apiserver`): the shared cluster's
//! CRDs are what the other tests running at the same time use.

mod common;

use std::time::Duration;

use common::analysis::{phase, status_text, wait_completed};
use common::apiserver::PrivateApiserver;
use common::controller::ControllerProcess;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sluice::api::argo::analysis::{AnalysisPhase, AnalysisRun};

fn run(name: &str) -> AnalysisRun {
    serde_yaml::from_str(&format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisRun
metadata:
  name: {name}
spec:
  metrics:
  - name: up
    successCondition: 'result[0] == 1'
    provider:
      prometheus:
        query: 'vector(1)'
"#
    ))
    .expect("test AnalysisRun YAML")
}

/// Whether `manager` owns a field under `f:<top>` of the object.
fn owns(run: &AnalysisRun, manager: &str, top: &str) -> bool {
    run.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(manager)
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get(format!("f:{top}")).is_some())
    })
}

/// Argo's controller writes an AnalysisRun's status with a merge patch of the main resource (its
/// CRD has no subresources); on Sluice's CRDs that write must persist. Sluice's controller, on
/// the same CRD, runs a run to Successful writing `status` only.
#[tokio::test]
async fn analysis_run_status_is_written_through_the_main_resource() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let apiserver = PrivateApiserver::start(&env, "compat-ar").await;
    apiserver.install_crds(sluice::api::crds()).await;
    let penv = &apiserver.env;
    let ns = apiserver.namespace("compat").await;
    let runs: Api<AnalysisRun> = Api::namespaced(penv.client.clone(), &ns);

    // As Argo's controller writes it (no controller of ours running yet).
    common::analysis::create_run(penv, &ns, run("argo-written")).await;
    let status = json!({"status": {"phase": "Successful", "message": "written as Argo writes"}});
    let stored = runs
        .patch(
            "argo-written",
            &PatchParams::apply("argo-rollouts"),
            &Patch::Merge(&status),
        )
        .await
        .expect("a merge patch of the main resource");
    assert_eq!(
        stored.status.as_ref().and_then(|s| s.phase),
        Some(AnalysisPhase::Successful),
        "the status written through the main resource was dropped: {}",
        status_text(&stored)
    );

    // Sluice's controller on the same CRD.
    let ctl = ControllerProcess::start_with(penv, &ns, &["--flagger=false"]).await;
    let created = run("sluice-run");
    common::analysis::create_run(penv, &ns, created.clone()).await;
    let done = wait_completed(penv, &ns, "sluice-run", Duration::from_secs(60), &ctl).await;
    assert_eq!(
        phase(&done),
        AnalysisPhase::Successful,
        "{}",
        status_text(&done)
    );
    assert_eq!(done.spec, created.spec, "the spec is the user's, untouched");
    assert!(
        owns(&done, "sluice", "status") && !owns(&done, "sluice", "spec"),
        "Sluice's field manager owns the status and nothing of the spec: {:?}",
        done.metadata.managed_fields
    );
    drop(ctl);
    apiserver.stop().await;
}
