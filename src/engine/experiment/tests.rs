//! The experiment engine, pass by pass: each test plans, applies the plan's status as the
//! controller would, changes the observations, and plans again.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::api::argo::experiment::{Experiment, TemplateStatusCode};

fn experiment(yaml: &str) -> Experiment {
    serde_yaml::from_str(yaml).expect("a valid Experiment")
}

const TWO_TEMPLATES: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: Experiment
metadata: {name: exp}
spec:
  duration: 60s
  progressDeadlineSeconds: 30
  templates:
  - name: baseline
    replicas: 2
    selector: {matchLabels: {app: web}}
    template:
      metadata: {labels: {app: web}}
      spec: {containers: [{name: web, image: "web:1", ports: [{containerPort: 8080}]}]}
    service: {}
  - name: canary
    selector: {matchLabels: {app: web}}
    template:
      metadata: {labels: {app: web}}
      spec: {containers: [{name: web, image: "web:2"}]}
"#;

fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

struct World {
    exp: Experiment,
    observed: Observed,
}

impl World {
    fn new(yaml: &str) -> Self {
        Self {
            exp: experiment(yaml),
            observed: Observed {
                now: t0(),
                replica_sets: BTreeMap::new(),
                services: BTreeMap::new(),
                analysis_runs: BTreeMap::new(),
            },
        }
    }

    /// Plan once and keep the status, as the controller writes it.
    fn plan(&mut self) -> Plan {
        let status = self.exp.status.clone().unwrap_or_default();
        let plan = plan(Input {
            name: "exp",
            spec: &self.exp.spec,
            status: &status,
            observed: &self.observed,
        });
        self.exp.status = Some(plan.status.clone());
        self.apply(&plan.actions);
        plan
    }

    /// The cluster's side of the actions (pods never become available by themselves).
    fn apply(&mut self, actions: &[Action]) {
        for action in actions {
            match action {
                Action::CreateReplicaSet {
                    template,
                    pod_template_hash,
                    replicas,
                } => {
                    self.observed.replica_sets.insert(
                        template.clone(),
                        ReplicaSetObservation {
                            pod_template_hash: pod_template_hash.clone(),
                            replicas: *replicas,
                            ..Default::default()
                        },
                    );
                }
                Action::ScaleReplicaSet { template, replicas } => {
                    if let Some(rs) = self.observed.replica_sets.get_mut(template) {
                        rs.replicas = *replicas;
                    }
                }
                Action::SetScaleDownDeadline { template, deadline } => {
                    if let Some(rs) = self.observed.replica_sets.get_mut(template) {
                        rs.scale_down_deadline = *deadline;
                    }
                }
                Action::CreateService {
                    template, service, ..
                } => {
                    self.observed
                        .services
                        .insert(template.clone(), service.clone());
                }
                Action::DeleteService { template, .. } => {
                    self.observed.services.remove(template);
                }
                Action::CreateAnalysisRun(request) => {
                    self.observed
                        .analysis_runs
                        .insert(request.name.clone(), (AnalysisPhase::Running, None));
                }
                Action::TerminateAnalysisRun { .. } | Action::Event(_) => {}
            }
        }
    }

    fn pods_available(&mut self) {
        for rs in self.observed.replica_sets.values_mut() {
            rs.status_replicas = rs.replicas;
            rs.ready_replicas = rs.replicas;
            rs.available_replicas = rs.replicas;
        }
    }

    fn later(&mut self, seconds: u64) {
        self.observed.now += Duration::from_secs(seconds);
    }

    fn status(&self) -> &ExperimentStatus {
        self.exp.status.as_ref().unwrap()
    }

    fn phase(&self) -> Option<AnalysisPhase> {
        self.status().phase
    }
}

fn events(plan: &Plan) -> Vec<&'static str> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.reason),
            _ => None,
        })
        .collect()
}

