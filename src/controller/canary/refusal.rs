//! Writes the apiserver refuses (a Service it finds invalid, a write the controller is forbidden,
//! an admission webhook saying no): the Canary is told, not only the log.
//!
//! Each distinct refusal (object, HTTP code, the apiserver's message) is one Warning Event, and
//! while it stands the Canary carries the condition `Stalled=True` (reason [`WRITE_REFUSED`],
//! the same message; kstatus and Flux read `Stalled` as "reconciling failed"). A refusal of an
//! object the Canary's spec makes (422) waits for a change of the Canary, as retrying the same
//! write cannot help; any other is retried with the controller's back-off. The condition goes
//! once the writes of a tick succeed.
//!
//! A spec Sluice does not act on (a `DaemonSet` target) is reported the same way, with reason
//! `InvalidSpec`, once per generation; so are routes that cannot be rendered from the spec
//! (`service.delegation` with hosts, a missing `ingressRef`, ...), which are retried with
//! back-off, since the object they name may appear.
//!
//! This module decides nothing about a run and writes only the Canary's status conditions and
//! Events; it never treats a conflict (409) or throttling (429) as a refusal.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action as Requeue;
use kube::{Resource, ResourceExt};

use super::{Ctx, Error, routing::RoutingError, write_status};
use crate::api::flagger::canary::{Canary, CanaryCondition, CanaryStatus};

/// The condition type set while a write is refused.
pub const STALLED: &str = "Stalled";
/// Its reason.
pub const WRITE_REFUSED: &str = "WriteRefused";

/// A write the apiserver refused.
#[derive(Debug, PartialEq)]
pub(super) struct Refusal {
    /// `applying`.
    pub action: String,
    /// `Service podinfo`.
    pub object: String,
    pub kind: String,
    pub code: u16,
    pub message: String,
}

/// The refusal in `error`, when the apiserver answered with a 4xx that the same write retried at
/// once cannot get past (not 409 Conflict, not 429 Too Many Requests).
pub(super) fn refusal(error: &Error) -> Option<Refusal> {
    let (action, kind, name, source) = match error {
        Error::Write {
            action,
            kind,
            name,
            source,
            ..
        } => (*action, kind.to_string(), name.clone(), source),
        Error::Routing(RoutingError::Apply {
            kind,
            object,
            source,
            ..
        }) => ("applying", kind.clone(), object.clone(), source.as_ref()),
        _ => return None,
    };
    let kube::Error::Api(answer) = source else {
        return None;
    };
    let code = answer.code;
    ((400..500).contains(&code) && code != 409 && code != 429).then(|| Refusal {
        action: action.to_string(),
        object: format!("{kind} {name}"),
        kind,
        code,
        message: answer.message.clone(),
    })
}

