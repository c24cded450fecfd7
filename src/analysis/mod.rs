//! Metric providers: the I/O side of analysis, for both APIs. Each provider takes one measurement
//! of a metric (queries Prometheus, Graphite, InfluxDB, Datadog or New Relic, calls a URL, runs a Job) and reports what it saw as an
//! [`Observed`]; the pure engine (`crate::engine::analysis`) judges it against the metric's
//! conditions and records it in the AnalysisRun.
//!
//! Decides: which provider serves a metric ([`Providers`]), how each talks to its backend, and how a
//! failure is put into words (the backend's own message, what was asked, of whom).
//!
//! Must never:
//! - judge a value against `successCondition` / `failureCondition` (only a provider whose outcome *is*
//!   the verdict, the Job, returns [`Observed::Judged`]);
//! - log, or put into a message or a reported query, a secret argument's value: every text shown is
//!   built from the *masked* metric, and header values and passwords are never shown at all;
//! - panic on any metric or any backend answer.
//!
//! Adding a provider (Datadog, New Relic, CloudWatch, …) is one new module implementing
//! [`Provider`] and one line in [`Providers::new`]; the controller does not change. Flagger
//! MetricTemplates run through the same providers: [`metric_template`] turns a template into the
//! Argo metric of its type.

pub mod datadog;
pub mod fields;
pub mod graphite;
pub mod http;
pub mod influxdb;
pub mod job;
pub mod judge;
pub mod metric_template;
pub mod newrelic;
pub mod prometheus;
pub mod secret;
pub mod web;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;

use crate::api::argo::analysis::{Measurement, Metric, MetricResult, ProviderKind};
use crate::engine::AnalysisPhase;
use crate::engine::analysis::Observed;

pub use http::HttpClients;

/// What a provider may know about the run it measures for.
///
/// The controller builds one per measurement: it is cheap (the `kube::Client` is a handle), and two
/// fields, [`now`](Self::now) and [`measurement_number`](Self::measurement_number), belong to the
/// measurement rather than to the run.
#[derive(Clone)]
pub struct MeasureContext {
    /// Client for the run's cluster (the job provider creates Jobs with it).
    pub client: kube::Client,
    /// The AnalysisRun's namespace.
    pub namespace: String,
    /// The AnalysisRun's name.
    pub run_name: String,
    /// The AnalysisRun's uid (Jobs carry it in their name, a label and their owner reference).
    pub run_uid: String,
    /// The Prometheus address to use when a metric names none (upstream's
    /// `ARGO_ROLLOUTS_PROMETHEUS_ADDRESS`).
    pub default_prometheus_address: Option<String>,
    /// The time of this measurement: the evaluation time of an instant query and the `now()` of a
    /// range query's `start` / `end` (passed in, so tests are deterministic).
    pub now: Timestamp,
    /// 1-based number of this measurement of the metric, as upstream counts it: see
    /// [`MeasureContext::measurement_number_for`]. The job provider names its Job after it, so a
    /// `run` repeated after a controller crash finds (and adopts) the Job it already created.
    pub measurement_number: u64,
}

impl std::fmt::Debug for MeasureContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeasureContext")
            .field("namespace", &self.namespace)
            .field("run_name", &self.run_name)
            .field("run_uid", &self.run_uid)
            .field(
                "default_prometheus_address",
                &self.default_prometheus_address,
            )
            .field("now", &self.now)
            .field("measurement_number", &self.measurement_number)
            .finish_non_exhaustive()
    }
}

impl MeasureContext {
    /// The number of the next measurement of a metric given its current result: measurements taken
    /// (`count`) plus errors, plus one (upstream `getJobIDSuffix`). An errored attempt therefore moves
    /// on to a new number, while a retried attempt that was never recorded keeps its number.
    pub fn measurement_number_for(result: Option<&MetricResult>) -> u64 {
        let taken = result.map_or(0, |r| {
            u64::from(r.count.max(0).unsigned_abs()) + u64::from(r.error.max(0).unsigned_abs())
        });
        taken + 1
    }
}

