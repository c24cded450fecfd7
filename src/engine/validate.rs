//! Spec checks the CRD schema cannot express: a Rollout that passes the apiserver but makes no
//! sense gets an `InvalidSpec` condition naming the field, and nothing it owns is touched.
//!
//! Messages follow Argo's `pkg/apis/rollouts/validation` where one exists. Pure; never panics.

use std::fmt;

use crate::api::argo::rollout::{CanaryStep, RolloutAnalysis, RolloutSpec};
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
        (None, Some(_)) => errors.push(err(
            "spec.strategy.blueGreen",
            "the blueGreen strategy is not supported by this version of Sluice; use canary",
        )),
        (Some(_), None) => validate_canary(spec, &mut errors),
    }
    errors
}

fn validate_template(spec: &RolloutSpec, errors: &mut Vec<InvalidSpec>) {
    let template_has_content = spec.template.as_ref().is_some_and(|t| {
        t.spec.as_ref().is_some_and(|s| !s.containers.is_empty())
            || t.metadata
                .as_ref()
                .is_some_and(|m| m.labels.as_ref().is_some_and(|l| !l.is_empty()))
    });
    if spec.workload_ref.is_some() {
        if template_has_content {
            errors.push(err(
                "spec.template",
                "template must be empty for a workload reference rollout",
            ));
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
    if canary.dynamic_stable_scale() && canary.scale_down_delay_seconds.is_some() {
        errors.push(err(
            format!("{base}.dynamicStableScale"),
            "dynamicStableScale cannot be combined with scaleDownDelaySeconds",
        ));
    }
    if let Some(routing) = routing {
        let supported = routing.istio.is_some()
            || routing.nginx.is_some()
            || routing.smi.is_some()
            || routing.traefik.is_some()
            || routing.plugins.as_ref().is_some_and(|p| !p.is_empty());
        for (name, set) in [
            ("alb", routing.alb.is_some()),
            ("ambassador", routing.ambassador.is_some()),
            ("appMesh", routing.app_mesh.is_some()),
            ("apisix", routing.apisix.is_some()),
        ] {
            if set {
                errors.push(err(
                    format!("{base}.trafficRouting.{name}"),
                    format!("the {name} traffic router is not supported by Sluice"),
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
            _ => errors.push(err(
                format!("{base}.stableService"),
                "stableService and canaryService are required when trafficRouting is set",
            )),
        }
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

fn validate_step(
    step: &CanaryStep,
    field: &str,
    has_router: bool,
    max_weight: i32,
    managed: &[&str],
    errors: &mut Vec<InvalidSpec>,
) {
    let kinds = [
        step.set_weight.is_some(),
        step.pause.is_some(),
        step.experiment.is_some(),
        step.analysis.is_some(),
        step.set_canary_scale.is_some(),
        step.set_header_route.is_some(),
        step.set_mirror_route.is_some(),
        step.plugin.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        0 => errors.push(err(field, "a step must set one of setWeight, pause, analysis, setCanaryScale, setHeaderRoute or setMirrorRoute")),
        1 => {}
        _ => errors.push(err(field, "a step must set only one of its fields")),
    }
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
    if step.experiment.is_some() {
        errors.push(err(
            format!("{field}.experiment"),
            "experiment steps are not supported by Sluice",
        ));
    }
    if step.plugin.is_some() {
        errors.push(err(
            format!("{field}.plugin"),
            "step plugins are not supported by Sluice",
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