#[test]
fn runs_for_its_duration_then_succeeds_and_scales_down_after_the_delay() {
    let mut w = World::new(TWO_TEMPLATES);
    let first = w.plan();
    assert_eq!(w.phase(), Some(AnalysisPhase::Pending));
    let creates: Vec<_> = first
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateReplicaSet {
                template, replicas, ..
            } => Some((template.as_str(), *replicas)),
            _ => None,
        })
        .collect();
    assert_eq!(creates, [("baseline", 2), ("canary", 1)]);

    w.later(5);
    w.pods_available();
    let plan = w.plan();
    assert!(
        plan.actions.iter().any(
            |a| matches!(a, Action::CreateService { service, .. } if service == "exp-baseline")
        ),
        "{plan:?}"
    );
    assert_eq!(w.phase(), Some(AnalysisPhase::Running));
    assert_eq!(
        w.status().available_at.as_ref().map(|t| t.0),
        Some(t0() + Duration::from_secs(5))
    );
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(60)));
    assert_eq!(
        w.status().template_statuses[0].service_name.as_deref(),
        Some("exp-baseline")
    );

    w.later(61);
    w.plan();
    assert_eq!(w.phase(), Some(AnalysisPhase::Successful));
    assert!(
        w.status()
            .template_statuses
            .iter()
            .all(|t| t.status == Some(TemplateStatusCode::Successful))
    );

    // Ended: the ReplicaSets stay up for scaleDownDelaySeconds (30), then go to zero.
    let plan = w.plan();
    assert!(
        plan.actions
            .iter()
            .all(|a| !matches!(a, Action::ScaleReplicaSet { .. }))
    );
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(30)));
    w.later(30);
    let plan = w.plan();
    let scaled: Vec<_> = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::ScaleReplicaSet { replicas: 0, .. }))
        .collect();
    assert_eq!(scaled.len(), 2, "{plan:?}");
    assert!(
        plan.actions.iter().any(
            |a| matches!(a, Action::DeleteService { service, .. } if service == "exp-baseline")
        ),
        "the Service goes with the scale-down: {plan:?}"
    );
    // Planning again on the same observations changes nothing.
    let again = w.plan();
    assert_eq!(again.status, plan.status);
}

#[test]
fn a_template_that_never_becomes_available_fails_the_experiment() {
    let mut w = World::new(TWO_TEMPLATES);
    w.plan();
    let plan = w.plan();
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(31)));
    w.later(31);
    let plan = w.plan();
    assert_eq!(w.phase(), Some(AnalysisPhase::Failed));
    assert!(
        w.status()
            .message
            .as_deref()
            .is_some_and(|m| m.contains("progressDeadlineSeconds (30)")),
        "{:?}",
        w.status()
    );
    assert!(events(&plan).contains(&"TemplateFailed"));
    assert!(events(&plan).contains(&"ExperimentFailed"));
}

const WITH_ANALYSIS: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: Experiment
metadata: {name: exp}
spec:
  templates:
  - name: canary
    selector: {matchLabels: {app: web}}
    template:
      metadata: {labels: {app: web}}
      spec: {containers: [{name: web, image: "web:2"}]}
  analyses:
  - name: judge
    templateName: success-rate
    args: [{name: service, value: web}]
    requiredForCompletion: true
  - name: watch
    templateName: errors
"#;

#[test]
fn analyses_start_once_available_and_the_required_one_ends_it() {
    let mut w = World::new(WITH_ANALYSIS);
    w.plan();
    w.pods_available();
    let plan = w.plan();
    assert_eq!(w.phase(), Some(AnalysisPhase::Running));
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateAnalysisRun(_))),
        "no run before availableAt is recorded"
    );
    let plan = w.plan();
    let runs: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateAnalysisRun(r) => Some(r.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(runs, ["exp-judge", "exp-watch"]);
    assert_eq!(w.phase(), Some(AnalysisPhase::Running));

    w.observed
        .analysis_runs
        .insert("exp-judge".into(), (AnalysisPhase::Successful, None));
    w.plan();
    // The other run is terminated, not judged.
    let plan = w.plan();
    assert_eq!(w.phase(), Some(AnalysisPhase::Successful));
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::TerminateAnalysisRun { name } if name == "exp-watch")),
        "{plan:?}"
    );
}

#[test]
fn a_failed_analysis_fails_the_experiment() {
    let mut w = World::new(WITH_ANALYSIS);
    w.plan();
    w.pods_available();
    w.plan();
    w.plan();
    w.observed.analysis_runs.insert(
        "exp-watch".into(),
        (AnalysisPhase::Failed, Some("error rate 30%".into())),
    );
    let plan = w.plan();
    assert_eq!(w.phase(), Some(AnalysisPhase::Failed));
    assert_eq!(w.status().message.as_deref(), Some("error rate 30%"));
    assert!(events(&plan).contains(&"AnalysisRunFailed"));
}