/// Why a provider could not do what was asked (configuration, transport, cluster). Providers turn
/// these into [`Observed::Error`] at their boundary; only [`Provider::garbage_collect`] and
/// [`Providers::get`] return them.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The metric uses a provider Sluice does not implement.
    #[error("provider {provider} is not supported by Sluice yet")]
    Unsupported {
        /// Wire name (`datadog`, `newRelic`, `plugin argoproj-labs/x`, …).
        provider: String,
    },
    /// The metric sets no provider or several.
    #[error("metric {metric:?}: {reason}")]
    BadProvider {
        /// Metric name.
        metric: String,
        /// What is wrong.
        reason: String,
    },
    /// The metric's provider configuration cannot be used as written.
    #[error("{0}")]
    Config(String),
    /// A Kubernetes API call failed.
    #[error("{action} failed: {source}")]
    Kube {
        /// What was being done ("list jobs of AnalysisRun x").
        action: String,
        /// The client's error (the apiserver's status message for API errors).
        #[source]
        source: Box<kube::Error>,
    },
}

/// A source of measurements. Implementations are stateless apart from shared clients, so one
/// instance serves every run.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider's wire name (`prometheus`, `web`, `job`), used in messages.
    fn name(&self) -> &'static str;

    /// Metadata kept on the metric's result (not on each measurement), as upstream `GetMetadata`:
    /// Prometheus records `ResolvedPrometheusQuery`. Built from the masked metric. Default: none.
    fn metric_metadata(&self, _masked: &Metric) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Take a new measurement. `metric` has `{{args.*}}` already substituted; `masked` is the same
    /// metric with secret argument values replaced by `*****` — use it for any text reported (the
    /// query, error messages), never the real one.
    async fn run(&self, ctx: &MeasureContext, metric: &Metric, masked: &Metric) -> Observed;

    /// Check on an in-flight measurement (one that returned [`Observed::InProgress`]). Default: an
    /// error saying the provider has no asynchronous measurements.
    async fn resume(
        &self,
        _ctx: &MeasureContext,
        _metric: &Metric,
        _measurement: &Measurement,
    ) -> Observed {
        Observed::error(format!(
            "provider {} has no asynchronous measurements to resume",
            self.name()
        ))
    }

    /// Stop an in-flight measurement because the run is terminating. Default, as upstream treats a
    /// terminated measurement: Successful with the message "metric terminated".
    async fn terminate(
        &self,
        _ctx: &MeasureContext,
        _metric: &Metric,
        measurement: &Measurement,
    ) -> Observed {
        terminated(measurement.metadata.clone())
    }

    /// Clean up provider state beyond the `keep` newest measurements (the job provider deletes old
    /// Jobs). Default: nothing to clean.
    async fn garbage_collect(
        &self,
        _ctx: &MeasureContext,
        _metric: &Metric,
        _keep: usize,
    ) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// Upstream's verdict for a measurement stopped by run termination.
pub(crate) fn terminated(metadata: BTreeMap<String, String>) -> Observed {
    Observed::Judged {
        phase: AnalysisPhase::Successful,
        value: None,
        message: Some("metric terminated".into()),
        metadata,
    }
}

/// The providers Sluice runs, by provider kind.
pub struct Providers {
    registry: Vec<(ProviderKind, Box<dyn Provider>)>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.registry.iter().map(|(_, p)| p.name()).collect();
        f.debug_struct("Providers")
            .field("registry", &names)
            .finish()
    }
}

impl Default for Providers {
    fn default() -> Self {
        Self::new()
    }
}

impl Providers {
    /// Every provider Sluice implements, sharing one HTTP client cache.
    pub fn new() -> Self {
        Self::with_http(Arc::new(HttpClients::default()))
    }

