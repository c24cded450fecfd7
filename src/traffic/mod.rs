//! Traffic routers: make an ingress or mesh send a share of live traffic to the canary, add and
//! remove header / mirror routes, read back what is really applied, and give every object back to
//! its owner when the rollout ends.
//!
//! One small trait, [`Router`], and one module per router. The Rollout controller builds the
//! routers a Rollout names with [`routers_for`] and executes the engine's traffic actions through
//! them; it never knows which router it talks to.
//!
//! Rules every router keeps (they are what users of Argo Rollouts and Flagger complain about):
//! - write only the fields a canary needs (weights, managed routes), with server-side apply under
//!   [`FIELD_MANAGER`], never a whole-object replace of an object Git owns;
//! - [`Router::release`] leaves each object exactly as its manifest declares it, with Sluice owning
//!   none of its spec fields (no GitOps drift, upstream Argo Rollouts #3854);
//! - report the weight really applied ([`Router::observed_weight`]), so a step never advances
//!   before the data plane's configuration says so.
//!
//! Routers read the objects they work on through [`RouterContext::read`], which the controller
//! backs with shared watch caches ([`cache::RouteObjects`]): observing a Rollout's routes costs
//! no API call, and a route changed by someone else wakes its Rollout. Writes go to the API.
//!
//! This module must never decide a weight or when to change it: that is `crate::engine`.

pub mod alb;
pub mod cache;
pub mod gateway_api;
pub mod istio;
pub mod nginx;
pub mod ownership;
pub mod smi;
pub mod traefik;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use kube::api::{Api, ApiResource, DynamicObject};
use serde::de::DeserializeOwned;

use crate::api::argo::rollout::{
    HeaderRoutingMatch, RolloutTrafficRouting, RouteMatch, WeightDestination,
};

/// The field manager routers write with.
pub const FIELD_MANAGER: &str = "sluice";

/// Where a router works and for which Rollout.
#[derive(Clone)]
pub struct RouterContext {
    pub client: kube::Client,
    /// The Rollout's namespace (every object a router touches lives there).
    pub namespace: String,
    /// The Rollout's name (generated objects and annotations carry it).
    pub rollout: String,
    /// The Rollout's uid, for owner references on generated objects (NGINX's canary Ingress).
    pub rollout_uid: String,
    /// Where objects are read: the controller's watch caches, or [`cache::Direct`].
    pub objects: Arc<dyn cache::ObjectSource>,
}

impl RouterContext {
    /// A context that reads every object through the API (tests, one-off tools).
    pub fn direct(client: kube::Client, namespace: &str, rollout: &str, rollout_uid: &str) -> Self {
        RouterContext {
            objects: Arc::new(cache::Direct(client.clone())),
            client,
            namespace: namespace.into(),
            rollout: rollout.into(),
            rollout_uid: rollout_uid.into(),
        }
    }

    /// The object `namespace/name` of kind `ar`, from the cache (`None`: it does not exist).
    pub async fn read(
        &self,
        ar: &ApiResource,
        namespace: &str,
        name: &str,
    ) -> Result<Option<DynamicObject>, cache::ReadError> {
        self.objects
            .get(ar, namespace, name, (&self.namespace, &self.rollout))
            .await
    }

    /// [`Self::read`] of a typed object (a core Ingress).
    pub async fn read_as<K>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<K>, cache::ReadError>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let ar = ApiResource::erase::<K>(&());
        let Some(object) = self.read(&ar, namespace, name).await? else {
            return Ok(None);
        };
        let typed = serde_json::to_value(object)
            .and_then(serde_json::from_value)
            .map_err(kube::Error::SerdeError)?;
        Ok(Some(typed))
    }

    /// Tells the cache what a write stored, so the next read does not see the older copy.
    pub fn wrote(&self, ar: &ApiResource, object: &DynamicObject) {
        self.objects.wrote(ar, object);
    }

    /// [`Self::wrote`] of a typed object.
    pub fn wrote_as<K>(&self, object: &K)
    where
        K: kube::Resource<DynamicType = ()> + serde::Serialize,
    {
        let ar = ApiResource::erase::<K>(&());
        if let Ok(dynamic) = serde_json::to_value(object).and_then(serde_json::from_value) {
            self.objects.wrote(&ar, &dynamic);
        }
    }

    /// Tells the cache we deleted a typed object.
    pub fn deleted_as<K>(&self, namespace: &str, name: &str)
    where
        K: kube::Resource<DynamicType = ()>,
    {
        self.objects
            .deleted(&ApiResource::erase::<K>(&()), namespace, name);
    }

    /// The API of kind `ar` in `namespace`, for writes.
    pub fn api(&self, ar: &ApiResource, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, ar)
    }
}

/// The split to apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Weights {
    /// The canary's share, in router units (`0..=max_weight`).
    pub canary: i32,
    /// The value that means all traffic (`trafficRouting.maxTrafficWeight`, default 100).
    pub max_weight: i32,
    /// `spec.strategy.canary.canaryService`.
    pub canary_service: String,
    /// `spec.strategy.canary.stableService`.
    pub stable_service: String,
    /// Pod-template hashes, for subset-based routing (Istio DestinationRule subsets).
    pub canary_hash: String,
    pub stable_hash: String,
    /// Services that get a share besides the canary and stable ones (an experiment step's
    /// templates), taken from stable. Routers that cannot route them are refused by validation.
    pub additional: Vec<WeightDestination>,
}

impl Weights {
    /// Stable's share: all traffic but the canary's and the additional destinations'.
    pub fn stable(&self) -> i32 {
        self.max_weight - self.canary - self.additional.iter().map(|d| d.weight).sum::<i32>()
    }
}

