//! Spec checks the CRD schema cannot express: a Rollout that passes the apiserver but makes no
//! sense gets an `InvalidSpec` condition naming the field, and nothing it owns is touched.
//!
//! The analyses are checked against the templates they reference, as Argo resolves them while
//! validating: a template that does not exist, an argument no one gives a value, or a metric name
//! two templates define would only fail once the analysis is due, with the canary already
//! serving; they are `InvalidSpec` from the start instead.
//!
//! Messages follow Argo's `pkg/apis/rollouts/validation` where one exists. Pure; never panics.

use std::fmt;

use crate::api::argo::analysis::{AnalysisTemplateRef, Argument};
use crate::api::argo::rollout::{
    BlueGreenStrategy, CanaryStep, CanaryStrategy, PodTemplateMetadata, RolloutAnalysis,
    RolloutSpec,
};
use crate::engine::AnalysisTemplates;
use crate::engine::analysis::args;
use crate::engine::replicas::fenceposts;

/// One reason the spec is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSpec {
    /// JSON path of the offending field, e.g. `spec.strategy.canary.steps[2].analysis.templates`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field: field.into(),
        message: message.into(),
    }
}

/// Every problem with the spec, in field order. Empty when the spec is valid.
pub fn validate(spec: &RolloutSpec) -> Vec<InvalidSpec> {
    let mut errors = Vec::new();
    if spec.replicas.is_some_and(|r| r < 0) {
        errors.push(err("spec.replicas", "must be greater than or equal to 0"));
    }
    validate_template(spec, &mut errors);
    if spec.progress_deadline_seconds() <= spec.min_ready_seconds() {
        errors.push(err(
            "spec.progressDeadlineSeconds",
            "progressDeadlineSeconds must be greater than minReadySeconds",
        ));
    }
    match (&spec.strategy.canary, &spec.strategy.blue_green) {
        (Some(_), Some(_)) | (None, None) => errors.push(err(
            "spec.strategy",
            "exactly one of spec.strategy.canary or spec.strategy.blueGreen must be set",
        )),
        (None, Some(blue_green)) => validate_blue_green(spec, blue_green, &mut errors),
        (Some(_), None) => validate_canary(spec, &mut errors),
    }
    errors
}

fn validate_blue_green(
    spec: &RolloutSpec,
    strategy: &BlueGreenStrategy,
    errors: &mut Vec<InvalidSpec>,
) {
    if strategy.active_service.is_empty() {
        errors.push(err(
            "spec.strategy.blueGreen.activeService",
            "must name the Service that receives production traffic",
        ));
    }
    if strategy.preview_service.as_deref() == Some(strategy.active_service.as_str()) {
        errors.push(err(
            "spec.strategy.blueGreen.previewService",
            "must differ from activeService",
        ));
    }
    ephemeral_labels(
        spec,
        "spec.strategy.blueGreen",
        [
            ("activeMetadata", &strategy.active_metadata),
            ("previewMetadata", &strategy.preview_metadata),
        ],
        errors,
    );
    if strategy.anti_affinity.is_some() {
        errors.push(err(
            "spec.strategy.blueGreen.antiAffinity",
            "not supported by this version of Sluice yet; remove it, or use the canary strategy",
        ));
    }
}

/// Whether `spec.template` says anything (containers or labels). With a `workloadRef` it must
/// not: the template comes from the workload, and Argo refuses both.
pub fn template_has_content(spec: &RolloutSpec) -> bool {
    spec.template.as_ref().is_some_and(|t| {
        t.spec.as_ref().is_some_and(|s| !s.containers.is_empty())
            || t.metadata
                .as_ref()
                .is_some_and(|m| m.labels.as_ref().is_some_and(|l| !l.is_empty()))
    })
}

/// The error for a Rollout with both `workloadRef` and a template (Argo's words).
pub fn template_with_workload_ref() -> InvalidSpec {
    err(
        "spec.template",
        "template must be empty for workload reference rollout (remove spec.template or spec.workloadRef)",
    )
}