/// `status` with the `Stalled` condition for `reason` saying `message` (its transition time kept
/// when it already stood).
pub(super) fn with_stalled(
    status: &CanaryStatus,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> CanaryStatus {
    let mut status = status.clone();
    let since = status
        .conditions
        .iter()
        .find(|c| c.r#type == STALLED && c.status == "True")
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    status.conditions.retain(|c| c.r#type != STALLED);
    status.conditions.push(CanaryCondition {
        r#type: STALLED.into(),
        status: "True".into(),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(since),
        reason: reason.into(),
        message: Some(message.into()),
    });
    status
}

/// `status` without the `Stalled` condition.
pub(super) fn without_stalled(status: &mut CanaryStatus) {
    status.conditions.retain(|c| c.r#type != STALLED);
}

impl Ctx {
    /// Reports `error` when it is a refusal (one Warning per distinct refusal, the `Stalled`
    /// condition on `canary`, whose status and resourceVersion must be the current ones) and
    /// says how to go on; any other error is returned.
    pub(super) async fn refused(&self, canary: &Canary, error: Error) -> Result<Requeue, Error> {
        if let Error::Routing(RoutingError::Spec { reason, .. }) = &error {
            // Routes that cannot be rendered from the spec (or from the object it names):
            // retried with back-off, as the object may appear, but told, not only logged.
            let generation = canary.meta().generation.unwrap_or(0);
            let message = format!(
                "{reason}; the Canary's routes are not written until it (or the object it names) is fixed"
            );
            let what = format!("routing-spec:{generation}:{reason}");
            self.warn_once(canary, &what, "InvalidSpec", &message).await;
            self.set_stalled(canary, "InvalidSpec", &message).await;
            return Err(error);
        }
        let Some(refusal) = refusal(&error) else {
            return Err(error);
        };
        let invalid = refusal.code == 422;
        let field = match refusal.kind.as_str() {
            "Service" => "spec.service",
            "Deployment" => "spec.targetRef",
            _ => "spec.service",
        };
        let Refusal {
            action,
            object,
            code,
            message: answer,
            ..
        } = &refusal;
        let message = if invalid {
            format!(
                "{field}: {action} {object} was refused by the apiserver as invalid: {answer}; fix the Canary (or its target), nothing else is done until then"
            )
        } else {
            format!(
                "{action} {object} was refused by the apiserver ({code}): {answer}; retried with back-off"
            )
        };
        let what = format!(
            "refused:{}:{}:{}",
            refusal.object, refusal.code, refusal.message
        );
        let reason = if invalid {
            "InvalidSpec"
        } else {
            WRITE_REFUSED
        };
        self.warn_once(canary, &what, reason, &message).await;
        self.set_stalled(canary, WRITE_REFUSED, &message).await;
        tracing::debug!(canary = %canary.name_any(), generation = ?canary.meta().generation, %message, "write refused");
        if invalid {
            Ok(Requeue::await_change())
        } else {
            Err(error)
        }
    }
}

impl Ctx {
    /// A spec Sluice does not act on (`spec.targetRef.kind` other than Deployment): one Warning
    /// per generation and the condition `Stalled=True` / `InvalidSpec`; nothing else is done.
    pub(super) async fn refuse_spec(&self, canary: &Canary, what: &str, message: &str) {
        let what = format!("{what}:{}", canary.meta().generation.unwrap_or(0));
        self.warn_once(canary, &what, "InvalidSpec", message).await;
        self.set_stalled(canary, "InvalidSpec", message).await;
    }

    /// Writes the `Stalled` condition unless it already says `message`.
    async fn set_stalled(&self, canary: &Canary, reason: &str, message: &str) {
        let current = canary.status.clone().unwrap_or_default();
        let same = current
            .conditions
            .iter()
            .any(|c| c.r#type == STALLED && c.message.as_deref() == Some(message));
        if same {
            return;
        }
        let stalled = with_stalled(&current, reason, message, Timestamp::now());
        // A conflict here means the Canary changed: the next tick reports it again.
        if let Err(e) = write_status(canary, &stalled, self).await {
            tracing::debug!(canary = %canary.name_any(), namespace = ?canary.namespace(), error = %e, "writing the Stalled condition");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_is_set_once_and_keeps_its_transition_time() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = with_stalled(&CanaryStatus::default(), WRITE_REFUSED, "refused", t0);
        let again = with_stalled(&first, WRITE_REFUSED, "refused again", t1);
        assert_eq!(again.conditions.len(), 1);
        assert_eq!(again.conditions[0].last_transition_time, Some(Time(t0)));
        assert_eq!(
            again.conditions[0].message.as_deref(),
            Some("refused again")
        );
        let mut cleared = again;
        without_stalled(&mut cleared);
        assert!(cleared.conditions.is_empty());
    }

    #[test]
    fn conflicts_and_throttling_are_not_refusals() {
        let error = |code: u16| Error::Write {
            action: "applying",
            kind: "Service",
            namespace: "n".into(),
            name: "podinfo".into(),
            canary: "podinfo".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("no", "Invalid")
                    .with_code(code)
                    .boxed(),
            ),
        };
        assert!(refusal(&error(409)).is_none());
        assert!(refusal(&error(429)).is_none());
        assert!(refusal(&error(500)).is_none());
        let r = refusal(&error(422)).unwrap();
        assert_eq!((r.object.as_str(), r.code), ("Service podinfo", 422));
    }
}
