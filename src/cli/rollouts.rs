//! The kubectl-plugin verbs on Rollouts: `get`, `list`, `status` read; `promote`, `abort`,
//! `retry`, `pause`, `resume`, `undo`, `restart` and `set image` write.
//!
//! Thin over the API. The intent verbs send exactly the merge patches Argo's kubectl plugin sends
//! ([`crate::engine::intent::patches`]), so the controller cannot tell the two apart; `undo`,
//! `restart` and `set image` send the plugin's spec patches.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};

use crate::api::argo::analysis::AnalysisRun;
use crate::api::argo::rollout::{
    POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION, Rollout, RolloutPhase,
};
use crate::engine::intent::{self, Intent};

/// Why a verb failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the kubeconfig: {0}")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    #[error("connecting to the cluster: {0}")]
    Client(#[source] kube::Error),
    #[error("rollout {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("{what} {namespace}/{name}: {source}")]
    Api {
        what: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("{0}")]
    Usage(String),
}

/// Where the verbs act: kubectl's `-n`, `--kubeconfig` and `--context`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Target {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Path of the kubeconfig (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Kubeconfig context.
    #[arg(long)]
    pub context: Option<String>,
}

/// A connected client and the namespace to act in.
pub struct Session {
    pub client: Client,
    pub namespace: String,
}

impl Target {
    /// Connects as kubectl would.
    pub async fn connect(&self) -> Result<Session, Error> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(Error::Kubeconfig)?;
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(Error::Kubeconfig)?
            }
            None if self.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(Error::Kubeconfig)?,
            None => Config::infer()
                .await
                .map_err(|e| Error::Usage(format!("loading the kubeconfig: {e}")))?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(Error::Client)?;
        Ok(Session { client, namespace })
    }
}

impl Session {
    fn rollouts(&self) -> Api<Rollout> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn api_error(&self, what: &'static str, name: &str, source: kube::Error) -> Error {
        match source {
            kube::Error::Api(e) if e.code == 404 => Error::NotFound {
                namespace: self.namespace.clone(),
                name: name.to_string(),
            },
            source => Error::Api {
                what,
                namespace: self.namespace.clone(),
                name: name.to_string(),
                source,
            },
        }
    }

    /// Reads one Rollout.
    pub async fn rollout(&self, name: &str) -> Result<Rollout, Error> {
        self.rollouts()
            .get(name)
            .await
            .map_err(|e| self.api_error("reading rollout", name, e))
    }

