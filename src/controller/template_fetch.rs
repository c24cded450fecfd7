//! Reads the AnalysisTemplates and ClusterAnalysisTemplates an AnalysisRun is built from (the
//! roots and everything they reference), once per run creation. Shared by the Rollout and the
//! Experiment controllers.
//!
//! This module only reads templates; the walk and its limits are `engine::analysis::args`.

use std::collections::HashMap;

use kube::Api;

use crate::api::argo::analysis::{
    AnalysisTemplate, AnalysisTemplateRef, AnalysisTemplateSpec, ClusterAnalysisTemplate,
};
use crate::engine::analysis::args::{self, ArgsError};

/// Why the templates could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The references themselves are wrong (a cycle, too deep).
    #[error(transparent)]
    Args(ArgsError),
    #[error("{kind} {namespace}/{name} does not exist")]
    NotFound {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Read {
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// The templates `roots` name (in `namespace`, or cluster-wide) and everything they reference.
pub async fn fetch(
    client: &kube::Client,
    namespace: &str,
    roots: &[AnalysisTemplateRef],
) -> Result<Vec<(String, AnalysisTemplateSpec)>, FetchError> {
    let mut fetched: HashMap<(String, bool), AnalysisTemplateSpec> = HashMap::new();
    // Each pass either finishes or learns one more template; the walk's own depth limit bounds
    // the number of templates, this bounds the passes.
    for _ in 0..256 {
        let walk = args::collect_templates(roots, |r| {
            let key = (r.template_name.clone(), r.cluster_scope.unwrap_or(false));
            fetched
                .get(&key)
                .cloned()
                .ok_or_else(|| args::Walk::Missing(r.clone()))
        });
        match walk {
            Ok(templates) => return Ok(templates),
            Err(args::Walk::Args(source)) => return Err(FetchError::Args(source)),
            Err(args::Walk::Missing(reference)) => {
                let cluster = reference.cluster_scope.unwrap_or(false);
                let spec = fetch_one(client, namespace, &reference.template_name, cluster).await?;
                fetched.insert((reference.template_name.clone(), cluster), spec);
            }
        }
    }
    Err(FetchError::Args(ArgsError::TemplateDepth {
        at: "the template references".into(),
    }))
}

async fn fetch_one(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    cluster: bool,
) -> Result<AnalysisTemplateSpec, FetchError> {
    let (kind, found) = if cluster {
        let api: Api<ClusterAnalysisTemplate> = Api::all(client.clone());
        (
            "ClusterAnalysisTemplate",
            api.get_opt(name).await.map(|t| t.map(|t| t.spec.template)),
        )
    } else {
        let api: Api<AnalysisTemplate> = Api::namespaced(client.clone(), namespace);
        (
            "AnalysisTemplate",
            api.get_opt(name).await.map(|t| t.map(|t| t.spec)),
        )
    };
    match found {
        Ok(Some(spec)) => Ok(spec),
        Ok(None) => Err(FetchError::NotFound {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
        Err(source) => Err(FetchError::Read {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        }),
    }
}
