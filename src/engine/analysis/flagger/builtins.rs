//! Flagger's builtin metrics: which observer's PromQL a Canary's `request-success-rate` /
//! `request-duration` sends for its provider, rendered exactly as Flagger v1.44 renders it, and
//! how the value that comes back is read.
//!
//! Upstream counterparts (fluxcd/flagger v1.44.0): `pkg/metrics/observers/<observer>.go` (the
//! queries, copied verbatim below, leading newline and tabs included) and
//! `pkg/metrics/observers/factory.go` (provider → observer). The tests compare every rendered
//! query with the expected text of Flagger's own `<observer>_test.go`, after the whitespace
//! folding Flagger's Prometheus client applies before sending (`trimQuery`).
//!
//! Deliberate differences from upstream (each turns a silent wrong query into a clear error):
//! - a provider with no observer of its own (`smi:v1alpha3`, a typo) is an error that says to
//!   use a MetricTemplate, where Flagger falls back to Istio's query, finds no data and halts;
//! - a `:service` suffix (Flagger appends it for Service targets) selects the same queries as the
//!   bare provider (Flagger's factory then falls back to Istio for most providers);
//! - `smi:linkerd` reads Linkerd's metrics (Flagger: Istio's, unless the mesh flag is `linkerd`);
//! - Knative's `{{ route }}` is the Canary's route name, not the Service's latest revision
//!   (Sluice does not route Knative; such a Canary is refused before any metric runs).
//!
//! This module must never run a query, read the clock or panic on any input.

use super::{FlaggerMetricError, MetricVars, render};

/// A builtin metric, recognised by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `request-success-rate`: percentage (0–100) of non-5xx responses; `threshold` is a minimum.
    RequestSuccessRate,
    /// `request-duration`: P99 latency in milliseconds; `threshold` is a maximum.
    RequestDuration,
}

impl Builtin {
    /// The builtin with this metric name, if any.
    pub fn from_name(name: &str) -> Option<Builtin> {
        match name {
            "request-success-rate" => Some(Builtin::RequestSuccessRate),
            "request-duration" => Some(Builtin::RequestDuration),
            _ => None,
        }
    }

    /// The metric name.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::RequestSuccessRate => "request-success-rate",
            Builtin::RequestDuration => "request-duration",
        }
    }
}

/// Whose metrics a builtin query reads (upstream's observers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observer {
    /// APISIX's `apisix_http_status` (`observers/apisix.go`).
    Apisix,
    /// App Mesh's Envoy, by pod (`observers/appmesh.go`).
    AppMesh,
    /// Contour's Envoy `envoy_cluster_upstream_rq` (`observers/contour.go`).
    Contour,
    /// Gloo's Envoy, by upstream (`observers/gloo.go`).
    Gloo,
    /// The app's own `http_request_duration_seconds` (`observers/http.go`), for providers
    /// `kubernetes` and `gatewayapi` (the Gateway API defines no metrics).
    Http,
    /// Istio's `istio_requests_total` (`observers/istio.go`).
    Istio,
    /// Knative's Envoy, by revision (`observers/knative.go`).
    Knative,
    /// Kuma's Envoy, by service (`observers/kuma.go`).
    Kuma,
    /// Linkerd's `response_total` (`observers/linkerd.go`).
    Linkerd,
    /// ingress-nginx's canary Ingress (`observers/nginx.go`).
    Nginx,
    /// Open Service Mesh's `osm_request_total` (`observers/osm.go`).
    Osm,
    /// Skipper's routes (`observers/skipper.go`).
    Skipper,
    /// Traefik's `traefik_service_request_duration_seconds` (`observers/traefik.go`).
    Traefik,
}

impl Observer {
    /// The observer for a metrics provider ([`metrics_provider`]), or `None` when it has no
    /// builtin queries.
    pub fn for_provider(provider: &str) -> Option<Observer> {
        let base = provider.strip_suffix(":service").unwrap_or(provider);
        // Upstream matches `appmesh`, `gloo` and `gatewayapi` by prefix (`appmesh:v1beta2`,
        // `gatewayapi:v1`), the others exactly.
        let family = base.split(':').next().unwrap_or(base);
        Some(match (family, base) {
            ("appmesh", _) => Observer::AppMesh,
            ("gloo", _) => Observer::Gloo,
            ("gatewayapi", _) | (_, "kubernetes") => Observer::Http,
            // `smi:linkerd` is Linkerd's mesh through SMI.
            (_, "linkerd" | "smi:linkerd") => Observer::Linkerd,
            (_, "istio") => Observer::Istio,
            (_, "contour") => Observer::Contour,
            (_, "nginx") => Observer::Nginx,
            (_, "skipper") => Observer::Skipper,
            (_, "traefik") => Observer::Traefik,
            (_, "osm") => Observer::Osm,
            (_, "kuma") => Observer::Kuma,
            (_, "apisix") => Observer::Apisix,
            (_, "knative") => Observer::Knative,
            _ => return None,
        })
    }