    async fn merge_spec(&self, name: &str, patch: &Value) -> Result<(), Error> {
        self.rollouts()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| ())
            .map_err(|e| self.api_error("patching rollout", name, e))
    }

    async fn merge_status(&self, name: &str, patch: &Value) -> Result<(), Error> {
        self.rollouts()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| ())
            .map_err(|e| self.api_error("patching rollout status", name, e))
    }

    /// Sends an intent's patches, as Argo's plugin does: the spec first, then `/status`.
    pub async fn intent(&self, name: &str, intent: Intent) -> Result<String, Error> {
        let rollout = self.rollout(name).await?;
        let (spec, status) = intent::patches(intent, &rollout);
        if let Some(patch) = &spec {
            self.merge_spec(name, patch).await?;
        }
        if let Some(patch) = &status {
            self.merge_status(name, patch).await?;
        }
        let verb = match intent {
            Intent::Promote | Intent::SkipCurrentStep | Intent::SkipAllSteps => "promoted",
            Intent::PromoteFull => "fully promoted",
            Intent::Abort => "aborted",
            Intent::Retry => "retried",
            Intent::Pause => "paused",
            Intent::Resume => "resumed",
        };
        Ok(format!("rollout '{name}' {verb}"))
    }

    /// `restart`: `spec.restartAt = now`.
    pub async fn restart(&self, name: &str) -> Result<String, Error> {
        self.rollout(name).await?;
        let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::now());
        self.merge_spec(name, &json!({"spec": {"restartAt": now.to_string()}}))
            .await?;
        Ok(format!("rollout '{name}' restarts"))
    }

    /// `set image CONTAINER=IMAGE` (`*=IMAGE` for every container).
    pub async fn set_image(&self, name: &str, assignment: &str) -> Result<String, Error> {
        let Some((container, image)) = assignment.split_once('=') else {
            return Err(Error::Usage(format!(
                "expected CONTAINER=IMAGE, got {assignment:?}"
            )));
        };
        let rollout = self.rollout(name).await?;
        let Some(pod) = rollout.spec.template.as_ref().and_then(|t| t.spec.as_ref()) else {
            return Err(Error::Usage(format!(
                "rollout '{name}' has no pod template (a workloadRef rollout: set the image on the Deployment)"
            )));
        };
        let mut ops = Vec::new();
        for (list, containers) in [
            ("containers", Some(&pod.containers)),
            ("initContainers", pod.init_containers.as_ref()),
        ] {
            for (i, c) in containers.into_iter().flatten().enumerate() {
                if container == "*" || c.name == container {
                    ops.push(json!({"op": "replace", "path": format!("/spec/template/spec/{list}/{i}/image"), "value": image}));
                }
            }
        }
        if ops.is_empty() {
            return Err(Error::Usage(format!(
                "rollout '{name}' has no container named {container:?}"
            )));
        }
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
            .map_err(|e| Error::Usage(format!("building the patch: {e}")))?;
        self.rollouts()
            .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map_err(|e| self.api_error("patching rollout", name, e))?;
        Ok(format!("rollout '{name}' image updated"))
    }

    /// `undo [--to-revision N]`: the pod template of revision N (default: the one before the
    /// current) becomes the Rollout's template again.
    pub async fn undo(&self, name: &str, to_revision: Option<i64>) -> Result<String, Error> {
        let rollout = self.rollout(name).await?;
        let sets = self.replica_sets(&rollout).await?;
        let current = rollout
            .status
            .as_ref()
            .map(|s| s.current_pod_hash.clone())
            .unwrap_or_default();
        let current_revision = sets
            .iter()
            .find(|rs| hash_of(rs) == current)
            .map(revision_of)
            .unwrap_or(i64::MAX);
        let target = match to_revision {
            Some(n) if n > 0 => sets.iter().find(|rs| revision_of(rs) == n),
            _ => sets
                .iter()
                .filter(|rs| revision_of(rs) < current_revision)
                .max_by_key(|rs| revision_of(rs)),
        };
        let Some(target) = target else {
            return Err(Error::Usage(match to_revision {
                Some(n) if n > 0 => format!("rollout '{name}' has no revision {n}"),
                _ => format!("rollout '{name}' has no previous revision"),
            }));
        };
        let mut template = serde_json::to_value(
            target
                .spec
                .as_ref()
                .and_then(|s| s.template.clone())
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        // The hash label is the ReplicaSet's, not the template's.
        if let Some(labels) = template
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            labels.remove(POD_TEMPLATE_HASH_LABEL);
        }
        let patch: json_patch::Patch = serde_json::from_value(
            json!([{"op": "replace", "path": "/spec/template", "value": template}]),
        )
        .map_err(|e| Error::Usage(format!("building the patch: {e}")))?;
        self.rollouts()
            .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map_err(|e| self.api_error("patching rollout", name, e))?;
        Ok(format!(
            "rollout '{name}' rolled back to revision {}",
            revision_of(target)
        ))
    }

    async fn replica_sets(&self, rollout: &Rollout) -> Result<Vec<ReplicaSet>, Error> {
        let uid = rollout.uid().unwrap_or_default();
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = api
            .list(&ListParams::default().labels(POD_TEMPLATE_HASH_LABEL))
            .await
            .map_err(|e| self.api_error("listing ReplicaSets of", &rollout.name_any(), e))?;
        Ok(list
            .items
            .into_iter()
            .filter(|rs| rs.owner_references().iter().any(|o| o.uid == uid))
            .collect())
    }

    async fn analysis_runs(&self, rollout: &Rollout) -> Result<Vec<AnalysisRun>, Error> {
        let uid = rollout.uid().unwrap_or_default();
        let api: Api<AnalysisRun> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| self.api_error("listing AnalysisRuns of", &rollout.name_any(), e))?;
        Ok(list
            .items
            .into_iter()
            .filter(|r| r.owner_references().iter().any(|o| o.uid == uid))
            .collect())
    }

    async fn pods(&self) -> Result<Vec<Pod>, Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        api.list(&ListParams::default().labels(POD_TEMPLATE_HASH_LABEL))
            .await
            .map(|l| l.items)
            .map_err(|e| self.api_error("listing pods in", "", e))
    }

    /// `get rollout NAME`: the tree.
    pub async fn get(&self, name: &str) -> Result<String, Error> {
        let rollout = self.rollout(name).await?;
        let sets = self.replica_sets(&rollout).await?;
        let runs = self.analysis_runs(&rollout).await?;
        let pods = self.pods().await?;
        Ok(render_tree(&rollout, &sets, &pods, &runs, Timestamp::now()))
    }

    /// `list rollouts`: one line each.
    pub async fn list(&self, all_namespaces: bool) -> Result<String, Error> {
        let api: Api<Rollout> = if all_namespaces {
            Api::all(self.client.clone())
        } else {
            self.rollouts()
        };
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| self.api_error("listing rollouts in", "", e))?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}{:<30} {:<9} {:<12} {:<6} {:<10} {:<8} {:<8} {:<11} AVAILABLE",
            if all_namespaces { "NAMESPACE  " } else { "" },
            "NAME",
            "STRATEGY",
            "STATUS",
            "STEP",
            "SET-WEIGHT",
            "READY",
            "DESIRED",
            "UP-TO-DATE"
        );
        for r in &list.items {
            let status = r.status.clone().unwrap_or_default();
            let steps = r
                .spec
                .strategy
                .canary
                .as_ref()
                .map_or(0, |c| c.steps().len());
            let step = status
                .current_step_index
                .map_or("-".into(), |i| format!("{i}/{steps}"));
            let weight = status
                .canary
                .weights
                .as_ref()
                .map_or("-".into(), |w| w.canary.weight.to_string());
            let _ = writeln!(
                out,
                "{}{:<30} {:<9} {:<12} {:<6} {:<10} {:<8} {:<8} {:<11} {}",
                if all_namespaces {
                    format!("{:<10} ", r.namespace().unwrap_or_default())
                } else {
                    String::new()
                },
                r.name_any(),
                if r.spec.strategy.blue_green.is_some() {
                    "BlueGreen"
                } else {
                    "Canary"
                },
                phase_name(status.phase),
                step,
                weight,
                format!("{}/{}", status.ready_replicas, r.spec.replicas()),
                r.spec.replicas(),
                status.updated_replicas,
                status.available_replicas,
            );
        }
        Ok(out)
    }

    /// `status NAME`: waits until the Rollout is Healthy (0) or Degraded (1), printing each new
    /// phase; gives up after `timeout` (2). `None` waits forever.
    pub async fn status(
        &self,
        name: &str,
        timeout: Option<Duration>,
        mut say: impl FnMut(&str),
    ) -> Result<Outcome, Error> {
        let started = Instant::now();
        let mut last = String::new();
        loop {
            let rollout = self.rollout(name).await?;
            let generation = rollout.metadata.generation.unwrap_or_default();
            let status = rollout.status.clone().unwrap_or_default();
            // A phase computed from an older spec says nothing about this one.
            let observed = status.observed_generation == generation.to_string();
            let phase = status.phase.filter(|_| observed);
            let line = match phase {
                Some(p) if status.message.is_empty() => phase_name(Some(p)),
                Some(p) => format!("{} - {}", phase_name(Some(p)), status.message),
                None => "Progressing - waiting for the controller to observe the spec".into(),
            };
            if line != last {
                say(&line);
                last = line;
            }
            match phase {
                Some(RolloutPhase::Healthy) => return Ok(Outcome::Healthy),
                Some(RolloutPhase::Degraded) => return Ok(Outcome::Degraded),
                _ => {}
            }
            if timeout.is_some_and(|t| started.elapsed() >= t) {
                return Ok(Outcome::TimedOut);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// How `status` ended; the process exits with [`Outcome::code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Healthy,
    Degraded,
    TimedOut,
}

impl Outcome {
    /// 0 healthy, 1 degraded, 2 timed out.
    pub fn code(self) -> i32 {
        match self {
            Outcome::Healthy => 0,
            Outcome::Degraded => 1,
            Outcome::TimedOut => 2,
        }
    }
}

fn phase_name(phase: Option<RolloutPhase>) -> String {
    phase
        .and_then(|p| serde_json::to_value(p).ok())
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| "Unknown".into())
}

fn hash_of(rs: &ReplicaSet) -> String {
    rs.labels()
        .get(POD_TEMPLATE_HASH_LABEL)
        .cloned()
        .unwrap_or_default()
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn age(
    created: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    now: Timestamp,
) -> String {
    let Some(created) = created else {
        return "-".into();
    };
    let secs = (now.as_second() - created.0.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The `get rollout` view: summary, steps with the current one marked, then revision →
/// ReplicaSets → pods, with the AnalysisRuns of each revision and their last measurements.
pub fn render_tree(
    rollout: &Rollout,
    sets: &[ReplicaSet],
    pods: &[Pod],
    runs: &[AnalysisRun],
    now: Timestamp,
) -> String {
    let status = rollout.status.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "Name:          {}", rollout.name_any());
    let _ = writeln!(
        out,
        "Namespace:     {}",
        rollout.namespace().unwrap_or_default()
    );
    let _ = writeln!(out, "Status:        {}", phase_name(status.phase));
    if !status.message.is_empty() {
        let _ = writeln!(out, "Message:       {}", status.message);
    }
    let steps = rollout
        .spec
        .strategy
        .canary
        .as_ref()
        .map(|c| c.steps().to_vec())
        .unwrap_or_default();
    let current = status.current_step_index.unwrap_or(0);
    let _ = writeln!(
        out,
        "Strategy:      {}",
        if rollout.spec.strategy.blue_green.is_some() {
            "BlueGreen"
        } else {
            "Canary"
        }
    );
    if !steps.is_empty() {
        let _ = writeln!(out, "  Step:        {current}/{}", steps.len());
    }
    if let Some(w) = &status.canary.weights {
        let _ = writeln!(
            out,
            "  Weights:     canary {} / stable {}{}",
            w.canary.weight,
            w.stable.weight,
            if w.verified == Some(false) {
                " (not verified yet)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        out,
        "Replicas:      desired {}, current {}, updated {}, ready {}, available {}",
        rollout.spec.replicas(),
        status.replicas,
        status.updated_replicas,
        status.ready_replicas,
        status.available_replicas
    );
    if !steps.is_empty() {
        let _ = writeln!(out, "\nSteps:");
        for (i, step) in steps.iter().enumerate() {
            let i = i as i32;
            let mark = if i < current {
                "✔"
            } else if i == current && status.stable_rs != status.current_pod_hash {
                "▶"
            } else {
                " "
            };
            let value = serde_json::to_value(step).unwrap_or_default();
            let text = value
                .as_object()
                .and_then(|o| o.iter().next())
                .map(|(k, v)| match v {
                    Value::Object(m) if m.is_empty() => k.clone(),
                    v => format!("{k}: {v}"),
                })
                .unwrap_or_default();
            let _ = writeln!(out, "  {mark} {i} {text}");
        }
    }

    let _ = writeln!(
        out,
        "\n{:<56} {:<12} {:<14} {:<5} INFO",
        "NAME", "KIND", "STATUS", "AGE"
    );
    let _ = writeln!(
        out,
        "⟳ {:<54} {:<12} {:<14} {:<5}",
        rollout.name_any(),
        "Rollout",
        phase_name(status.phase),
        age(rollout.metadata.creation_timestamp.as_ref(), now)
    );
    let mut by_revision: BTreeMap<i64, (Vec<&ReplicaSet>, Vec<&AnalysisRun>)> = BTreeMap::new();
    for rs in sets {
        by_revision.entry(revision_of(rs)).or_default().0.push(rs);
    }
    for run in runs {
        let revision = run
            .annotations()
            .get(REVISION_ANNOTATION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        by_revision.entry(revision).or_default().1.push(run);
    }
    let revisions: Vec<_> = by_revision.iter().rev().collect();
    for (ri, (revision, (sets, runs))) in revisions.iter().enumerate() {
        let last_rev = ri + 1 == revisions.len();
        let (branch, indent) = if last_rev {
            ("└──", "   ")
        } else {
            ("├──", "│  ")
        };
        let _ = writeln!(out, "{branch}# revision:{revision}");
        let children = sets.len() + runs.len();
        let mut n = 0;
        for rs in sets.iter() {
            n += 1;
            let last = n == children;
            let (b, ind) = if last {
                ("└──", "   ")
            } else {
                ("├──", "│  ")
            };
            let hash = hash_of(rs);
            let mut info = Vec::new();
            if hash == status.stable_rs {
                info.push("stable");
            }
            if hash == status.current_pod_hash && hash != status.stable_rs {
                info.push("canary");
            }
            let rs_status = rs.status.clone().unwrap_or_default();
            let desired = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let state = if desired == 0 {
                "• ScaledDown".to_string()
            } else if rs_status.available_replicas.unwrap_or(0) >= desired {
                "✔ Healthy".to_string()
            } else {
                "◌ Progressing".to_string()
            };
            let _ = writeln!(
                out,
                "{indent}{b}⧉ {:<48} {:<12} {:<14} {:<5} {}",
                rs.name_any(),
                "ReplicaSet",
                state,
                age(rs.metadata.creation_timestamp.as_ref(), now),
                info.join(",")
            );
            let mine: Vec<&Pod> = pods
                .iter()
                .filter(|p| p.labels().get(POD_TEMPLATE_HASH_LABEL) == Some(&hash))
                .collect();
            for (pi, pod) in mine.iter().enumerate() {
                let pb = if pi + 1 == mine.len() {
                    "└──"
                } else {
                    "├──"
                };
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "Pending".into());
                let _ = writeln!(
                    out,
                    "{indent}{ind}{pb}□ {:<42} {:<12} {:<14} {:<5} {}",
                    pod.name_any(),
                    "Pod",
                    format!("{} {phase}", if ready { "✔" } else { "◌" }),
                    age(pod.metadata.creation_timestamp.as_ref(), now),
                    if ready { "ready" } else { "not ready" }
                );
            }
        }
        for run in runs.iter() {
            n += 1;
            let last = n == children;
            let (b, ind) = if last {
                ("└──", "   ")
            } else {
                ("├──", "│  ")
            };
            let run_status = run.status.clone().unwrap_or_default();
            let phase = run_status
                .phase
                .and_then(|p| serde_json::to_value(p).ok())
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| "Pending".into());
            let mark = match phase.as_str() {
                "Successful" => "✔",
                "Failed" | "Error" => "✖",
                "Inconclusive" => "⚠",
                _ => "◌",
            };
            let _ = writeln!(
                out,
                "{indent}{b}α {:<48} {:<12} {:<14} {:<5}",
                run.name_any(),
                "AnalysisRun",
                format!("{mark} {phase}"),
                age(run.metadata.creation_timestamp.as_ref(), now)
            );
            let results = &run_status.metric_results;
            for (mi, metric) in results.iter().enumerate() {
                let mb = if mi + 1 == results.len() {
                    "└──"
                } else {
                    "├──"
                };
                let last_value = metric
                    .measurements
                    .last()
                    .map(|m| m.value.clone().unwrap_or_else(|| "-".into()))
                    .unwrap_or_else(|| "-".into());
                let metric_phase = serde_json::to_value(metric.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{indent}{ind}{mb}metric {}: {metric_phase}, last value {last_value} ({} measured, {} successful, {} failed)",
                    metric.name, metric.count, metric.successful, metric.failed
                );
            }
        }
    }
    out
}
