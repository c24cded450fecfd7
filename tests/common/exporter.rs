//! A metrics endpoint whose values the test sets, scraped by the test environment's Prometheus
//! through `file_sd` (every second). Series are `sluice_test_value{test="<id>", series="<s>"}`;
//! NaN and infinities are allowed, and a removed series disappears from the next scrape.
//! Counters with any name and labels ([`Exporter::count`]) stand in for an app's or a proxy's
//! own metrics (the series Flagger's builtin queries read).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;

use super::{TestEnv, eventually, unique_name};

/// A running exporter registered with Prometheus; unregistered and stopped on drop.
pub struct Exporter {
    /// The `test` label value of every series this exporter serves.
    pub id: String,
    values: Arc<Mutex<BTreeMap<String, f64>>>,
    counters: Counters,
    target_file: std::path::PathBuf,
    prometheus_url: String,
    task: tokio::task::JoinHandle<()>,
}

/// Counters by their series (`name{labels}`): (value when last set, per second, since when).
type Counters = Arc<Mutex<BTreeMap<String, (f64, f64, Instant)>>>;

/// The counters' exposition lines, each at its value now.
fn counter_lines(counters: &Counters) -> String {
    let counters = counters.lock().map(|c| c.clone()).unwrap_or_default();
    counters
        .iter()
        .map(|(series, (base, per_second, since))| {
            let value = base + per_second * since.elapsed().as_secs_f64();
            format!("{series} {}\n", value.floor())
        })
        .collect()
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

impl Exporter {
    /// Starts an exporter on a free loopback port and points Prometheus at it.
    pub async fn start(env: &TestEnv, prefix: &str) -> Exporter {
        let id = unique_name(prefix);
        let values: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();
        let served = values.clone();
        let served_id = id.clone();
        let counters: Counters = Arc::default();
        let served_counters = counters.clone();
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let values = served.clone();
                let id = served_id.clone();
                let counters = served_counters.clone();
                async move {
                    let values = values.lock().map(|v| v.clone()).unwrap_or_default();
                    let mut out = String::from("# TYPE sluice_test_value gauge\n");
                    for (series, v) in values {
                        out.push_str(&format!(
                            "sluice_test_value{{test=\"{id}\",series=\"{series}\"}} {}\n",
                            format_value(v)
                        ));
                    }
                    out.push_str(&counter_lines(&counters));
                    out
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the test exporter");
        let addr = listener.local_addr().expect("exporter address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        std::fs::create_dir_all(&env.prom_targets_dir).expect("creating the file_sd directory");
        let target_file = env.prom_targets_dir.join(format!("{id}.json"));
        let tmp = env.prom_targets_dir.join(format!(".{id}.tmp"));
        let body =
            serde_json::json!([{ "targets": [addr.to_string()], "labels": { "exporter": id } }]);
        std::fs::write(&tmp, body.to_string()).expect("writing the file_sd target");
        std::fs::rename(&tmp, &target_file).expect("publishing the file_sd target");
        Exporter {
            id,
            values,
            counters,
            target_file,
            prometheus_url: env.prometheus_url.clone(),
            task,
        }
    }

    /// Sets a series' value (served from the next scrape on).
    pub fn set(&self, series: &str, value: f64) {
        if let Ok(mut v) = self.values.lock() {
            v.insert(series.to_string(), value);
        }
    }

    /// Serves `series` (a metric name with its labels, `http_requests_total{code="200"}`) as a
    /// counter growing by `per_second` from its value now (0 when new): its `rate()` is
    /// `per_second` once Prometheus has scraped it twice.
    pub fn count(&self, series: &str, per_second: f64) {
        if let Ok(mut c) = self.counters.lock() {
            let now = Instant::now();
            let base = c.get(series).map_or(0.0, |(base, rate, since)| {
                base + rate * since.elapsed().as_secs_f64()
            });
            c.insert(series.to_string(), (base, per_second, now));
        }
    }

    /// Stops serving a series.
    pub fn remove(&self, series: &str) {
        if let Ok(mut v) = self.values.lock() {
            v.remove(series);
        }
    }

    /// The PromQL selector of one series.
    pub fn selector(&self, series: &str) -> String {
        format!(
            "sluice_test_value{{test=\"{}\",series=\"{series}\"}}",
            self.id
        )
    }

    /// Waits until Prometheus answers `selector(series)` with `value` (NaN matches NaN).
    pub async fn wait_scraped(&self, series: &str, value: f64) {
        let url = format!("{}/api/v1/query", self.prometheus_url);
        let query = self.selector(series);
        let http = reqwest::Client::new();
        eventually(
            Duration::from_secs(30),
            &format!("Prometheus to scrape {query} = {value}"),
            || {
                let http = http.clone();
                let url = url.clone();
                let query = query.clone();
                async move {
                    let body: serde_json::Value = http
                        .get(&url)
                        .query(&[("query", query.as_str())])
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    let got = body["data"]["result"][0]["value"][1].as_str()?;
                    let got: f64 = match got {
                        "NaN" => f64::NAN,
                        "+Inf" => f64::INFINITY,
                        "-Inf" => f64::NEG_INFINITY,
                        s => s.parse().ok()?,
                    };
                    (got == value || (got.is_nan() && value.is_nan())).then_some(())
                }
            },
        )
        .await;
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.target_file);
        self.task.abort();
    }
}
