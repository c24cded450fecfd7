//! The job provider (upstream `metricproviders/job/job.go`): a measurement is a Kubernetes Job,
//! successful when the Job completes and failed when it fails. The Job's outcome *is* the verdict, so
//! this is the one provider that returns [`Observed::Judged`].
//!
//! Decides, as upstream:
//! - the Job's name, `<run uid>.<metric>.<n>` with `n` the measurement number (count + errors + 1),
//!   so a `run` repeated after a controller crash meets `AlreadyExists` and adopts the Job it made
//!   (after checking the Job is controlled by this run). Where upstream's name would be refused by
//!   the apiserver (longer than 63 characters, which the Job controller copies into a pod label, or a
//!   metric name that is not DNS-safe), the metric part is cleaned, cut and suffixed with its hash;
//! - the Job's metadata: the metric's `metadata.labels` / `annotations`, the label
//!   `analysisrun.argoproj.io/uid`, the annotations `analysisrun.argoproj.io/name`, `…/namespace`
//!   and `…/metric-name`, and a controller owner reference to the AnalysisRun (so deleting the run
//!   deletes its Jobs);
//! - the measurement metadata `job-name` / `job-namespace`;
//! - a Job whose pod cannot start (a container waiting with `ErrImagePull`, `ImagePullBackOff` or
//!   `InvalidImageName`: it never will on its own) is an **Inconclusive** measurement, so the
//!   Rollout pauses for a person instead of waiting forever or failing (upstream v1.10);
//! - termination: the Job is deleted and the measurement is **Inconclusive**, "metric terminated"
//!   (upstream v1.10: a Job that never finished is no evidence either way).
//!
//! Differs from upstream: upstream requeues a run on Job events through a Job informer; Sluice polls
//! an in-flight Job every [`RESUME_AFTER`] (a GET per running Job every ten seconds is cheap, and
//! needs no informer). Deletion uses background propagation (upstream: foreground), so a delete
//! returns at once and the garbage collector removes the pods. Garbage collection keeps the newest
//! Jobs *per metric* (upstream counts every metric of the run together). Only conditions with status
//! `True` count (Kubernetes 1.31+ also reports `SuccessCriteriaMet` / `FailureTarget` first).
//!
//! Must never: judge anything but the Job's own outcome, or create a Job for a run without a uid (it
//! could not be owned, so nothing would ever delete it).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use super::{MeasureContext, Provider, ProviderError};
use crate::api::argo::analysis::{Measurement, Metric};
use crate::engine::AnalysisPhase;
use crate::engine::analysis::Observed;
use crate::engine::hash::fnv32a;

/// Measurement metadata key naming the Job (upstream `JobNameKey`).
pub const JOB_NAME_KEY: &str = "job-name";
/// Measurement metadata key naming the Job's namespace (upstream `JobNamespaceKey`).
pub const JOB_NAMESPACE_KEY: &str = "job-namespace";
/// Job label holding the AnalysisRun's uid (upstream `AnalysisRunUIDLabelKey`).
pub const RUN_UID_LABEL: &str = "analysisrun.argoproj.io/uid";
/// Job annotation holding the AnalysisRun's name.
pub const RUN_NAME_ANNOTATION: &str = "analysisrun.argoproj.io/name";
/// Job annotation holding the AnalysisRun's namespace.
pub const RUN_NAMESPACE_ANNOTATION: &str = "analysisrun.argoproj.io/namespace";
/// Job annotation holding the metric's name.
pub const METRIC_NAME_ANNOTATION: &str = "analysisrun.argoproj.io/metric-name";
/// How long to wait before looking at a running Job again.
pub const RESUME_AFTER: Duration = Duration::from_secs(10);
/// Longest Job name: the Job controller copies it into the `batch.kubernetes.io/job-name` pod label.
pub const MAX_JOB_NAME_LEN: usize = 63;

/// Runs Jobs as measurements.
#[derive(Debug, Default, Clone, Copy)]
pub struct JobProvider;