    /// The query template for a builtin, verbatim from upstream.
    fn template(self, builtin: Builtin) -> &'static str {
        let (success_rate, duration) = match self {
            Observer::Apisix => (APISIX_SUCCESS_RATE, APISIX_DURATION),
            Observer::AppMesh => (APPMESH_SUCCESS_RATE, APPMESH_DURATION),
            Observer::Contour => (CONTOUR_SUCCESS_RATE, CONTOUR_DURATION),
            Observer::Gloo => (GLOO_SUCCESS_RATE, GLOO_DURATION),
            Observer::Http => (HTTP_SUCCESS_RATE, HTTP_DURATION),
            Observer::Istio => (ISTIO_SUCCESS_RATE, ISTIO_DURATION),
            Observer::Knative => (KNATIVE_SUCCESS_RATE, KNATIVE_DURATION),
            Observer::Kuma => (KUMA_SUCCESS_RATE, KUMA_DURATION),
            Observer::Linkerd => (LINKERD_SUCCESS_RATE, LINKERD_DURATION),
            Observer::Nginx => (NGINX_SUCCESS_RATE, NGINX_DURATION),
            Observer::Osm => (OSM_SUCCESS_RATE, OSM_DURATION),
            Observer::Skipper => (SKIPPER_SUCCESS_RATE, SKIPPER_DURATION),
            Observer::Traefik => (TRAEFIK_SUCCESS_RATE, TRAEFIK_DURATION),
        };
        match builtin {
            Builtin::RequestSuccessRate => success_rate,
            Builtin::RequestDuration => duration,
        }
    }

    /// The variables as this observer renders them: Skipper's route names carry every non-word
    /// character as `_` (upstream `encodeModelForSkipper`).
    fn vars(self, vars: &MetricVars) -> MetricVars {
        if self != Observer::Skipper {
            return vars.clone();
        }
        let word = |s: &str| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        };
        MetricVars {
            name: word(&vars.name),
            namespace: word(&vars.namespace),
            target: word(&vars.target),
            service: word(&vars.service),
            ingress: word(&vars.ingress),
            ..vars.clone()
        }
    }
}

/// The provider whose builtin queries a Canary uses (upstream `runBuiltinMetricChecks`): its
/// `spec.provider`, else the controller's mesh provider; Linkerd's when the mesh provider names
/// Linkerd and the Canary names a provider of its own.
pub fn metrics_provider(spec_provider: Option<&str>, mesh_provider: &str) -> String {
    match spec_provider.filter(|p| !p.is_empty()) {
        Some(_) if mesh_provider.contains("linkerd") => "linkerd".to_owned(),
        Some(provider) => provider.to_owned(),
        None => mesh_provider.to_owned(),
    }
}

/// A rendered builtin query and how to read its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinQuery {
    /// Which builtin.
    pub builtin: Builtin,
    /// Whose metrics it reads.
    pub observer: Observer,
    /// The PromQL to send.
    pub query: String,
}

impl BuiltinQuery {
    /// The value to judge, from what Prometheus returned: a success rate as is; a duration in whole
    /// milliseconds, as upstream converts it (`time.Duration(int64(v)) * time.Millisecond`; the
    /// `http` observer's query returns seconds and is multiplied by 1000 first).
    pub fn check_value(&self, raw: f64) -> f64 {
        match (self.builtin, self.observer) {
            (Builtin::RequestSuccessRate, _) => raw,
            (Builtin::RequestDuration, Observer::Http) => (raw * 1000.0).trunc(),
            (Builtin::RequestDuration, _) => raw.trunc(),
        }
    }
}

/// The builtin query for `metric_name` and `provider` ([`metrics_provider`]): `None` when the
/// name is not a builtin; `Some(Err)` when the provider has no builtin queries or rendering fails.
pub fn builtin_query(
    metric_name: &str,
    provider: &str,
    vars: &MetricVars,
) -> Option<Result<BuiltinQuery, FlaggerMetricError>> {
    let builtin = Builtin::from_name(metric_name)?;
    let Some(observer) = Observer::for_provider(provider) else {
        return Some(Err(FlaggerMetricError::NoBuiltin {
            metric: metric_name.to_owned(),
            provider: provider.to_owned(),
        }));
    };
    Some(
        render(observer.template(builtin), &observer.vars(vars)).map(|query| BuiltinQuery {
            builtin,
            observer,
            query,
        }),
    )
}

// The PromQL below is copied verbatim from fluxcd/flagger v1.44.0
// `pkg/metrics/observers/<observer>.go` (`<observer>Queries`), so rendered queries match Flagger's.

// pkg/metrics/observers/apisix.go
const APISIX_SUCCESS_RATE: &str = "
\tsum(
\t\trate(
\t\t\tapisix_http_status{
\t\t\t\troute=~\"{{ namespace }}_{{ route }}-{{ target }}-canary_.+\",
\t\t\t\tcode!~\"5..\"
\t\t\t}[{{ interval }}]
\t\t)
\t)
\t/
\tsum(
\t\trate(
\t\t\tapisix_http_status{
\t\t\t\troute=~\"{{ namespace }}_{{ route }}-{{ target }}-canary_.+\"
\t\t\t}[{{ interval }}]
\t\t)
\t) * 100";

// pkg/metrics/observers/apisix.go
const APISIX_DURATION: &str = "
\thistogram_quantile(
\t\t0.99, 
\t\tsum(
\t\t\trate(
\t\t\t\tapisix_http_latency_bucket{
\t\t\t\t\ttype=~\"request\",
\t\t\t\t\troute=~\"{{ namespace }}_{{ route }}-{{ target }}-canary_.+\"
\t\t\t\t}[{{ interval }}]
\t\t\t)
\t\t) by (le)
\t)";