    /// The same, with a given HTTP client cache (to share it with other components).
    pub fn with_http(http: Arc<HttpClients>) -> Self {
        let registry: Vec<(ProviderKind, Box<dyn Provider>)> = vec![
            (
                ProviderKind::Prometheus,
                Box::new(prometheus::PrometheusProvider::new(http.clone())),
            ),
            (
                ProviderKind::Graphite,
                Box::new(graphite::GraphiteProvider::new(http.clone())),
            ),
            (
                ProviderKind::Datadog,
                Box::new(datadog::DatadogProvider::new(http.clone())),
            ),
            (
                ProviderKind::Influxdb,
                Box::new(influxdb::InfluxdbProvider::new(http.clone())),
            ),
            (
                ProviderKind::NewRelic,
                Box::new(newrelic::NewRelicProvider::new(http.clone())),
            ),
            (
                ProviderKind::Web,
                Box::new(web::WebProvider::new(http.clone())),
            ),
            (
                ProviderKind::Judge,
                Box::new(judge::JudgeProvider::new(http)),
            ),
            (ProviderKind::Job, Box::new(job::JobProvider)),
        ];
        Self { registry }
    }

    /// The provider for this metric, or `None` when its provider is not supported (or the metric
    /// sets no provider or several; [`Providers::get`] says which).
    pub fn for_metric(&self, metric: &Metric) -> Option<&dyn Provider> {
        self.get(metric).ok()
    }