fn validate_template(spec: &RolloutSpec, errors: &mut Vec<InvalidSpec>) {
    let template_has_content = template_has_content(spec);
    if spec.workload_ref.is_some() {
        if template_has_content {
            errors.push(template_with_workload_ref());
        }
        return;
    }
    if !template_has_content {
        errors.push(err(
            "spec.template",
            "a pod template with at least one container is required",
        ));
        return;
    }
    // Labels alone pass the check above; the apiserver refuses such a ReplicaSet.
    if spec
        .template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .is_none_or(|s| s.containers.is_empty())
    {
        errors.push(err(
            "spec.template.spec.containers",
            "a pod template with at least one container is required",
        ));
    }
    if let Some(pod) = spec.template.as_ref().and_then(|t| t.spec.as_ref()) {
        for (field, value) in super::quantity::invalid_in_pod("spec.template.spec", pod) {
            errors.push(err(
                field,
                format!("{value:?} is not a resource quantity (e.g. 64Mi, 0.5, 100m)"),
            ));
        }
    }
    let Some(selector) = &spec.selector else {
        errors.push(err("spec.selector", "a selector is required"));
        return;
    };
    let match_labels = selector.match_labels.clone().unwrap_or_default();
    if match_labels.is_empty()
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
    {
        errors.push(err(
            "spec.selector",
            "empty selector is invalid for a rollout",
        ));
        return;
    }
    let labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if match_labels.iter().any(|(k, v)| labels.get(k) != Some(v)) {
        errors.push(err(
            "spec.selector",
            "selector does not match template labels",
        ));
    }
}

/// Ephemeral metadata labels (canaryMetadata / stableMetadata, activeMetadata /
/// previewMetadata, under `base`) must not touch the selector or the hash label: pods would leave
/// their ReplicaSet, which would make new ones without end.
fn ephemeral_labels(
    spec: &RolloutSpec,
    base: &str,
    fields: [(&str, &Option<PodTemplateMetadata>); 2],
    errors: &mut Vec<InvalidSpec>,
) {
    let selector = spec.selector.as_ref().and_then(|s| s.match_labels.as_ref());
    for (field, metadata) in fields {
        let labels = metadata.as_ref().and_then(|m| m.labels.as_ref());
        for key in labels.into_iter().flat_map(|l| l.keys()) {
            let reserved = key == crate::api::argo::rollout::POD_TEMPLATE_HASH_LABEL
                || selector.is_some_and(|s| s.contains_key(key));
            if reserved {
                errors.push(err(
                    format!("{base}.{field}.labels.{key}"),
                    "a label of the selector or rollouts-pod-template-hash cannot be set here",
                ));
            }
        }
    }
}

/// `pingPong` (see `crate::engine::ping_pong`): two distinct Services, and a router that sends
/// traffic to them as Argo's does — ALB (with `rootService`, the action's name once the
/// stable Service alternates), or none. Istio is accepted only where it routes to
/// `stableService` / `canaryService` (Argo's Istio router falls back to the pingPong Services
/// without them, and giving its routes back at the end would then send traffic to whichever
/// Service the manifest names, stable or not); the other routers do not take part in Argo.
fn ping_pong(canary: &CanaryStrategy, base: &str, errors: &mut Vec<InvalidSpec>) {
    let Some(ping_pong) = &canary.ping_pong else {
        return;
    };
    for (field, name) in [
        ("pingService", &ping_pong.ping_service),
        ("pongService", &ping_pong.pong_service),
    ] {
        if name.is_empty() {
            errors.push(err(
                format!("{base}.pingPong.{field}"),
                "pingPong needs both pingService and pongService",
            ));
        }
    }
    if !ping_pong.ping_service.is_empty() && ping_pong.ping_service == ping_pong.pong_service {
        errors.push(err(
            format!("{base}.pingPong.pongService"),
            "pingService and pongService must be different services",
        ));
    }
    let Some(routing) = &canary.traffic_routing else {
        return;
    };
    if let Some(alb) = &routing.alb
        && alb.root_service.as_deref().is_none_or(str::is_empty)
    {
        errors.push(err(
            format!("{base}.trafficRouting.alb.rootService"),
            "pingPong with alb needs rootService: the Ingress rule's backend, whose action \
             splits traffic between the ping and pong Services",
        ));
    }
    if routing.istio.is_some()
        && (canary.stable_service.is_none() || canary.canary_service.is_none())
    {
        errors.push(err(
            format!("{base}.pingPong"),
            "pingPong as the istio router's Services is not supported by this version of \
             Sluice: set stableService and canaryService for istio (alb still routes to the \
             pingPong Services)",
        ));
    }
    for (name, set) in [
        ("nginx", routing.nginx.is_some()),
        ("smi", routing.smi.is_some()),
        ("traefik", routing.traefik.is_some()),
    ] {
        if set {
            errors.push(err(
                format!("{base}.trafficRouting.{name}"),
                format!("pingPong works with the alb and istio routers only, not {name}"),
            ));
        }
    }
    if routing.plugins.as_ref().is_some_and(|p| !p.is_empty()) {
        errors.push(err(
            format!("{base}.trafficRouting.plugins"),
            "pingPong with a traffic router plugin is not supported by this version of Sluice",
        ));
    }
}