#[test]
fn terminate_ends_it_successfully_and_stops_the_runs() {
    let mut w = World::new(WITH_ANALYSIS);
    w.plan();
    w.pods_available();
    w.plan();
    w.plan();
    w.exp.spec.terminate = Some(true);
    let plan = w.plan();
    assert_eq!(w.phase(), Some(AnalysisPhase::Successful), "{plan:?}");
    let terminated = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::TerminateAnalysisRun { .. }))
        .count();
    assert_eq!(terminated, 2);
}

#[test]
fn a_bad_duration_is_invalid_spec_with_one_event_naming_the_field() {
    let mut w = World::new(&TWO_TEMPLATES.replace("duration: 60s", "duration: soon"));
    let plan = w.plan();
    assert_eq!(w.phase(), Some(AnalysisPhase::Error));
    assert!(
        w.status()
            .message
            .as_deref()
            .unwrap()
            .starts_with("spec.duration")
    );
    assert_eq!(events(&plan), ["InvalidSpec"]);
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateReplicaSet { .. }))
    );
    assert_eq!(events(&w.plan()), Vec::<&str>::new());
}

#[test]
fn the_hash_ignores_a_hash_label_in_the_template() {
    let exp = experiment(TWO_TEMPLATES);
    let mut labelled = exp.spec.templates[0].clone();
    labelled
        .template
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .insert("rollouts-pod-template-hash".into(), "x".into());
    assert_eq!(
        templates::template_hash(&labelled, None),
        templates::template_hash(&exp.spec.templates[0], None)
    );
}

const WITH_PLACEHOLDERS: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: Experiment
metadata: {name: exp}
spec:
  duration: 5m
  templates:
  - name: baseline
    selector: {matchLabels: {app: web}}
    template:
      metadata: {labels: {app: web}}
      spec: {containers: [{name: web, image: "web:1"}]}
  - name: canary
    selector: {matchLabels: {app: web}}
    template:
      metadata: {labels: {app: web}}
      spec: {containers: [{name: web, image: "web:2"}]}
  analyses:
  - name: judge
    templateName: compare
    args:
    - {name: baseline-hash, value: "{{templates.baseline.podTemplateHash}}"}
    - {name: canary-rs, value: "rs={{ templates.canary.replicaset.name }}"}
    - {name: window, value: "{{experiment.availableAt}}/{{experiment.finishedAt}}"}
    - {name: service, value: web}
    - {name: token, valueFrom: {secretKeyRef: {name: s, key: k}}}
"#;

/// The run requests of one plan.
fn run_requests(plan: &Plan) -> Vec<&RunRequest> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateAnalysisRun(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[test]
fn experiment_placeholders_in_analysis_args_are_filled_in() {
    let mut w = World::new(WITH_PLACEHOLDERS);
    w.plan();
    w.pods_available();
    w.plan();
    let plan = w.plan();
    let runs = run_requests(&plan);
    assert_eq!(runs.len(), 1, "{plan:?}");
    let value = |name: &str| {
        let arg = runs[0].args.iter().find(|a| a.name == name).unwrap();
        arg.value.clone()
    };
    let baseline = &w.observed.replica_sets["baseline"].pod_template_hash;
    assert_eq!(value("baseline-hash").as_ref(), Some(baseline));
    assert_eq!(value("canary-rs").as_deref(), Some("rs=exp-canary"));
    assert_eq!(
        value("window").as_deref(),
        Some("2026-01-01T00:00:00Z/2026-01-01T00:05:00Z")
    );
    assert_eq!(value("service").as_deref(), Some("web"));
    let token = runs[0].args.iter().find(|a| a.name == "token").unwrap();
    assert!(token.value.is_none() && token.value_from.is_some());
}

#[test]
fn an_unknown_placeholder_errs_the_analysis_and_the_experiment() {
    let yaml = WITH_PLACEHOLDERS.replace(
        "templates.baseline.podTemplateHash",
        "templates.nope.podTemplateHash",
    );
    let mut w = World::new(&yaml);
    w.plan();
    w.pods_available();
    w.plan();
    let plan = w.plan();
    assert!(run_requests(&plan).is_empty(), "{plan:?}");
    let run = &w.status().analysis_runs[0];
    assert_eq!(run.phase, Some(AnalysisPhase::Error));
    let message = run.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("\"baseline-hash\"")
            && message.contains("{{templates.nope.podTemplateHash}}"),
        "{message}"
    );
    assert!(events(&plan).contains(&"AnalysisRunError"));
    w.plan();
    assert_eq!(w.phase(), Some(AnalysisPhase::Error));
    assert!(run_requests(&w.plan()).is_empty(), "never retried");
}