    /// The provider for this metric, or why there is none, in words fit for the run's status
    /// ("provider datadog is not supported by Sluice yet").
    pub fn get(&self, metric: &Metric) -> Result<&dyn Provider, ProviderError> {
        let kind = metric
            .provider
            .kind()
            .map_err(|e| ProviderError::BadProvider {
                metric: metric.name.clone(),
                reason: e.to_string(),
            })?;
        self.registry
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| p.as_ref())
            .ok_or_else(|| ProviderError::Unsupported {
                provider: match &kind {
                    ProviderKind::Plugin(name) => format!("plugin {name}"),
                    other => other.wire_name().to_string(),
                },
            })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A context whose kube client points nowhere (HTTP providers never use it).
    pub fn context(now: Timestamp) -> MeasureContext {
        // kube builds a TLS connector even for a plain-HTTP config; pick ring as the process default.
        crate::install_crypto_provider();
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("static URL"));
        MeasureContext {
            client: kube::Client::try_from(config).expect("client from static config"),
            namespace: "default".into(),
            run_name: "guestbook-6c54544f8f-2-1".into(),
            run_uid: "8f0d5a4e-63c1-4c2b-9f6e-2a1b3c4d5e6f".into(),
            default_prometheus_address: None,
            now,
            measurement_number: 1,
        }
    }

    /// What the fake server saw of one request.
    #[derive(Clone, Debug)]
    pub struct Recorded {
        pub method: String,
        pub path: String,
        pub query: Option<String>,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Recorded {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        pub fn body_text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// What the fake server answers.
    pub struct Reply {
        pub status: u16,
        pub content_type: &'static str,
        pub body: Vec<u8>,
        pub delay: std::time::Duration,
    }

    impl Reply {
        pub fn json(status: u16, body: &str) -> Self {
            Self::with_type(status, "application/json", body)
        }

        pub fn with_type(status: u16, content_type: &'static str, body: &str) -> Self {
            Reply {
                status,
                content_type,
                body: body.as_bytes().to_vec(),
                delay: std::time::Duration::ZERO,
            }
        }

        pub fn after(mut self, delay: std::time::Duration) -> Self {
            self.delay = delay;
            self
        }
    }

    pub type Seen = Arc<std::sync::Mutex<Vec<Recorded>>>;

    /// Starts an HTTP server on 127.0.0.1 answering every request with `respond`; returns its base
    /// URL (no trailing slash) and the requests it saw.
    pub async fn serve<F>(respond: F) -> (String, Seen)
    where
        F: Fn(&Recorded) -> Reply + Send + Sync + 'static,
    {
        use axum::response::IntoResponse;
        let seen: Seen = Arc::default();
        let respond = Arc::new(respond);
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let respond = respond.clone();
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default()
                    .to_vec();
                let recorded = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().map(str::to_string),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body,
                };
                let reply = respond(&recorded);
                log.lock().unwrap().push(recorded);
                tokio::time::sleep(reply.delay).await;
                (
                    axum::http::StatusCode::from_u16(reply.status).unwrap(),
                    [(axum::http::header::CONTENT_TYPE, reply.content_type)],
                    reply.body,
                )
                    .into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}"), seen)
    }

    /// A metric from YAML.
    pub fn metric(yaml: &str) -> Metric {
        serde_yaml::from_str(yaml).expect("test metric parses")
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::metric;
    use super::*;

    #[test]
    fn providers_are_picked_by_kind() {
        let providers = Providers::new();
        let prom = metric("name: m\nprovider: {prometheus: {query: up}}\n");
        assert_eq!(providers.for_metric(&prom).unwrap().name(), "prometheus");
        let web = metric("name: m\nprovider: {web: {url: 'http://x'}}\n");
        assert_eq!(providers.for_metric(&web).unwrap().name(), "web");
        let job = metric("name: m\nprovider: {job: {spec: {template: {}}}}\n");
        assert_eq!(providers.for_metric(&job).unwrap().name(), "job");

        let datadog = metric("name: m\nprovider: {datadog: {query: 'avg:x{*}'}}\n");
        assert_eq!(providers.for_metric(&datadog).unwrap().name(), "datadog");
        let kayenta = metric("name: m\nprovider: {kayenta: {}}\n");
        assert!(providers.for_metric(&kayenta).is_none());
        let err = providers.get(&kayenta).err().unwrap();
        assert_eq!(
            err.to_string(),
            "provider kayenta is not supported by Sluice yet"
        );
        let plugin = metric("name: m\nprovider: {plugin: {argoproj-labs/x: {}}}\n");
        assert_eq!(
            providers.get(&plugin).err().unwrap().to_string(),
            "provider plugin argoproj-labs/x is not supported by Sluice yet"
        );
        let none = metric("name: m\nprovider: {}\n");
        let err = providers.get(&none).err().unwrap().to_string();
        assert!(err.contains("exactly one provider"), "{err}");
    }

    #[test]
    fn measurement_numbers_follow_upstream() {
        assert_eq!(MeasureContext::measurement_number_for(None), 1);
        let result: MetricResult = serde_json::from_value(serde_json::json!({
            "name": "m", "phase": "Running", "count": 3, "error": 2
        }))
        .unwrap();
        assert_eq!(MeasureContext::measurement_number_for(Some(&result)), 6);
    }

    #[tokio::test]
    async fn defaults_for_synchronous_providers() {
        let ctx = test_support::context(Timestamp::UNIX_EPOCH);
        let providers = Providers::new();
        let m = metric("name: m\nprovider: {web: {url: 'http://x'}}\n");
        let p = providers.for_metric(&m).unwrap();
        let measurement: Measurement = serde_json::from_value(serde_json::json!({
            "phase": "Running", "metadata": {"k": "v"}
        }))
        .unwrap();
        match p.resume(&ctx, &m, &measurement).await {
            Observed::Error { message, .. } => {
                assert!(message.contains("no asynchronous"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        match p.terminate(&ctx, &m, &measurement).await {
            Observed::Judged {
                phase,
                message,
                metadata,
                ..
            } => {
                assert_eq!(phase, AnalysisPhase::Successful);
                assert_eq!(message.as_deref(), Some("metric terminated"));
                assert_eq!(metadata["k"], "v");
            }
            other => panic!("{other:?}"),
        }
        assert!(p.garbage_collect(&ctx, &m, 10).await.is_ok());
    }
}
