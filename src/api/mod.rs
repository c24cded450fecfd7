//! Wire types for the two APIs Sluice speaks, and the CRDs generated from them.
//!
//! `argoproj.io/v1alpha1` (Rollout, AnalysisTemplate, ClusterAnalysisTemplate, AnalysisRun) and
//! `flagger.app/v1beta1` (Canary, MetricTemplate, AlertProvider). Field names, defaults and status
//! semantics follow the upstream APIs so existing manifests, Argo CD health checks and Argo's kubectl
//! plugin keep working. This module only describes data: it never talks to a cluster.

pub mod argo;
pub mod flagger;
pub mod schema;
pub mod validate;
pub mod yaml;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD Sluice serves, in a stable order (by group, then plural name).
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        argo::Rollout::crd(),
        argo::AnalysisTemplate::crd(),
        argo::ClusterAnalysisTemplate::crd(),
        argo::analysis::analysis_run_crd(),
        argo::experiment::experiment_crd(),
        flagger::Canary::crd(),
        flagger::MetricTemplate::crd(),
        flagger::AlertProvider::crd(),
    ];
    for crd in &mut crds {
        schema::finish_crd(crd);
    }
    crds.sort_by(|a, b| {
        (&a.spec.group, &a.spec.names.plural).cmp(&(&b.spec.group, &b.spec.names.plural))
    });
    crds
}

/// The file name a CRD has under `crds/`: `<plural>.<group>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.{}.yaml", crd.spec.names.plural, crd.spec.group)
}

/// One CRD as a YAML document (without the leading `---`).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

/// Every CRD as one multi-document YAML stream, as `sluice crds` prints it.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// Test helper: parse YAML into `T` and assert it serializes back to the identical JSON.
#[cfg(test)]
pub(crate) fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(yaml: &str) -> T {
    let original: serde_json::Value = serde_yaml::from_str(yaml).expect("valid YAML");
    let typed: T = serde_json::from_value(original.clone()).expect("parses into the wire type");
    let back = serde_json::to_value(&typed).expect("serializes");
    assert_eq!(back, original, "serializing changed the object");
    typed
}