// pkg/metrics/observers/appmesh.go
const APPMESH_SUCCESS_RATE: &str = "
\tsum(
\t\trate(
\t\t\tenvoy_cluster_upstream_rq{
\t\t\t\tkubernetes_namespace=\"{{ namespace }}\",
\t\t\t\tkubernetes_pod_name=~\"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)\",
\t\t\t\tenvoy_response_code!~\"5.*\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t/ 
\tsum(
\t\trate(
\t\t\tenvoy_cluster_upstream_rq{
\t\t\t\tkubernetes_namespace=\"{{ namespace }}\",
\t\t\t\tkubernetes_pod_name=~\"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t* 100";

// pkg/metrics/observers/appmesh.go
const APPMESH_DURATION: &str = "
\thistogram_quantile(
\t\t0.99,
\t\tsum(
\t\t\trate(
\t\t\t\tenvoy_cluster_upstream_rq_time_bucket{
\t\t\t\t\tkubernetes_namespace=\"{{ namespace }}\",
\t\t\t\t\tkubernetes_pod_name=~\"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)\"
\t\t\t\t}[{{ interval }}]
\t\t\t)
\t\t) by (le)
\t)";

// pkg/metrics/observers/contour.go
const CONTOUR_SUCCESS_RATE: &str = "
\tsum(
\t\trate(
\t\t\tenvoy_cluster_upstream_rq{
\t\t\t\tenvoy_cluster_name=~\"{{ namespace }}_{{ service }}-canary_[0-9a-zA-Z-]+\",
\t\t\t\tenvoy_response_code!~\"5.*\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t/ 
\tsum(
\t\trate(
\t\t\tenvoy_cluster_upstream_rq{
\t\t\t\tenvoy_cluster_name=~\"{{ namespace }}_{{ service }}-canary_[0-9a-zA-Z-]+\",
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t* 100";

// pkg/metrics/observers/contour.go
const CONTOUR_DURATION: &str = "
\thistogram_quantile(
\t\t0.99,
\t\tsum(
\t\t\trate(
\t\t\t\tenvoy_cluster_upstream_rq_time_bucket{
\t\t\t\t\tenvoy_cluster_name=~\"{{ namespace }}_{{ service }}-canary_[0-9a-zA-Z-]+\",
\t\t\t\t}[{{ interval }}]
\t\t\t)
\t\t) by (le)
\t)";

// pkg/metrics/observers/gloo.go
const GLOO_SUCCESS_RATE: &str = "
\tsum(
\t\trate(
\t\t\tenvoy_cluster_upstream_rq{
\t\t\t\tenvoy_cluster_name=~\"{{ namespace }}-{{ target }}-canaryupstream-[0-9a-zA-Z-]+_[0-9a-zA-Z-]+\",
\t\t\t\tenvoy_response_code!~\"5.*\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t/ 
\tsum(
\t\trate(
\t\t\tenvoy_cluster_upstream_rq{
\t\t\t\tenvoy_cluster_name=~\"{{ namespace }}-{{ target }}-canaryupstream-[0-9a-zA-Z-]+_[0-9a-zA-Z-]+\",
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t* 100";

// pkg/metrics/observers/gloo.go
const GLOO_DURATION: &str = "
\thistogram_quantile(
\t\t0.99,
\t\tsum(
\t\t\trate(
\t\t\t\tenvoy_cluster_upstream_rq_time_bucket{
\t\t\t\t\tenvoy_cluster_name=~\"{{ namespace }}-{{ target }}-canaryupstream-[0-9a-zA-Z-]+_[0-9a-zA-Z-]+\",
\t\t\t\t}[{{ interval }}]
\t\t\t)
\t\t) by (le)
\t)";

// pkg/metrics/observers/http.go
const HTTP_SUCCESS_RATE: &str = "
\tsum(
\t\trate(
\t\t\thttp_request_duration_seconds_count{
\t\t\t\tkubernetes_namespace=\"{{ namespace }}\",
\t\t\t\tkubernetes_pod_name=~\"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)\",
\t\t\t\tstatus!~\"5.*\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t/ 
\tsum(
\t\trate(
\t\t\thttp_request_duration_seconds_count{
\t\t\t\tkubernetes_namespace=\"{{ namespace }}\",
\t\t\t\tkubernetes_pod_name=~\"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t* 100";

// pkg/metrics/observers/http.go
const HTTP_DURATION: &str = "
\thistogram_quantile(
\t\t0.99,
\t\tsum(
\t\t\trate(
\t\t\t\thttp_request_duration_seconds_bucket{
\t\t\t\t\tkubernetes_namespace=\"{{ namespace }}\",
\t\t\t\t\tkubernetes_pod_name=~\"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)\"
\t\t\t\t}[{{ interval }}]
\t\t\t)
\t\t) by (le)
\t)";

// pkg/metrics/observers/istio.go
const ISTIO_SUCCESS_RATE: &str = "
\tsum(
\t\trate(
\t\t\tistio_requests_total{
\t\t\t\treporter=\"destination\",
\t\t\t\tdestination_workload_namespace=\"{{ namespace }}\",
\t\t\t\tdestination_workload=~\"{{ target }}\",
\t\t\t\tresponse_code!~\"5.*\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t/ 
\tsum(
\t\trate(
\t\t\tistio_requests_total{
\t\t\t\treporter=\"destination\",
\t\t\t\tdestination_workload_namespace=\"{{ namespace }}\",
\t\t\t\tdestination_workload=~\"{{ target }}\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t* 100";

// pkg/metrics/observers/istio.go
const ISTIO_DURATION: &str = "
\thistogram_quantile(
\t\t0.99,
\t\tsum(
\t\t\trate(
\t\t\t\tistio_request_duration_milliseconds_bucket{
\t\t\t\t\treporter=\"destination\",
\t\t\t\t\tdestination_workload_namespace=\"{{ namespace }}\",
\t\t\t\t\tdestination_workload=~\"{{ target }}\"
\t\t\t\t}[{{ interval }}]
\t\t\t)
\t\t) by (le)
\t)";

// pkg/metrics/observers/knative.go
const KNATIVE_SUCCESS_RATE: &str = "
\tsum(
\t\trate(
\t\t\tenvoy_cluster_upstream_rq{
\t\t\t\tenvoy_cluster_name=~\"{{ namespace }}/{{ route }}\",
\t\t\t\tenvoy_response_code!~\"5.*\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t/ 
\tsum(
\t\trate(
\t\t\tenvoy_cluster_upstream_rq{
\t\t\t\tenvoy_cluster_name=~\"{{ namespace }}/{{ route }}\",
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t* 100";

// pkg/metrics/observers/knative.go
const KNATIVE_DURATION: &str = "
\thistogram_quantile(
\t\t0.99,
\t\tsum(
\t\t\trate(
\t\t\t\tenvoy_cluster_upstream_rq_time_bucket{
\t\t\t\t\tenvoy_cluster_name=~\"{{ namespace }}/{{ route }}\",
\t\t\t\t}[{{ interval }}]
\t\t\t)
\t\t) by (le)
\t)";

// pkg/metrics/observers/kuma.go
const KUMA_SUCCESS_RATE: &str = "
\tsum(
\t\trate(
\t\t\tenvoy_cluster_upstream_rq{
\t\t\t\tservice=~\"{{ target }}-canary_{{ namespace }}_svc_[0-9a-zA-Z-]+\",
\t\t\t\tenvoy_response_code!~\"5.*\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t/ 
\tsum(
\t\trate(
\t\t\tenvoy_cluster_upstream_rq{
\t\t\t\tservice=~\"{{ target }}-canary_{{ namespace }}_svc_[0-9a-zA-Z-]+\",
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t* 100";

// pkg/metrics/observers/kuma.go
const KUMA_DURATION: &str = "
\thistogram_quantile(
\t\t0.99,
\t\tsum(
\t\t\trate(
\t\t\t\tenvoy_cluster_upstream_rq_time_bucket{
\t\t\t\t\tservice=~\"{{ target }}-canary_{{ namespace }}_svc_[0-9a-zA-Z-]+\",
\t\t\t\t}[{{ interval }}]
\t\t\t)
\t\t) by (le)
\t)";

// pkg/metrics/observers/linkerd.go
const LINKERD_SUCCESS_RATE: &str = "
\tsum(
\t\trate(
\t\t\tresponse_total{
\t\t\t\tnamespace=\"{{ namespace }}\",
\t\t\t\tdeployment=~\"{{ target }}\",
\t\t\t\tclassification!=\"failure\",
\t\t\t\tdirection=\"inbound\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t/ 
\tsum(
\t\trate(
\t\t\tresponse_total{
\t\t\t\tnamespace=\"{{ namespace }}\",
\t\t\t\tdeployment=~\"{{ target }}\",
\t\t\t\tdirection=\"inbound\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t* 100";

// pkg/metrics/observers/linkerd.go
const LINKERD_DURATION: &str = "
\thistogram_quantile(
\t\t0.99,
\t\tsum(
\t\t\trate(
\t\t\t\tresponse_latency_ms_bucket{
\t\t\t\t\tnamespace=\"{{ namespace }}\",
\t\t\t\t\tdeployment=~\"{{ target }}\",
\t\t\t\t\tdirection=\"inbound\"
\t\t\t\t}[{{ interval }}]
\t\t\t)
\t\t) by (le)
\t)";

// pkg/metrics/observers/nginx.go
const NGINX_SUCCESS_RATE: &str = "
\tsum(
\t\trate(
\t\t\tnginx_ingress_controller_requests{
\t\t\t\tnamespace=\"{{ namespace }}\",
\t\t\t\tingress=\"{{ ingress }}\",
\t\t\t\tcanary!=\"\",
\t\t\t\tstatus!~\"5.*\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t/ 
\tsum(
\t\trate(
\t\t\tnginx_ingress_controller_requests{
\t\t\t\tnamespace=\"{{ namespace }}\",
\t\t\t\tingress=\"{{ ingress }}\",
\t\t\t\tcanary!=\"\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t* 100";

// pkg/metrics/observers/nginx.go
const NGINX_DURATION: &str = "
\tsum(
\t\trate(
\t\t\tnginx_ingress_controller_response_duration_seconds_sum{
\t\t\t\tnamespace=\"{{ namespace }}\",
\t\t\t\tingress=\"{{ ingress }}\",
\t\t\t\tcanary!=\"\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t/ 
\tsum(
\t\trate(
\t\t\tnginx_ingress_controller_response_duration_seconds_count{
\t\t\t\tnamespace=\"{{ namespace }}\",
\t\t\t\tingress=\"{{ ingress }}\",
\t\t\t\tcanary!=\"\"
\t\t\t}[{{ interval }}]
\t\t)
\t) 
\t* 1000";

// pkg/metrics/observers/osm.go
const OSM_SUCCESS_RATE: &str = "
    sum(
        rate(
            osm_request_total{
\t\t\t\tdestination_namespace=\"{{ namespace }}\",
\t\t\t\tdestination_kind=\"Deployment\",
\t\t\t\tdestination_name=\"{{ target }}\",
\t\t\t\tresponse_code!~\"5.*\"
            }[{{ interval }}]
        )
    )
    /
    sum(
        rate(
            osm_request_total{
\t\t\t\tdestination_namespace=\"{{ namespace }}\",
\t\t\t\tdestination_kind=\"Deployment\",
\t\t\t\tdestination_name=\"{{ target }}\"
            }[{{ interval }}]
        )
    )
\t* 100";

// pkg/metrics/observers/osm.go
const OSM_DURATION: &str = "
\thistogram_quantile(
\t\t0.99,
\t\tsum(
\t\t  rate(
\t\t\tosm_request_duration_ms_bucket{
\t\t\t\tdestination_namespace=\"{{ namespace }}\",
\t\t\t\tdestination_kind=\"Deployment\",
\t\t\t\tdestination_name=\"{{ target }}\"
\t\t\t}[{{ interval }}]
\t\t  )
\t\t) by (le)
\t)";

// pkg/metrics/observers/skipper.go (its `routePattern` inlined for `{{ $route }}`)
const SKIPPER_SUCCESS_RATE: &str = "
\tsum(rate(skipper_response_duration_seconds_bucket{route=~\"kube(ew)?_{{ namespace }}__{{ ingress }}_canary__.*__{{ service }}_canary(_[0-9]+)?\",code!~\"5..\",le=\"+Inf\"}[{{ interval }}])) / 
\tsum(rate(skipper_response_duration_seconds_bucket{route=~\"kube(ew)?_{{ namespace }}__{{ ingress }}_canary__.*__{{ service }}_canary(_[0-9]+)?\",le=\"+Inf\"}[{{ interval }}])) * 100";

// pkg/metrics/observers/skipper.go (its `routePattern` inlined for `{{ $route }}`)
const SKIPPER_DURATION: &str = "
\tsum(rate(skipper_serve_route_duration_seconds_sum{route=~\"kube(ew)?_{{ namespace }}__{{ ingress }}_canary__.*__{{ service }}_canary(_[0-9]+)?\"}[{{ interval }}])) / 
\tsum(rate(skipper_serve_route_duration_seconds_count{route=~\"kube(ew)?_{{ namespace }}__{{ ingress }}_canary__.*__{{ service }}_canary(_[0-9]+)?\"}[{{ interval }}])) * 1000";

// pkg/metrics/observers/traefik.go
const TRAEFIK_SUCCESS_RATE: &str = "
\tsum(
\t\trate(
\t\t\ttraefik_service_request_duration_seconds_bucket{
\t\t\t\tservice=~\"{{ namespace }}-{{ target }}-canary-[0-9a-zA-Z-]+@kubernetescrd\",
\t\t\t\tcode!~\"5..\",
\t\t\t\tle=\"+Inf\"
\t\t\t}[{{ interval }}]
\t\t)
\t)
\t/
\tsum(
\t\trate(
\t\t\ttraefik_service_request_duration_seconds_bucket{
\t\t\t\tservice=~\"{{ namespace }}-{{ target }}-canary-[0-9a-zA-Z-]+@kubernetescrd\",
\t\t\t\tle=\"+Inf\"
\t\t\t}[{{ interval }}]
\t\t)
\t) * 100";

// pkg/metrics/observers/traefik.go
const TRAEFIK_DURATION: &str = "
\thistogram_quantile(
\t\t0.99,
\t\tsum(
\t\t\trate(
\t\t\t\ttraefik_service_request_duration_seconds_bucket{
\t\t\t\t\tservice=~\"{{ namespace }}-{{ target }}-canary-[0-9a-zA-Z-]+@kubernetescrd\"
\t\t\t\t}[{{ interval }}]
\t\t\t)
\t\t) by (le)
\t) * 1000";

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    /// Flagger's `MetricTemplateModel` of its observer tests: only the fields they set.
    fn model(namespace: &str) -> MetricVars {
        MetricVars {
            namespace: namespace.into(),
            interval: "1m".into(),
            ..MetricVars::default()
        }
    }

    fn podinfo_model() -> MetricVars {
        MetricVars {
            name: "podinfo".into(),
            target: "podinfo".into(),
            service: "podinfo".into(),
            ..model("default")
        }
    }

    fn nginx_model() -> MetricVars {
        MetricVars {
            name: "podinfo".into(),
            target: "podinfo".into(),
            ingress: "podinfo".into(),
            ..model("nginx")
        }
    }

    fn skipper_model() -> MetricVars {
        MetricVars {
            service: "backend".into(),
            ingress: "skipper-ingress".into(),
            ..model("skipper")
        }
    }

    trait With {
        fn route(self, route: &str) -> Self;
        fn service(self, service: &str) -> Self;
    }

    impl With for MetricVars {
        fn route(self, route: &str) -> Self {
            MetricVars {
                route: route.into(),
                ..self
            }
        }
        fn service(self, service: &str) -> Self {
            MetricVars {
                service: service.into(),
                ..self
            }
        }
    }

    /// The query as Flagger's Prometheus client sends it (`trimQuery`: every run of whitespace
    /// becomes one space), the form its tests compare.
    fn sent(query: &str) -> String {
        let mut out = String::with_capacity(query.len());
        let mut in_space = false;
        for c in query.chars() {
            if c.is_whitespace() {
                if !in_space {
                    out.push(' ');
                }
                in_space = true;
            } else {
                out.push(c);
                in_space = false;
            }
        }
        out
    }

    #[test]
    fn every_observer_renders_flaggers_own_expected_query() {
        // (Flagger test file, provider|metric, model, the `expected` string of that test)
        let cases = [
            (
                "apisix_test.go",
                "apisix|request-success-rate",
                podinfo_model().route("podinfo"),
                r#" sum( rate( apisix_http_status{ route=~"default_podinfo-podinfo-canary_.+", code!~"5.." }[1m] ) ) / sum( rate( apisix_http_status{ route=~"default_podinfo-podinfo-canary_.+" }[1m] ) ) * 100"#,
            ),
            (
                "apisix_test.go",
                "apisix|request-duration",
                podinfo_model().route("podinfo"),
                r#" histogram_quantile( 0.99, sum( rate( apisix_http_latency_bucket{ type=~"request", route=~"default_podinfo-podinfo-canary_.+" }[1m] ) ) by (le) )"#,
            ),
            (
                "appmesh_test.go",
                "appmesh:v1beta2|request-success-rate",
                podinfo_model(),
                r#" sum( rate( envoy_cluster_upstream_rq{ kubernetes_namespace="default", kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)", envoy_response_code!~"5.*" }[1m] ) ) / sum( rate( envoy_cluster_upstream_rq{ kubernetes_namespace="default", kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)" }[1m] ) ) * 100"#,
            ),
            (
                "appmesh_test.go",
                "appmesh:v1beta2|request-duration",
                podinfo_model(),
                r#" histogram_quantile( 0.99, sum( rate( envoy_cluster_upstream_rq_time_bucket{ kubernetes_namespace="default", kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)" }[1m] ) ) by (le) )"#,
            ),
            (
                "contour_test.go",
                "contour|request-success-rate",
                podinfo_model(),
                r#" sum( rate( envoy_cluster_upstream_rq{ envoy_cluster_name=~"default_podinfo-canary_[0-9a-zA-Z-]+", envoy_response_code!~"5.*" }[1m] ) ) / sum( rate( envoy_cluster_upstream_rq{ envoy_cluster_name=~"default_podinfo-canary_[0-9a-zA-Z-]+", }[1m] ) ) * 100"#,
            ),
            (
                "contour_test.go",
                "contour|request-success-rate",
                podinfo_model().service("podinfo-service"),
                r#" sum( rate( envoy_cluster_upstream_rq{ envoy_cluster_name=~"default_podinfo-service-canary_[0-9a-zA-Z-]+", envoy_response_code!~"5.*" }[1m] ) ) / sum( rate( envoy_cluster_upstream_rq{ envoy_cluster_name=~"default_podinfo-service-canary_[0-9a-zA-Z-]+", }[1m] ) ) * 100"#,
            ),
            (
                "contour_test.go",
                "contour|request-duration",
                podinfo_model(),
                r#" histogram_quantile( 0.99, sum( rate( envoy_cluster_upstream_rq_time_bucket{ envoy_cluster_name=~"default_podinfo-canary_[0-9a-zA-Z-]+", }[1m] ) ) by (le) )"#,
            ),
            (
                "contour_test.go",
                "contour|request-duration",
                podinfo_model().service("podinfo-service"),
                r#" histogram_quantile( 0.99, sum( rate( envoy_cluster_upstream_rq_time_bucket{ envoy_cluster_name=~"default_podinfo-service-canary_[0-9a-zA-Z-]+", }[1m] ) ) by (le) )"#,
            ),
            (
                "gloo_test.go",
                "gloo|request-success-rate",
                podinfo_model(),
                r#" sum( rate( envoy_cluster_upstream_rq{ envoy_cluster_name=~"default-podinfo-canaryupstream-[0-9a-zA-Z-]+_[0-9a-zA-Z-]+", envoy_response_code!~"5.*" }[1m] ) ) / sum( rate( envoy_cluster_upstream_rq{ envoy_cluster_name=~"default-podinfo-canaryupstream-[0-9a-zA-Z-]+_[0-9a-zA-Z-]+", }[1m] ) ) * 100"#,
            ),
            (
                "gloo_test.go",
                "gloo|request-duration",
                podinfo_model(),
                r#" histogram_quantile( 0.99, sum( rate( envoy_cluster_upstream_rq_time_bucket{ envoy_cluster_name=~"default-podinfo-canaryupstream-[0-9a-zA-Z-]+_[0-9a-zA-Z-]+", }[1m] ) ) by (le) )"#,
            ),
            (
                "http_test.go",
                "kubernetes|request-success-rate",
                podinfo_model(),
                r#" sum( rate( http_request_duration_seconds_count{ kubernetes_namespace="default", kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)", status!~"5.*" }[1m] ) ) / sum( rate( http_request_duration_seconds_count{ kubernetes_namespace="default", kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)" }[1m] ) ) * 100"#,
            ),
            (
                "http_test.go",
                "kubernetes|request-duration",
                podinfo_model(),
                r#" histogram_quantile( 0.99, sum( rate( http_request_duration_seconds_bucket{ kubernetes_namespace="default", kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)" }[1m] ) ) by (le) )"#,
            ),
            (
                "istio_test.go",
                "istio|request-success-rate",
                podinfo_model(),
                r#" sum( rate( istio_requests_total{ reporter="destination", destination_workload_namespace="default", destination_workload=~"podinfo", response_code!~"5.*" }[1m] ) ) / sum( rate( istio_requests_total{ reporter="destination", destination_workload_namespace="default", destination_workload=~"podinfo" }[1m] ) ) * 100"#,
            ),
            (
                "istio_test.go",
                "istio|request-duration",
                podinfo_model(),
                r#" histogram_quantile( 0.99, sum( rate( istio_request_duration_milliseconds_bucket{ reporter="destination", destination_workload_namespace="default", destination_workload=~"podinfo" }[1m] ) ) by (le) )"#,
            ),
            (
                "knative_test.go",
                "knative|request-success-rate",
                podinfo_model().route("podinfo-00001"),
                r#" sum( rate( envoy_cluster_upstream_rq{ envoy_cluster_name=~"default/podinfo-00001", envoy_response_code!~"5.*" }[1m] ) ) / sum( rate( envoy_cluster_upstream_rq{ envoy_cluster_name=~"default/podinfo-00001", }[1m] ) ) * 100"#,
            ),
            (
                "knative_test.go",
                "knative|request-duration",
                podinfo_model().route("podinfo-00001"),
                r#" histogram_quantile( 0.99, sum( rate( envoy_cluster_upstream_rq_time_bucket{ envoy_cluster_name=~"default/podinfo-00001", }[1m] ) ) by (le) )"#,
            ),
            (
                "kuma_test.go",
                "kuma|request-success-rate",
                podinfo_model(),
                r#" sum( rate( envoy_cluster_upstream_rq{ service=~"podinfo-canary_default_svc_[0-9a-zA-Z-]+", envoy_response_code!~"5.*" }[1m] ) ) / sum( rate( envoy_cluster_upstream_rq{ service=~"podinfo-canary_default_svc_[0-9a-zA-Z-]+", }[1m] ) ) * 100"#,
            ),
            (
                "kuma_test.go",
                "kuma|request-duration",
                podinfo_model(),
                r#" histogram_quantile( 0.99, sum( rate( envoy_cluster_upstream_rq_time_bucket{ service=~"podinfo-canary_default_svc_[0-9a-zA-Z-]+", }[1m] ) ) by (le) )"#,
            ),
            (
                "linkerd_test.go",
                "linkerd|request-success-rate",
                podinfo_model(),
                r#" sum( rate( response_total{ namespace="default", deployment=~"podinfo", classification!="failure", direction="inbound" }[1m] ) ) / sum( rate( response_total{ namespace="default", deployment=~"podinfo", direction="inbound" }[1m] ) ) * 100"#,
            ),
            (
                "linkerd_test.go",
                "linkerd|request-duration",
                podinfo_model(),
                r#" histogram_quantile( 0.99, sum( rate( response_latency_ms_bucket{ namespace="default", deployment=~"podinfo", direction="inbound" }[1m] ) ) by (le) )"#,
            ),
            (
                "nginx_test.go",
                "nginx|request-success-rate",
                nginx_model(),
                r#" sum( rate( nginx_ingress_controller_requests{ namespace="nginx", ingress="podinfo", canary!="", status!~"5.*" }[1m] ) ) / sum( rate( nginx_ingress_controller_requests{ namespace="nginx", ingress="podinfo", canary!="" }[1m] ) ) * 100"#,
            ),
            (
                "nginx_test.go",
                "nginx|request-duration",
                nginx_model(),
                r#" sum( rate( nginx_ingress_controller_response_duration_seconds_sum{ namespace="nginx", ingress="podinfo", canary!="" }[1m] ) ) / sum( rate( nginx_ingress_controller_response_duration_seconds_count{ namespace="nginx", ingress="podinfo", canary!="" }[1m] ) ) * 1000"#,
            ),
            (
                "osm_test.go",
                "osm|request-success-rate",
                podinfo_model(),
                r#" sum( rate( osm_request_total{ destination_namespace="default", destination_kind="Deployment", destination_name="podinfo", response_code!~"5.*" }[1m] ) ) / sum( rate( osm_request_total{ destination_namespace="default", destination_kind="Deployment", destination_name="podinfo" }[1m] ) ) * 100"#,
            ),
            (
                "osm_test.go",
                "osm|request-duration",
                podinfo_model(),
                r#" histogram_quantile( 0.99, sum( rate( osm_request_duration_ms_bucket{ destination_namespace="default", destination_kind="Deployment", destination_name="podinfo" }[1m] ) ) by (le) )"#,
            ),
            (
                "skipper_test.go",
                "skipper|request-success-rate",
                skipper_model(),
                r#" sum(rate(skipper_response_duration_seconds_bucket{route=~"kube(ew)?_skipper__skipper_ingress_canary__.*__backend_canary(_[0-9]+)?",code!~"5..",le="+Inf"}[1m])) / sum(rate(skipper_response_duration_seconds_bucket{route=~"kube(ew)?_skipper__skipper_ingress_canary__.*__backend_canary(_[0-9]+)?",le="+Inf"}[1m])) * 100"#,
            ),
            (
                "skipper_test.go",
                "skipper|request-duration",
                skipper_model(),
                r#" sum(rate(skipper_serve_route_duration_seconds_sum{route=~"kube(ew)?_skipper__skipper_ingress_canary__.*__backend_canary(_[0-9]+)?"}[1m])) / sum(rate(skipper_serve_route_duration_seconds_count{route=~"kube(ew)?_skipper__skipper_ingress_canary__.*__backend_canary(_[0-9]+)?"}[1m])) * 1000"#,
            ),
            (
                "traefik_test.go",
                "traefik|request-success-rate",
                podinfo_model(),
                r#" sum( rate( traefik_service_request_duration_seconds_bucket{ service=~"default-podinfo-canary-[0-9a-zA-Z-]+@kubernetescrd", code!~"5..", le="+Inf" }[1m] ) ) / sum( rate( traefik_service_request_duration_seconds_bucket{ service=~"default-podinfo-canary-[0-9a-zA-Z-]+@kubernetescrd", le="+Inf" }[1m] ) ) * 100"#,
            ),
            (
                "traefik_test.go",
                "traefik|request-duration",
                podinfo_model(),
                r#" histogram_quantile( 0.99, sum( rate( traefik_service_request_duration_seconds_bucket{ service=~"default-podinfo-canary-[0-9a-zA-Z-]+@kubernetescrd" }[1m] ) ) by (le) ) * 1000"#,
            ),
        ];
        for (file, case, vars, expected) in cases {
            let (provider, metric) = case.split_once('|').unwrap();
            let query = builtin_query(metric, provider, &vars)
                .unwrap_or_else(|| panic!("{case}: not a builtin"))
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(sent(&query.query), expected, "{case} (flagger {file})");
        }
    }

    #[test]
    fn providers_select_upstreams_observers() {
        let cases = [
            ("gatewayapi:v1", Some(Observer::Http)),
            ("gatewayapi:v1beta1", Some(Observer::Http)),
            ("gatewayapi", Some(Observer::Http)),
            ("kubernetes", Some(Observer::Http)),
            ("kubernetes:service", Some(Observer::Http)),
            ("istio:service", Some(Observer::Istio)),
            ("appmesh", Some(Observer::AppMesh)),
            ("appmesh:v1beta2", Some(Observer::AppMesh)),
            ("gloo", Some(Observer::Gloo)),
            ("smi:linkerd", Some(Observer::Linkerd)),
            ("linkerd", Some(Observer::Linkerd)),
            ("contour", Some(Observer::Contour)),
            ("nginx", Some(Observer::Nginx)),
            ("skipper", Some(Observer::Skipper)),
            ("traefik", Some(Observer::Traefik)),
            ("osm", Some(Observer::Osm)),
            ("kuma", Some(Observer::Kuma)),
            ("apisix", Some(Observer::Apisix)),
            ("knative", Some(Observer::Knative)),
            ("smi:v1alpha3", None),
            ("", None),
            ("nginxx", None),
        ];
        for (provider, observer) in cases {
            assert_eq!(Observer::for_provider(provider), observer, "{provider:?}");
        }
        let v = podinfo_model();
        assert_eq!(builtin_query("latency", "istio", &v), None);
        for provider in ["smi:v1alpha3", ""] {
            let err = builtin_query("request-duration", provider, &v)
                .unwrap()
                .unwrap_err();
            assert!(err.to_string().contains("define a MetricTemplate"), "{err}");
        }
    }

    #[test]
    fn linkerd_as_mesh_provider_wins_for_canaries_naming_a_provider() {
        assert_eq!(metrics_provider(None, "istio"), "istio");
        assert_eq!(metrics_provider(Some(""), "istio"), "istio");
        assert_eq!(metrics_provider(Some("nginx"), "istio"), "nginx");
        assert_eq!(metrics_provider(Some("nginx"), "linkerd"), "linkerd");
        assert_eq!(metrics_provider(None, "smi:linkerd"), "smi:linkerd");
    }

    #[test]
    fn skipper_names_carry_non_word_characters_as_underscores() {
        let v = MetricVars {
            namespace: "team-a".into(),
            ingress: "web.ing".into(),
            service: "web-svc".into(),
            ..model("x")
        };
        let q = builtin_query("request-success-rate", "skipper", &v)
            .unwrap()
            .unwrap();
        assert!(
            q.query
                .contains("kube(ew)?_team_a__web_ing_canary__.*__web_svc_canary(_[0-9]+)?"),
            "{}",
            q.query
        );
    }

    #[test]
    fn duration_values_are_whole_milliseconds() {
        let v = podinfo_model();
        let istio = builtin_query("request-duration", "istio", &v)
            .unwrap()
            .unwrap();
        assert_eq!(istio.check_value(499.9), 499.0);
        for provider in ["kubernetes", "gatewayapi:v1"] {
            let http = builtin_query("request-duration", provider, &v)
                .unwrap()
                .unwrap();
            assert_eq!(
                http.check_value(0.2507),
                250.0,
                "the http observer returns seconds"
            );
        }
        let traefik = builtin_query("request-duration", "traefik", &v)
            .unwrap()
            .unwrap();
        assert_eq!(traefik.check_value(12.7), 12.0, "Traefik's query is in ms");
        let rate = builtin_query("request-success-rate", "kubernetes", &v)
            .unwrap()
            .unwrap();
        assert_eq!(rate.check_value(99.95), 99.95);
    }
}
