//! Where a custom resource's status is written: its `/status` subresource when the installed CRD
//! serves one, else the main resource. Argo's AnalysisRun CRD has no subresources (and Sluice's
//! follows it, so Argo's controller can run on Sluice's CRDs and Sluice on Argo's); the cluster
//! may carry either, so the route comes from discovery, never from the compiled-in CRD.
//!
//! Through the main resource the write is a merge patch that carries `status` only, so it never
//! touches the spec or metadata users own. This module must never write anything but `status`.

use std::sync::atomic::{AtomicBool, Ordering};

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The status route of one kind, learned from discovery before the first write and re-learned
/// when a write shows the CRD changed (a `/status` that is gone, a main-resource write whose
/// status was dropped).
pub struct StatusRoute {
    client: Client,
    api_version: String,
    /// `<plural>/status`, as discovery lists it.
    subresource: String,
    /// Whether discovery has answered once.
    learned: AtomicBool,
    /// Whether `/status` is served, as last learned.
    has_subresource: AtomicBool,
}

impl StatusRoute {
    /// The route for kind `K`, learned from discovery at the first write.
    pub fn new<K: Resource<DynamicType = ()>>(client: Client) -> Self {
        Self {
            client,
            api_version: K::api_version(&()).into_owned(),
            subresource: format!("{}/status", K::plural(&())),
            learned: AtomicBool::new(false),
            has_subresource: AtomicBool::new(true),
        }
    }

    /// Whether `/status` is served (as last learned).
    pub fn has_subresource(&self) -> bool {
        self.has_subresource.load(Ordering::Relaxed)
    }

    /// Asks discovery again; on a discovery error keeps what it knew (the write then fails and is
    /// retried with backoff).
    async fn relearn(&self) {
        match self
            .client
            .list_api_group_resources(&self.api_version)
            .await
        {
            Ok(list) => {
                let served = list.resources.iter().any(|r| r.name == self.subresource);
                self.has_subresource.store(served, Ordering::Relaxed);
                self.learned.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(api_version = %self.api_version, error = %e,
                    "discovery of the status subresource failed; keeping the last route");
            }
        }
    }

    /// Merge-patches `{"status": status}` onto `name`, by whichever route the CRD serves, and
    /// returns the object as stored. `unchanged(stored)` says whether the stored object still
    /// carries the old status (a write the apiserver dropped because the route was wrong).
    pub async fn merge_status<K, S>(
        &self,
        api: &Api<K>,
        name: &str,
        params: &PatchParams,
        status: &S,
        unchanged: impl Fn(&K) -> bool,
    ) -> kube::Result<K>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
        S: Serialize,
    {
        if !self.learned.load(Ordering::Relaxed) {
            self.relearn().await;
        }
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
        let first = self.write(api, name, params, &patch).await;
        let wrong_route = match &first {
            // `/status` answers 404 when it is not served (or the object is gone: then the
            // second attempt fails the same way).
            Err(kube::Error::Api(e)) => e.code == 404 && self.has_subresource(),
            Ok(stored) => !self.has_subresource() && unchanged(stored),
            Err(_) => false,
        };
        if !wrong_route {
            return first;
        }
        self.relearn().await;
        self.write(api, name, params, &patch).await
    }

    async fn write<K>(
        &self,
        api: &Api<K>,
        name: &str,
        params: &PatchParams,
        patch: &Patch<serde_json::Value>,
    ) -> kube::Result<K>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        if self.has_subresource() {
            api.patch_status(name, params, patch).await
        } else {
            api.patch(name, params, patch).await
        }
    }
}