/// The run a Job belongs to.
#[derive(Clone, Copy, Debug)]
pub struct JobOwner<'a> {
    /// The run's namespace (the Job is created there).
    pub namespace: &'a str,
    /// The run's name.
    pub run_name: &'a str,
    /// The run's uid.
    pub run_uid: &'a str,
}

impl<'a> From<&'a MeasureContext> for JobOwner<'a> {
    fn from(ctx: &'a MeasureContext) -> Self {
        JobOwner {
            namespace: &ctx.namespace,
            run_name: &ctx.run_name,
            run_uid: &ctx.run_uid,
        }
    }
}

/// The Job name for a measurement: upstream's `<run uid>.<metric>.<n>` when the apiserver accepts it,
/// otherwise the same shape with the metric part made DNS-safe, cut to fit and suffixed with the
/// FNV-32a hash of the metric name (so two long names with a common start stay distinct).
pub fn job_name(run_uid: &str, metric_name: &str, number: u64) -> String {
    let upstream = format!("{run_uid}.{metric_name}.{number}");
    if upstream.len() <= MAX_JOB_NAME_LEN && is_dns_subdomain(&upstream) {
        return upstream;
    }
    let hash = format!("{:08x}", fnv32a(metric_name.as_bytes()));
    let suffix = number.to_string();
    let mut prefix = dns_label(run_uid);
    // Two dots, a dash before the hash.
    let fixed = hash.len() + suffix.len() + 3;
    if prefix.is_empty() || prefix.len() + fixed > MAX_JOB_NAME_LEN {
        // Not a real uid (those are 36 characters); keep the name bounded all the same.
        prefix = format!("{:08x}", fnv32a(run_uid.as_bytes()));
    }
    let budget = MAX_JOB_NAME_LEN.saturating_sub(prefix.len() + fixed);
    let metric_part = dns_label(metric_name);
    let metric_part = metric_part
        .get(..budget.min(metric_part.len()))
        .unwrap_or_default()
        .trim_end_matches('-');
    if metric_part.is_empty() {
        format!("{prefix}.{hash}.{suffix}")
    } else {
        format!("{prefix}.{metric_part}-{hash}.{suffix}")
    }
}

/// Lower-case, every character outside `[a-z0-9-]` replaced by `-`, no leading or trailing `-`.
fn dns_label(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    mapped.trim_matches('-').to_string()
}

/// Whether `name` is a DNS-1123 subdomain (what the apiserver requires of object names).
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
                && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        })
}

/// The Job for measurement `number` of `metric` (pure: no cluster involved).
pub fn build_job(owner: JobOwner<'_>, metric: &Metric, number: u64) -> Result<Job, ProviderError> {
    let spec = metric.provider.job.as_ref().ok_or_else(|| {
        ProviderError::Config(format!("metric {:?} has no job provider", metric.name))
    })?;
    if owner.run_uid.is_empty() {
        return Err(ProviderError::Config(
            "the AnalysisRun has no uid yet, so its Job could not be owned by it".into(),
        ));
    }
    let mut labels = spec
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(RUN_UID_LABEL.into(), owner.run_uid.into());
    let mut annotations = spec
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    annotations.insert(RUN_NAME_ANNOTATION.into(), owner.run_name.into());
    annotations.insert(RUN_NAMESPACE_ANNOTATION.into(), owner.namespace.into());
    annotations.insert(METRIC_NAME_ANNOTATION.into(), metric.name.clone());
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(owner.run_uid, &metric.name, number)),
            namespace: Some(owner.namespace.into()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "argoproj.io/v1alpha1".into(),
                kind: "AnalysisRun".into(),
                name: owner.run_name.into(),
                uid: owner.run_uid.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(spec.spec.clone()),
        status: None,
    })
}

/// The verdict a Job's conditions give, if it has finished: Complete → Successful, Failed → Failed
/// with the condition's reason and message.
pub fn judge_job(job: &Job) -> Option<(AnalysisPhase, String)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let holding = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    if let Some(failed) = holding("Failed") {
        let reason = failed.reason.as_deref().unwrap_or("Failed");
        let detail = failed.message.as_deref().unwrap_or("no message");
        return Some((
            AnalysisPhase::Failed,
            format!("job failed: {reason}: {detail}"),
        ));
    }
    holding("Complete").map(|_| (AnalysisPhase::Successful, "job completed".to_string()))
}

