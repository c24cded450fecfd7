//! AnalysisRuns in end-to-end tests: create one, wait until it completes, show its status.

use std::time::Duration;

use kube::api::{Api, PostParams};
use sluice::api::argo::analysis::{AnalysisPhase, AnalysisRun};

use super::TestEnv;
use super::controller::ControllerProcess;

/// Characters of a status shown in a failure message.
const SHOWN: usize = 6000;

/// Creates `run` in `ns`; returns its name.
pub async fn create_run(env: &TestEnv, ns: &str, run: AnalysisRun) -> String {
    let api: Api<AnalysisRun> = Api::namespaced(env.client.clone(), ns);
    let created = api
        .create(&PostParams::default(), &run)
        .await
        .unwrap_or_else(|e| panic!("creating AnalysisRun: {e}"));
    created.metadata.name.expect("name")
}

/// Waits until the run's phase is completed and returns the run; on timeout, panics with its
/// status and the end of the controller's log.
pub async fn wait_completed(
    env: &TestEnv,
    ns: &str,
    name: &str,
    timeout: Duration,
    ctl: &ControllerProcess,
) -> AnalysisRun {
    let api: Api<AnalysisRun> = Api::namespaced(env.client.clone(), ns);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let run = api.get(name).await.expect("reading the AnalysisRun");
        if run
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_completed())
        {
            return run;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "AnalysisRun {ns}/{name} not completed after {timeout:?}; status: {}\ncontroller log (end):\n{}",
                status_text(&run),
                ctl.log_end()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The run's phase (it must have one).
pub fn phase(run: &AnalysisRun) -> AnalysisPhase {
    run.status.as_ref().and_then(|s| s.phase).expect("a phase")
}

/// The run's status as pretty JSON, cut to a readable length.
pub fn status_text(run: &AnalysisRun) -> String {
    let text = serde_json::to_string_pretty(&run.status).unwrap_or_default();
    text.chars().take(SHOWN).collect()
}
