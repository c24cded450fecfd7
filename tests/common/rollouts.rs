//! The fixture of the Rollout e2e files: a namespace of its own, a `sluice controller` limited to
//! it (no leader election), and the Rollout API there. Each file adds its own waits in an
//! `impl Fixture` block.

use kube::Api;
use sluice::api::argo::rollout::Rollout;

use super::controller::ControllerProcess;
use super::{TestEnv, TestNamespace, test_env};

pub struct Fixture {
    pub env: TestEnv,
    pub ns: TestNamespace,
    pub ctl: ControllerProcess,
    pub rollouts: Api<Rollout>,
}

/// `None` when there is no test cluster (the test then skips; under `CI=true` it fails).
pub async fn fixture(prefix: &str) -> Option<Fixture> {
    let env = test_env().await?;
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