fn validate_canary(spec: &RolloutSpec, errors: &mut Vec<InvalidSpec>) {
    let Some(canary) = &spec.strategy.canary else {
        return;
    };
    let base = "spec.strategy.canary";
    let routing = canary.traffic_routing.as_ref();

    match fenceposts(
        canary.max_surge.as_ref(),
        canary.max_unavailable.as_ref(),
        spec.replicas(),
    ) {
        Err(e) => errors.push(err(format!("{base}.maxSurge"), e)),
        Ok(_) => {
            let explicit_zero = |v: &Option<
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
            >| {
                use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::*;
                matches!(v, Some(Int(0))) || matches!(v, Some(String(s)) if s == "0" || s == "0%")
            };
            if explicit_zero(&canary.max_surge) && explicit_zero(&canary.max_unavailable) {
                errors.push(err(
                    format!("{base}.maxUnavailable"),
                    "maxSurge and maxUnavailable cannot both be zero",
                ));
            }
        }
    }
    ping_pong(canary, base, errors);
    if routing.is_none() {
        for (field, set) in [
            (
                "scaleDownDelaySeconds",
                canary.scale_down_delay_seconds.is_some(),
            ),
            (
                "abortScaleDownDelaySeconds",
                canary.abort_scale_down_delay_seconds.is_some(),
            ),
            ("dynamicStableScale", canary.dynamic_stable_scale()),
        ] {
            if set {
                errors.push(err(
                    format!("{base}.{field}"),
                    format!("{field} requires trafficRouting to be set"),
                ));
            }
        }
    }
    ephemeral_labels(
        spec,
        base,
        [
            ("canaryMetadata", &canary.canary_metadata),
            ("stableMetadata", &canary.stable_metadata),
        ],
        errors,
    );
    if canary.dynamic_stable_scale() && canary.scale_down_delay_seconds.is_some() {
        errors.push(err(
            format!("{base}.dynamicStableScale"),
            "dynamicStableScale cannot be combined with scaleDownDelaySeconds",
        ));
    }
    if let Some(routing) = routing {
        let supported = routing.istio.is_some()
            || routing.nginx.is_some()
            || routing.alb.is_some()
            || routing.smi.is_some()
            || routing.traefik.is_some()
            || routing.plugins.as_ref().is_some_and(|p| !p.is_empty());
        for (name, set) in [
            ("ambassador", routing.ambassador.is_some()),
            ("appMesh", routing.app_mesh.is_some()),
            ("apisix", routing.apisix.is_some()),
        ] {
            if set {
                errors.push(err(
                    format!("{base}.trafficRouting.{name}"),
                    format!("the {name} traffic router is not supported by this version of Sluice"),
                ));
            }
        }
        if !supported
            && errors
                .iter()
                .all(|e| !e.field.starts_with(&format!("{base}.trafficRouting")))
        {
            errors.push(err(
                format!("{base}.trafficRouting"),
                "no traffic router is configured",
            ));
        }
        match (&canary.stable_service, &canary.canary_service) {
            (Some(stable), Some(canary_svc)) if stable == canary_svc => errors.push(err(
                format!("{base}.canaryService"),
                "canaryService and stableService must be different services",
            )),
            (Some(_), Some(_)) => {}
            _ if routing
                .istio
                .as_ref()
                .is_some_and(|i| i.destination_rule.is_some()) => {}
            // ALB routes to the pingPong Services (Argo's `requireCanaryStableServices`); every
            // other router is refused beside pingPong without these, in `ping_pong`.
            _ if canary.ping_pong.is_some() => {}
            _ => errors.push(err(
                format!("{base}.stableService"),
                "stableService and canaryService are required when trafficRouting is set",
            )),
        }
    }
    let additional_subsets = routing
        .and_then(|r| r.istio.as_ref())
        .and_then(|i| i.destination_rule.as_ref())
        .and_then(|d| d.additional_subset_names.as_ref())
        .is_some_and(|n| !n.is_empty());
    if additional_subsets {
        // Argo takes the additional subsets' weights off the stable share; Sluice's Istio router
        // would give stable `max - canary` and the route's weights would not add up.
        errors.push(err(
            format!("{base}.trafficRouting.istio.destinationRule.additionalSubsetNames"),
            "additionalSubsetNames is not supported by this version of Sluice: remove it, or \
             route the additional subsets in a route the Rollout does not manage",
        ));
    }
    let max_weight = canary.max_traffic_weight();
    // Argo's Istio router writes `100 - weight` for stable and its validation refuses
    // maxTrafficWeight without NGINX or a plugin; Sluice's writes `max - weight`, which only
    // Istio versions with relative weights honour. Refuse it rather than split wrongly.
    if routing.is_some_and(|r| r.istio.is_some()) && max_weight != 100 {
        errors.push(err(
            format!("{base}.trafficRouting.maxTrafficWeight"),
            format!(
                "maxTrafficWeight {max_weight} is not supported with the istio traffic router \
                 (VirtualService weights are percentages, as in Argo Rollouts): remove \
                 maxTrafficWeight and give setWeight in percent"
            ),
        ));
    }
    let managed: Vec<&str> = routing
        .and_then(|r| r.managed_routes.as_ref())
        .map(|m| m.iter().map(|r| r.name.as_str()).collect())
        .unwrap_or_default();
    let steps = canary.steps();
    for (i, step) in steps.iter().enumerate() {
        validate_step(
            step,
            &format!("{base}.steps[{i}]"),
            routing.is_some(),
            max_weight,
            &managed,
            errors,
        );
    }
    if routing.is_some_and(|r| r.alb.is_some()) {
        for (i, step) in steps.iter().enumerate() {
            validate_alb_step(step, &format!("{base}.steps[{i}]"), errors);
        }
    }
    experiment_weights(canary, base, errors);
    if let Some(background) = &canary.analysis {
        validate_analysis(&background.analysis, &format!("{base}.analysis"), errors);
        if let Some(start) = background.starting_step
            && (start < 0 || start as usize > steps.len())
        {
            errors.push(err(
                format!("{base}.analysis.startingStep"),
                format!("startingStep {start} is outside the {} steps", steps.len()),
            ));
        }
    }
}