/// Container waiting reasons that never clear on their own (upstream `terminalWaitingReasons`).
const TERMINAL_WAITING_REASONS: [&str; 3] =
    ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];

/// Why a Job's pods can never start, if one of its (init) containers waits for a reason that does
/// not clear on its own: `pod <name>, container <name>: <reason>: <message>`.
pub fn stuck_pod(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|pod| {
        let status = pod.status.as_ref()?;
        let containers = status.init_container_statuses.iter().flatten();
        containers
            .chain(status.container_statuses.iter().flatten())
            .find_map(|c| {
                let waiting = c.state.as_ref()?.waiting.as_ref()?;
                let reason = waiting.reason.as_deref()?;
                TERMINAL_WAITING_REASONS.contains(&reason).then(|| {
                    format!(
                        "pod {}, container {} cannot start: {reason}: {}",
                        pod.metadata.name.as_deref().unwrap_or_default(),
                        c.name,
                        waiting.message.as_deref().unwrap_or("no message")
                    )
                })
            })
    })
}

/// A Job measurement stopped without a verdict: Inconclusive, with `message`.
fn inconclusive(metadata: BTreeMap<String, String>, message: String) -> Observed {
    Observed::Judged {
        phase: AnalysisPhase::Inconclusive,
        value: None,
        message: Some(message),
        metadata,
    }
}

/// The Job's pods (by the `controller-uid` label the Job controller puts on them); none when the
/// Job has no uid yet. A failed list is no verdict: the next look tries again.
async fn job_pods(ctx: &MeasureContext, namespace: &str, job: &Job) -> Vec<Pod> {
    let Some(uid) = job.metadata.uid.as_deref() else {
        return Vec::new();
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let params = ListParams::default().labels(&format!("batch.kubernetes.io/controller-uid={uid}"));
    api.list(&params).await.map(|l| l.items).unwrap_or_default()
}

/// Names of this metric's Jobs to delete so that the newest `keep` remain: oldest first by creation
/// time, then by measurement number.
pub fn jobs_to_collect(jobs: &[Job], metric_name: &str, keep: usize) -> Vec<String> {
    let mut mine: Vec<(Option<k8s_openapi::jiff::Timestamp>, u64, String)> = jobs
        .iter()
        .filter(|j| {
            j.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(METRIC_NAME_ANNOTATION))
                .is_some_and(|m| m == metric_name)
        })
        .filter_map(|j| {
            let name = j.metadata.name.clone()?;
            let number = name
                .rsplit('.')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Some((
                j.metadata.creation_timestamp.as_ref().map(|t| t.0),
                number,
                name,
            ))
        })
        .collect();
    mine.sort();
    let excess = mine.len().saturating_sub(keep);
    mine.into_iter()
        .take(excess)
        .map(|(_, _, name)| name)
        .collect()
}

/// The apiserver's own words for an API error; the client's for anything else.
fn kube_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_not_found())
}

/// The Job a measurement refers to: `(namespace, name)`. The status is writable by whoever may
/// patch the run, so a reference outside the run's namespace is refused, never followed.
fn job_ref(ctx: &MeasureContext, measurement: &Measurement) -> Result<(String, String), Observed> {
    let name = measurement
        .metadata
        .get(JOB_NAME_KEY)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Observed::error("job metadata reference missing"))?;
    let namespace = measurement
        .metadata
        .get(JOB_NAMESPACE_KEY)
        .filter(|n| !n.is_empty())
        .unwrap_or(&ctx.namespace);
    if *namespace != ctx.namespace {
        return Err(Observed::error(format!(
            "the measurement names job {namespace}/{name}, outside the AnalysisRun's namespace {}: not read",
            ctx.namespace
        )));
    }
    Ok((namespace.clone(), name.clone()))
}