/// A header-based route that sends matching requests to the canary.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderRoute {
    /// The managed route's name (`trafficRouting.managedRoutes[].name`).
    pub name: String,
    pub matches: Vec<HeaderRoutingMatch>,
}

/// A mirror route that copies matching requests to the canary.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorRoute {
    pub name: String,
    pub matches: Vec<RouteMatch>,
    /// Share of matching requests mirrored (default 100).
    pub percentage: Option<i32>,
}

/// What a router reports as really applied.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Observed {
    /// The canary weight found on the object(s), in router units; `None` when it cannot be read.
    pub canary: Option<i32>,
    /// Managed routes present, by name.
    pub managed_routes: Vec<String>,
    /// Weights of Services besides the canary and stable ones (experiment templates), by name.
    pub additional: BTreeMap<String, i32>,
    /// Extra details for status / events (for example which route of a VirtualService).
    pub detail: BTreeMap<String, String>,
}

/// Why a router could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error(
        "{router}: {kind} {namespace}/{name} not found; create it (the Rollout references it) or fix the name"
    )]
    NotFound {
        router: &'static str,
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("{router}: {kind} {namespace}/{name} cannot be used: {reason}")]
    Invalid {
        router: &'static str,
        kind: String,
        namespace: String,
        name: String,
        reason: String,
    },
    #[error(
        "{router}: the cluster serves no {kind} in {api_version} ({reason}); install its CRD or remove the router from spec.strategy.canary.trafficRouting"
    )]
    NotServed {
        router: &'static str,
        kind: String,
        api_version: String,
        reason: String,
    },
    #[error("{router}: {what} is not supported by this router")]
    Unsupported { router: &'static str, what: String },
    #[error("{router}: {action} {kind} {namespace}/{name}: {source}")]
    Kube {
        router: &'static str,
        action: &'static str,
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("trafficRouting: {0}")]
    Config(String),
}

/// One traffic router of a Rollout.
#[async_trait]
pub trait Router: Send + Sync {
    /// Short name for messages and metrics (`alb`, `gatewayAPI`, `istio`, `nginx`, `smi`, `traefik`).
    fn name(&self) -> &'static str;

    /// Whether this router sends traffic to `pingPong`'s Services when the Rollout names them,
    /// even beside `stableService` / `canaryService` (Argo's `isPingpongPreferred`: ALB). The
    /// others route to those two, and to pingPong's only without them.
    fn prefers_ping_pong(&self) -> bool {
        false
    }

    /// Send `weights.canary` to the canary and the rest to stable. Idempotent.
    async fn set_weight(&self, ctx: &RouterContext, weights: &Weights) -> Result<(), TrafficError>;

    /// What the router's objects say right now.
    async fn observe(
        &self,
        ctx: &RouterContext,
        weights: &Weights,
    ) -> Result<Observed, TrafficError>;

    /// Add (or update) a header route to the canary.
    async fn set_header_route(
        &self,
        _ctx: &RouterContext,
        _weights: &Weights,
        _route: &HeaderRoute,
    ) -> Result<(), TrafficError> {
        Err(TrafficError::Unsupported {
            router: self.name(),
            what: "setHeaderRoute".into(),
        })
    }

    /// Add (or update) a mirror route to the canary.
    async fn set_mirror_route(
        &self,
        _ctx: &RouterContext,
        _weights: &Weights,
        _route: &MirrorRoute,
    ) -> Result<(), TrafficError> {
        Err(TrafficError::Unsupported {
            router: self.name(),
            what: "setMirrorRoute".into(),
        })
    }

    /// Remove every managed header and mirror route. Idempotent.
    async fn remove_managed_routes(&self, ctx: &RouterContext) -> Result<(), TrafficError>;

    /// The rollout is over (completed, aborted and settled, or deleted): leave every object as
    /// its owner declared it and drop Sluice's field ownership. Idempotent.
    async fn release(&self, ctx: &RouterContext, weights: &Weights) -> Result<(), TrafficError>;
}

/// `trafficRouting.managedRoutes` names, in precedence order.
fn managed_route_names(config: &RolloutTrafficRouting) -> Vec<String> {
    config
        .managed_routes
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

/// The routers `trafficRouting` names, in a fixed order (one arm per field). A Rollout may name
/// several; the controller drives all of them. Errors name the field to fix.
pub fn routers_for(config: &RolloutTrafficRouting) -> Result<Vec<Box<dyn Router>>, TrafficError> {
    let mut routers: Vec<Box<dyn Router>> = Vec::new();
    if let Some(istio) = &config.istio {
        routers.push(Box::new(istio::IstioRouter::new(
            istio,
            managed_route_names(config),
        )?));
    }
    if let Some(nginx) = &config.nginx {
        routers.push(Box::new(nginx::NginxRouter::new(nginx)?));
    }
    if let Some(alb) = &config.alb {
        routers.push(Box::new(alb::AlbRouter::new(
            alb,
            managed_route_names(config),
        )?));
    }
    if let Some(smi) = &config.smi {
        routers.push(Box::new(smi::SmiRouter::new(smi)));
    }
    if let Some(traefik) = &config.traefik {
        routers.push(Box::new(traefik::TraefikRouter::new(traefik)?));
    }
    if let Some(plugins) = &config.plugins {
        for (name, plugin) in plugins {
            match name.as_str() {
                gateway_api::PLUGIN_NAME => routers.push(Box::new(
                    gateway_api::GatewayApiRouter::from_plugin_config(plugin)?,
                )),
                other => {
                    return Err(TrafficError::Unsupported {
                        router: "plugins",
                        what: format!(
                            "traffic router plugin '{other}' (built in: '{}')",
                            gateway_api::PLUGIN_NAME
                        ),
                    });
                }
            }
        }
    }
    Ok(routers)
}