/// What the ALB router (`crate::traffic::alb`) cannot do: mirror traffic (the load balancer has
/// no mirroring; Argo skips the step silently), or match a header by prefix or regex (ALB
/// conditions take exact values; Argo sends an empty value).
fn validate_alb_step(step: &CanaryStep, field: &str, errors: &mut Vec<InvalidSpec>) {
    if step.set_mirror_route.is_some() {
        errors.push(err(
            format!("{field}.setMirrorRoute"),
            "the alb traffic router cannot mirror traffic: remove the step",
        ));
    }
    let matches = step
        .set_header_route
        .iter()
        .flat_map(|r| r.r#match.iter().flatten());
    for (j, m) in matches.enumerate() {
        if m.header_value.exact.is_none() {
            errors.push(err(
                format!("{field}.setHeaderRoute.match[{j}].headerValue"),
                "the alb traffic router matches exact header values only (wildcards * and ? \
                 allowed): use exact",
            ));
        }
    }
}

/// An `experiment:` step: templates copy the stable or the canary ReplicaSet.
fn experiment_step(
    field: &str,
    experiment: &crate::api::argo::rollout::RolloutExperimentStep,
    errors: &mut Vec<InvalidSpec>,
) {
    for (i, template) in experiment.templates.iter().enumerate() {
        if !matches!(template.spec_ref.as_str(), "stable" | "canary") {
            errors.push(err(
                format!("{field}.templates[{i}].specRef"),
                "must be stable or canary",
            ));
        }
    }
}

/// The routers that can send an experiment template its `weight` (Argo: SMI, ALB, Istio and
/// plugins; Sluice's Gateway API plugin cannot yet).
const EXPERIMENT_WEIGHT_ROUTERS: &str = "smi, alb and istio";

/// The `trafficRouting` fields naming routers that cannot route to an experiment template.
fn routers_without_experiment_weight(
    routing: &crate::api::argo::rollout::RolloutTrafficRouting,
) -> Vec<&'static str> {
    [
        ("nginx", routing.nginx.is_some()),
        ("traefik", routing.traefik.is_some()),
        ("ambassador", routing.ambassador.is_some()),
        ("appMesh", routing.app_mesh.is_some()),
        ("apisix", routing.apisix.is_some()),
        ("plugins", routing.plugins.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

/// Experiment template `weight`s: a share of traffic the routers send to the template's Service
/// while the experiment runs, taken from stable. It needs a router that can do so, and with the
/// `setWeight` in force it must leave stable a share of zero or more.
fn experiment_weights(canary: &CanaryStrategy, base: &str, errors: &mut Vec<InvalidSpec>) {
    let max = canary.max_traffic_weight();
    let mut set_weight = 0;
    for (i, step) in canary.steps().iter().enumerate() {
        set_weight = step.set_weight.unwrap_or(set_weight);
        let Some(experiment) = &step.experiment else {
            continue;
        };
        let mut sum = 0i64;
        for (j, template) in experiment.templates.iter().enumerate() {
            let Some(weight) = template.weight else {
                continue;
            };
            let field = format!("{base}.steps[{i}].experiment.templates[{j}].weight");
            sum += i64::from(weight);
            if !(0..=max).contains(&weight) {
                errors.push(err(&field, format!("must be between 0 and {max}")));
            }
            match &canary.traffic_routing {
                None => errors.push(err(
                    &field,
                    "Experiment template weight cannot be set unless TrafficRouting is enabled",
                )),
                Some(routing) => {
                    let refused = routers_without_experiment_weight(routing);
                    if !refused.is_empty() {
                        errors.push(err(
                            &field,
                            format!(
                                "experiment template weight is only available with the \
                                 {EXPERIMENT_WEIGHT_ROUTERS} traffic routers in this version of \
                                 Sluice, not with trafficRouting.{}: remove it (the experiment's \
                                 pods then get no traffic from the router)",
                                refused.join(", trafficRouting.")
                            ),
                        ));
                    }
                }
            }
        }
        if i64::from(set_weight) + sum > i64::from(max) {
            errors.push(err(
                format!("{base}.steps[{i}].experiment.templates"),
                format!(
                    "the templates' weights ({sum}) and setWeight {set_weight} add up to more \
                     than {max}: lower them so stable keeps a share of 0 or more"
                ),
            ));
        }
    }
}

/// Argo's rule: at most one of setWeight, pause, experiment and analysis, and at least one field.
/// The route steps join any action (the engine requests the route, then runs the action);
/// setCanaryScale alongside a pause or an analysis has semantics of its own in Argo (the scale
/// decides when the step ends) that Sluice does not reproduce, so it is refused, not guessed at.
fn validate_step_kinds(step: &CanaryStep, field: &str, errors: &mut Vec<InvalidSpec>) {
    let main = [
        step.set_weight.is_some(),
        step.pause.is_some(),
        step.experiment.is_some(),
        step.analysis.is_some(),
    ];
    let others = [
        step.set_canary_scale.is_some(),
        step.set_header_route.is_some(),
        step.set_mirror_route.is_some(),
        step.plugin.is_some(),
    ];
    let main_count = main.iter().filter(|k| **k).count();
    if main_count + others.iter().filter(|k| **k).count() == 0 {
        errors.push(err(field, "a step must set one of setWeight, pause, experiment, analysis, setCanaryScale, setHeaderRoute, setMirrorRoute or plugin"));
    } else if main_count > 1 {
        errors.push(err(
            field,
            "a step sets at most one of setWeight, pause, experiment or analysis",
        ));
    } else if step.set_canary_scale.is_some()
        && (step.pause.is_some() || step.analysis.is_some() || step.experiment.is_some())
    {
        errors.push(err(
            format!("{field}.setCanaryScale"),
            "setCanaryScale in the same step as a pause, analysis or experiment is not supported \
             by this version of Sluice; give setCanaryScale a step of its own",
        ));
    }
}

fn validate_step(
    step: &CanaryStep,
    field: &str,
    has_router: bool,
    max_weight: i32,
    managed: &[&str],
    errors: &mut Vec<InvalidSpec>,
) {
    validate_step_kinds(step, field, errors);
    if let Some(weight) = step.set_weight
        && !(0..=max_weight).contains(&weight)
    {
        errors.push(err(
            format!("{field}.setWeight"),
            format!(
                "setWeight must be between 0 and {max_weight} (trafficRouting.maxTrafficWeight)"
            ),
        ));
    }
    if let Some(pause) = &step.pause
        && let Err(e) = pause.duration_seconds()
    {
        errors.push(err(format!("{field}.pause.duration"), e));
    }
    if let Some(analysis) = &step.analysis {
        validate_analysis(analysis, &format!("{field}.analysis"), errors);
    }
    if let Some(scale) = &step.set_canary_scale {
        if !has_router {
            errors.push(err(
                format!("{field}.setCanaryScale"),
                "setCanaryScale requires trafficRouting to be set",
            ));
        }
        if scale.weight.is_some_and(|w| !(0..=100).contains(&w)) {
            errors.push(err(
                format!("{field}.setCanaryScale.weight"),
                "must be between 0 and 100",
            ));
        }
        if scale.replicas.is_some_and(|r| r < 0) {
            errors.push(err(
                format!("{field}.setCanaryScale.replicas"),
                "must be greater than or equal to 0",
            ));
        }
    }
    let route_name = |kind: &str, name: Option<&str>, errors: &mut Vec<InvalidSpec>| {
        if !has_router {
            errors.push(err(
                format!("{field}.{kind}"),
                format!("{kind} requires trafficRouting to be set"),
            ));
            return;
        }
        match name {
            None | Some("") => errors.push(err(
                format!("{field}.{kind}.name"),
                "a route name is required",
            )),
            Some(name) if !managed.contains(&name) => errors.push(err(
                format!("{field}.{kind}.name"),
                format!("route {name:?} must be listed in trafficRouting.managedRoutes"),
            )),
            Some(_) => {}
        }
    };
    if let Some(route) = &step.set_header_route {
        route_name("setHeaderRoute", route.name.as_deref(), errors);
    }
    if let Some(route) = &step.set_mirror_route {
        route_name("setMirrorRoute", Some(route.name.as_str()), errors);
    }
    if let Some(experiment) = &step.experiment {
        experiment_step(&format!("{field}.experiment"), experiment, errors);
    }
    if step.plugin.is_some() {
        errors.push(err(
            format!("{field}.plugin"),
            "step plugins are not supported by this version of Sluice",
        ));
    }
}

fn validate_analysis(analysis: &RolloutAnalysis, field: &str, errors: &mut Vec<InvalidSpec>) {
    let templates = analysis.templates.as_deref().unwrap_or_default();
    if templates.is_empty() {
        errors.push(err(
            format!("{field}.templates"),
            "at least one analysis template is required",
        ));
    }
    for (i, template) in templates.iter().enumerate() {
        if template.template_name.as_deref().is_none_or(str::is_empty) {
            errors.push(err(
                format!("{field}.templates[{i}].templateName"),
                "templateName is required",
            ));
        }
    }
    for (i, arg) in analysis
        .args
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if arg.value.is_some() && arg.value_from.is_some() {
            errors.push(err(
                format!("{field}.args[{i}]"),
                "set either value or valueFrom, not both",
            ));
        }
        if arg
            .value_from
            .as_ref()
            .is_some_and(|v| v.field_ref.is_none() && v.pod_template_hash_value.is_none())
        {
            errors.push(err(
                format!("{field}.args[{i}].valueFrom"),
                "valueFrom needs podTemplateHashValue or fieldRef",
            ));
        }
    }
}

/// Every analysis of the spec (each step's, then the background one) checked against the
/// templates it references: each must exist (nested references too), and merging them with the
/// Rollout's arguments must succeed (no metric defined twice, no argument without a value).
pub fn analysis_templates(spec: &RolloutSpec, templates: &AnalysisTemplates) -> Vec<InvalidSpec> {
    canary_analyses(spec)
        .into_iter()
        .filter_map(|(field, analysis)| resolve_analysis(analysis, &field, templates).err())
        .map(AnalysisProblem::into_invalid)
        .collect()
}

/// The analyses of a Rollout's strategy with the field each is written at: a canary's steps', then
/// its background one; a blue-green's pre-, then post-promotion one.
pub fn canary_analyses(spec: &RolloutSpec) -> Vec<(String, &RolloutAnalysis)> {
    let Some(canary) = &spec.strategy.canary else {
        let base = "spec.strategy.blueGreen";
        return spec
            .strategy
            .blue_green
            .iter()
            .flat_map(|b| {
                [
                    ("prePromotionAnalysis", &b.pre_promotion_analysis),
                    ("postPromotionAnalysis", &b.post_promotion_analysis),
                ]
            })
            .filter_map(|(field, analysis)| Some((format!("{base}.{field}"), analysis.as_ref()?)))
            .collect();
    };
    let base = "spec.strategy.canary";
    let steps = canary.steps().iter().enumerate().filter_map(|(i, step)| {
        let analysis = step.analysis.as_ref()?;
        Some((format!("{base}.steps[{i}].analysis"), analysis))
    });
    let background = canary
        .analysis
        .as_ref()
        .map(|b| (format!("{base}.analysis"), &b.analysis));
    steps.chain(background).collect()
}

/// Why an analysis cannot be built from the templates at hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnalysisProblem {
    /// A template it references (or one they reference) is not among them.
    Missing(InvalidSpec),
    /// The templates do not merge: a metric defined twice, an argument with no value, a cycle.
    Invalid(InvalidSpec),
}

impl AnalysisProblem {
    /// The InvalidSpec either way.
    pub fn into_invalid(self) -> InvalidSpec {
        match self {
            AnalysisProblem::Missing(e) | AnalysisProblem::Invalid(e) => e,
        }
    }
}

/// One analysis (written at `field`) merged with the templates it references, as its run would
/// be built; the merged templates say which arguments no template declares.
pub fn resolve_analysis(
    analysis: &RolloutAnalysis,
    field: &str,
    templates: &AnalysisTemplates,
) -> Result<args::MergedTemplate, AnalysisProblem> {
    let refs = analysis.templates.as_deref().unwrap_or_default();
    let roots: Vec<AnalysisTemplateRef> = refs
        .iter()
        .filter_map(|t| {
            Some(AnalysisTemplateRef {
                template_name: t.template_name.clone().filter(|n| !n.is_empty())?,
                cluster_scope: t.cluster_scope,
            })
        })
        .collect();
    let collected = args::collect_templates(&roots, |r| {
        let key = (r.template_name.clone(), r.cluster_scope.unwrap_or(false));
        templates
            .get(&key)
            .cloned()
            .ok_or_else(|| args::Walk::Missing(r.clone()))
    });
    let collected = match collected {
        Ok(collected) => collected,
        Err(args::Walk::Missing(missing)) => {
            return Err(AnalysisProblem::Missing(missing_template(
                refs, &missing, field,
            )));
        }
        Err(args::Walk::Args(e)) => {
            return Err(AnalysisProblem::Invalid(err(
                format!("{field}.templates"),
                e.to_string(),
            )));
        }
    };
    // Namespaced templates first, as the run is built; values only matter for being there
    // (valueFrom ones are read when the run is made).
    let cluster_prefix = args::display_name("", true);
    let (mut ordered, cluster): (Vec<_>, Vec<_>) = collected
        .into_iter()
        .partition(|(name, _)| !name.starts_with(&cluster_prefix));
    ordered.extend(cluster);
    let args: Vec<Argument> = analysis
        .args
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|a| Argument {
            name: a.name.clone(),
            value: Some(a.value.clone().unwrap_or_default()),
            value_from: None,
        })
        .collect();
    args::merge_templates(&ordered, &args)
        .map_err(|e| AnalysisProblem::Invalid(err(format!("{field}.templates"), e.to_string())))
}