/// The error for a Job the status names that this run did not create (its controller owner
/// reference is another object): it is neither read nor deleted.
fn not_ours(namespace: &str, name: &str) -> Observed {
    Observed::Error {
        message: format!(
            "job {namespace}/{name} named in the measurement is not controlled by this AnalysisRun: not read or deleted"
        ),
        query: None,
        metadata: job_metadata(namespace, name),
    }
}

/// A Job stopped by the run's termination never finished: Inconclusive (upstream v1.10).
fn terminated(namespace: &str, name: &str) -> Observed {
    inconclusive(job_metadata(namespace, name), "metric terminated".into())
}

fn job_metadata(namespace: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (JOB_NAME_KEY.to_string(), name.to_string()),
        (JOB_NAMESPACE_KEY.to_string(), namespace.to_string()),
    ])
}

fn controlled_by(job: &Job, uid: &str) -> bool {
    job.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

async fn delete_job(api: &Api<Job>, name: &str) -> Result<(), kube::Error> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl Provider for JobProvider {
    fn name(&self) -> &'static str {
        "job"
    }

    async fn run(&self, ctx: &MeasureContext, metric: &Metric, _masked: &Metric) -> Observed {
        let job = match build_job(JobOwner::from(ctx), metric, ctx.measurement_number) {
            Ok(job) => job,
            Err(e) => return Observed::error(e.to_string()),
        };
        let name = job.metadata.name.clone().unwrap_or_default();
        let namespace = ctx.namespace.as_str();
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
        let error = |message: String| Observed::Error {
            message,
            query: None,
            metadata: job_metadata(namespace, &name),
        };
        let message = match api.create(&PostParams::default(), &job).await {
            Ok(_) => format!("job {namespace}/{name} created"),
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                match api.get(&name).await {
                    Ok(existing) if controlled_by(&existing, &ctx.run_uid) => {
                        format!("job {namespace}/{name} already existed and was adopted")
                    }
                    Ok(_) => {
                        return error(format!(
                            "job {namespace}/{name} already exists and is not controlled by this AnalysisRun"
                        ));
                    }
                    Err(e) => {
                        return error(format!(
                            "job {namespace}/{name} already exists but could not be read: {}",
                            kube_message(&e)
                        ));
                    }
                }
            }
            Err(e) => {
                return error(format!(
                    "creating job {namespace}/{name} failed: {}",
                    kube_message(&e)
                ));
            }
        };
        tracing::info!(job = %name, namespace, run = %ctx.run_name, metric = %metric.name, "{message}");
        Observed::InProgress {
            metadata: job_metadata(namespace, &name),
            message: Some(message),
            resume_after: RESUME_AFTER,
        }
    }

    async fn resume(
        &self,
        ctx: &MeasureContext,
        _metric: &Metric,
        measurement: &Measurement,
    ) -> Observed {
        let (namespace, name) = match job_ref(ctx, measurement) {
            Ok(r) => r,
            Err(observed) => return observed,
        };
        let metadata = job_metadata(&namespace, &name);
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
        let job = match api.get_opt(&name).await {
            Ok(Some(job)) if !controlled_by(&job, &ctx.run_uid) => {
                return not_ours(&namespace, &name);
            }
            Ok(Some(job)) => job,
            Ok(None) => {
                return Observed::Error {
                    message: format!("job {namespace}/{name} no longer exists"),
                    query: None,
                    metadata,
                };
            }
            Err(e) => {
                return Observed::Error {
                    message: format!(
                        "reading job {namespace}/{name} failed: {}",
                        kube_message(&e)
                    ),
                    query: None,
                    metadata,
                };
            }
        };
        match judge_job(&job) {
            Some((phase, message)) => Observed::Judged {
                phase,
                value: None,
                message: Some(format!("{namespace}/{name}: {message}")),
                metadata,
            },
            None => match stuck_pod(&job_pods(ctx, &namespace, &job).await) {
                Some(why) => inconclusive(metadata, format!("job {namespace}/{name}: {why}")),
                None => Observed::InProgress {
                    metadata,
                    message: Some(format!("job {namespace}/{name} is running")),
                    resume_after: RESUME_AFTER,
                },
            },
        }
    }

    async fn terminate(
        &self,
        ctx: &MeasureContext,
        _metric: &Metric,
        measurement: &Measurement,
    ) -> Observed {
        let (namespace, name) = match job_ref(ctx, measurement) {
            Ok(r) => r,
            Err(observed) => return observed,
        };
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
        match api.get_opt(&name).await {
            Ok(Some(job)) if !controlled_by(&job, &ctx.run_uid) => {
                return not_ours(&namespace, &name);
            }
            Ok(None) => return terminated(&namespace, &name),
            Ok(Some(_)) => {}
            Err(e) => {
                return Observed::Error {
                    message: format!(
                        "reading job {namespace}/{name} before deleting it failed: {}",
                        kube_message(&e)
                    ),
                    query: None,
                    metadata: job_metadata(&namespace, &name),
                };
            }
        }
        match delete_job(&api, &name).await {
            Ok(()) => terminated(&namespace, &name),
            Err(e) => Observed::Error {
                message: format!(
                    "deleting job {namespace}/{name} failed: {}",
                    kube_message(&e)
                ),
                query: None,
                metadata: job_metadata(&namespace, &name),
            },
        }
    }

    async fn garbage_collect(
        &self,
        ctx: &MeasureContext,
        metric: &Metric,
        keep: usize,
    ) -> Result<(), ProviderError> {
        if ctx.run_uid.is_empty() {
            return Ok(());
        }
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
        let selector = format!("{RUN_UID_LABEL}={}", ctx.run_uid);
        let jobs = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| ProviderError::Kube {
                action: format!(
                    "listing jobs of AnalysisRun {}/{}",
                    ctx.namespace, ctx.run_name
                ),
                source: Box::new(source),
            })?;
        // The label can be copied onto any Job: only the run's own are collected.
        let ours: Vec<Job> = jobs
            .items
            .into_iter()
            .filter(|job| controlled_by(job, &ctx.run_uid))
            .collect();
        for name in jobs_to_collect(&ours, &metric.name, keep) {
            delete_job(&api, &name)
                .await
                .map_err(|source| ProviderError::Kube {
                    action: format!("deleting job {}/{name}", ctx.namespace),
                    source: Box::new(source),
                })?;
            tracing::info!(job = %name, namespace = %ctx.namespace, "job garbage collected");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::analysis::test_support::metric;

    const UID: &str = "8f0d5a4e-63c1-4c2b-9f6e-2a1b3c4d5e6f";

    #[test]
    fn names_follow_upstream_when_valid() {
        assert_eq!(
            job_name(UID, "smoke-test", 3),
            format!("{UID}.smoke-test.3")
        );
    }

    #[test]
    fn invalid_or_long_names_are_made_safe_and_distinct() {
        let long_a = job_name(UID, "integration-tests-against-the-canary-service", 1);
        let long_b = job_name(UID, "integration-tests-against-the-canary-service-v2", 1);
        for name in [&long_a, &long_b] {
            assert!(name.len() <= MAX_JOB_NAME_LEN, "{name}");
            assert!(is_dns_subdomain(name), "{name}");
            assert!(name.starts_with(&format!("{UID}.integration")), "{name}");
            assert!(name.ends_with(".1"), "{name}");
        }
        assert_ne!(long_a, long_b);

        let odd = job_name(UID, "Smoke_Test", 12);
        assert!(is_dns_subdomain(&odd), "{odd}");
        assert!(odd.starts_with(&format!("{UID}.smoke-test-")), "{odd}");
        assert_eq!(odd, job_name(UID, "Smoke_Test", 12), "stable across calls");

        let symbols = job_name(UID, "___", 1);
        assert!(is_dns_subdomain(&symbols), "{symbols}");
        let odd_uid = job_name(&"x".repeat(80), "m", 1);
        assert!(
            odd_uid.len() <= MAX_JOB_NAME_LEN && is_dns_subdomain(&odd_uid),
            "{odd_uid}"
        );
    }

    fn job_metric() -> Metric {
        metric(
            r#"
name: smoke
provider:
  job:
    metadata:
      labels: {team: web}
      annotations: {note: hi}
    spec:
      backoffLimit: 1
      template:
        spec:
          restartPolicy: Never
          containers:
          - {name: test, image: busybox, command: [sh, -c, "exit 0"]}
"#,
        )
    }

    #[test]
    fn jobs_carry_upstream_metadata_and_an_owner() {
        let owner = JobOwner {
            namespace: "shop",
            run_name: "guestbook-1",
            run_uid: UID,
        };
        let job = build_job(owner, &job_metric(), 2).unwrap();
        let meta = &job.metadata;
        assert_eq!(
            meta.name.as_deref(),
            Some(format!("{UID}.smoke.2").as_str())
        );
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "web");
        assert_eq!(labels[RUN_UID_LABEL], UID);
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations["note"], "hi");
        assert_eq!(annotations[RUN_NAME_ANNOTATION], "guestbook-1");
        assert_eq!(annotations[RUN_NAMESPACE_ANNOTATION], "shop");
        assert_eq!(annotations[METRIC_NAME_ANNOTATION], "smoke");
        let owner_ref = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner_ref.api_version, "argoproj.io/v1alpha1");
        assert_eq!(owner_ref.kind, "AnalysisRun");
        assert_eq!(owner_ref.name, "guestbook-1");
        assert_eq!(owner_ref.uid, UID);
        assert_eq!(owner_ref.controller, Some(true));
        assert_eq!(owner_ref.block_owner_deletion, Some(true));
        assert_eq!(job.spec.as_ref().unwrap().backoff_limit, Some(1));
        assert!(controlled_by(&job, UID));
        assert!(!controlled_by(&job, "other"));

        let no_uid = JobOwner {
            run_uid: "",
            ..owner
        };
        assert!(build_job(no_uid, &job_metric(), 1).is_err());
        let not_job = metric("name: m\nprovider: {web: {url: 'http://x'}}\n");
        assert!(build_job(owner, &not_job, 1).is_err());
    }

    fn with_conditions(conditions: &[(&str, &str)]) -> Job {
        Job {
            status: Some(JobStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(t, s)| JobCondition {
                            type_: (*t).into(),
                            status: (*s).into(),
                            reason: Some("BackoffLimitExceeded".into()),
                            message: Some("Job has reached the specified backoff limit".into()),
                            ..JobCondition::default()
                        })
                        .collect(),
                ),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    #[test]
    fn verdicts_come_from_true_conditions() {
        assert_eq!(judge_job(&Job::default()), None);
        assert_eq!(
            judge_job(&with_conditions(&[("FailureTarget", "True")])),
            None
        );
        assert_eq!(judge_job(&with_conditions(&[("Complete", "False")])), None);
        assert_eq!(
            judge_job(&with_conditions(&[
                ("SuccessCriteriaMet", "True"),
                ("Complete", "True")
            ]))
            .map(|(p, _)| p),
            Some(AnalysisPhase::Successful)
        );
        let (phase, message) = judge_job(&with_conditions(&[("Failed", "True")])).unwrap();
        assert_eq!(phase, AnalysisPhase::Failed);
        assert_eq!(
            message,
            "job failed: BackoffLimitExceeded: Job has reached the specified backoff limit"
        );
    }

    #[test]
    fn garbage_collection_keeps_the_newest_per_metric() {
        let job = |name: &str, metric: &str, second: i64| Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(BTreeMap::from([(
                    METRIC_NAME_ANNOTATION.to_string(),
                    metric.to_string(),
                )])),
                creation_timestamp: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(second).unwrap(),
                )),
                ..ObjectMeta::default()
            },
            ..Job::default()
        };
        let jobs = vec![
            job("u.a.3", "a", 30),
            job("u.a.1", "a", 10),
            job("u.b.1", "b", 5),
            job("u.a.2", "a", 10),
            job("u.a.10", "a", 40),
        ];
        assert_eq!(jobs_to_collect(&jobs, "a", 2), vec!["u.a.1", "u.a.2"]);
        assert_eq!(jobs_to_collect(&jobs, "a", 10), Vec::<String>::new());
        assert_eq!(jobs_to_collect(&jobs, "b", 0), vec!["u.b.1"]);
    }
}