/// The error for a template that does not exist, on the reference that names it (or on the
/// list, when another template references it).
fn missing_template(
    refs: &[crate::api::argo::rollout::RolloutAnalysisTemplate],
    missing: &AnalysisTemplateRef,
    field: &str,
) -> InvalidSpec {
    let cluster = missing.cluster_scope.unwrap_or(false);
    let shown = args::display_name(&missing.template_name, cluster);
    let root = refs.iter().position(|t| {
        t.template_name.as_deref() == Some(missing.template_name.as_str())
            && t.cluster_scope.unwrap_or(false) == cluster
    });
    match root {
        Some(i) => err(
            format!("{field}.templates[{i}].templateName"),
            format!("{shown} not found: create it, or fix the templateName"),
        ),
        None => err(
            format!("{field}.templates"),
            format!(
                "{shown}, referenced by another template, not found: create it, or fix the reference"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::argo::analysis::AnalysisTemplateSpec;
    use serde_json::json;

    fn spec(canary: serde_json::Value) -> RolloutSpec {
        serde_json::from_value(json!({
            "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}},
                "spec": {"containers": [{"name": "a", "image": "a"}]}},
            "strategy": {"canary": canary},
        }))
        .unwrap()
    }

    fn template(metric: &str, args: serde_json::Value) -> AnalysisTemplateSpec {
        serde_json::from_value(json!({"args": args, "metrics": [{"name": metric,
            "provider": {"prometheus": {"query": "vector(1)"}}}]}))
        .unwrap()
    }

    fn fields(spec: &RolloutSpec, templates: &AnalysisTemplates) -> Vec<String> {
        analysis_templates(spec, templates)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn templates_are_resolved_as_a_run_would_be() {
        let rollout = spec(json!({
            "steps": [{"analysis": {"templates": [{"templateName": "a"}, {"templateName": "c", "clusterScope": true}],
                "args": [{"name": "svc", "value": "web"}]}}],
            "analysis": {"templates": [{"templateName": "bg"}]},
        }));
        let mut templates = AnalysisTemplates::new();
        let errors = fields(&rollout, &templates);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with(
            "spec.strategy.canary.steps[0].analysis.templates[0].templateName: AnalysisTemplate/a not found"
        ));
        assert!(errors[1].starts_with(
            "spec.strategy.canary.analysis.templates[0].templateName: AnalysisTemplate/bg not found"
        ));

        templates.insert(("a".into(), false), template("m", json!([{"name": "svc"}])));
        templates.insert(("bg".into(), false), template("m", json!([])));
        let errors = fields(&rollout, &templates);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].contains("ClusterAnalysisTemplate/c not found"),
            "{errors:?}"
        );

        templates.insert(
            ("c".into(), true),
            template("m", json!([{"name": "other"}])),
        );
        let errors = fields(&rollout, &templates).join("\n");
        assert!(
            errors.contains("metric \"m\" is defined by both"),
            "{errors}"
        );

        templates.insert(
            ("c".into(), true),
            template("n", json!([{"name": "other"}])),
        );
        let errors = fields(&rollout, &templates).join("\n");
        assert!(errors.contains("argument \"other\""), "{errors}");

        templates.insert(("c".into(), true), template("n", json!([])));
        assert!(fields(&rollout, &templates).is_empty());
    }

    #[test]
    fn a_nested_template_that_is_missing_is_named() {
        let rollout =
            spec(json!({"steps": [{"analysis": {"templates": [{"templateName": "a"}]}}]}));
        let mut outer = template("m", json!([]));
        outer.templates = vec![AnalysisTemplateRef {
            template_name: "inner".into(),
            cluster_scope: None,
        }];
        let templates = AnalysisTemplates::from([(("a".into(), false), outer)]);
        let errors = fields(&rollout, &templates);
        assert!(
            errors[0].starts_with("spec.strategy.canary.steps[0].analysis.templates: AnalysisTemplate/inner, referenced by another template, not found"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_pod_template_without_containers_is_invalid() {
        let mut rollout = spec(json!({"steps": []}));
        if let Some(pod) = rollout.template.as_mut().and_then(|t| t.spec.as_mut()) {
            pod.containers.clear();
        }
        let errors: Vec<String> = validate(&rollout).iter().map(ToString::to_string).collect();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("spec.template.spec.containers")),
            "{errors:?}"
        );
    }

    #[test]
    fn steps_combine_as_argo_allows() {
        let routed = |steps: serde_json::Value| {
            spec(json!({"canaryService": "c", "stableService": "s",
                "trafficRouting": {"managedRoutes": [{"name": "h"}],
                    "plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "r"}}},
                "steps": steps}))
        };
        let header =
            json!({"name": "h", "match": [{"headerName": "x", "headerValue": {"exact": "1"}}]});
        let ok = routed(
            json!([{"setCanaryScale": {"replicas": 1}, "setHeaderRoute": header},
            {"setWeight": 20, "setHeaderRoute": header}]),
        );
        assert_eq!(validate(&ok), vec![]);
        let two = validate(&routed(json!([{"setWeight": 20, "pause": {}}])));
        assert!(two[0].message.contains("at most one of"), "{two:?}");
        let scale = validate(&routed(
            json!([{"setCanaryScale": {"replicas": 1}, "pause": {}}]),
        ));
        assert_eq!(
            scale[0].field,
            "spec.strategy.canary.steps[0].setCanaryScale"
        );
        assert!(
            scale[0]
                .message
                .contains("not supported by this version of Sluice")
        );
    }

    #[test]
    fn additional_subsets_are_refused_not_ignored() {
        let problems = validate(&spec(json!({"canaryService": "c", "stableService": "s",
            "trafficRouting": {"istio": {"virtualService": {"name": "v"},
                "destinationRule": {"name": "d", "canarySubsetName": "c", "stableSubsetName": "s",
                    "additionalSubsetNames": ["legacy"]}}},
            "steps": [{"setWeight": 20}]})));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .field
                .ends_with("destinationRule.additionalSubsetNames")
        );
    }

    #[test]
    fn ephemeral_labels_may_not_touch_the_selector_or_the_hash() {
        let problems = validate(&spec(json!({
            "canaryMetadata": {"labels": {"app": "b", "role": "canary"}},
            "stableMetadata": {"labels": {"rollouts-pod-template-hash": "x"}}})));
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.strategy.canary.canaryMetadata.labels.app",
                "spec.strategy.canary.stableMetadata.labels.rollouts-pod-template-hash",
            ]
        );
    }
}
