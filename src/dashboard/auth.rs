//! Who the viewer is and what their own RBAC lets them do.
//!
//! `--auth kubeconfig`: the viewer is the kubeconfig's user, every read is allowed (the apiserver
//! already limits the watch). `--auth token`: the request's bearer token is reviewed by the
//! apiserver (TokenReview) and every read and action is put to it as a SubjectAccessReview for
//! that user; the dashboard's own permissions never stand in for the viewer's. A review that
//! fails refuses (never allows).

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use kube::Client;
use kube::api::{Api, PostParams};

use super::AuthMode;

/// The viewer of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Viewer {
    /// The kubeconfig's user (`--auth kubeconfig`).
    Local,
    /// A user the apiserver authenticated from a bearer token.
    User {
        username: String,
        uid: String,
        groups: Vec<String>,
        extra: BTreeMap<String, Vec<String>>,
    },
}

impl Viewer {
    /// What the CSRF token is bound to.
    pub fn subject(&self) -> String {
        match self {
            Viewer::Local => "local".into(),
            Viewer::User { username, uid, .. } => format!("user:{username}:{uid}"),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Viewer::Local => "kubeconfig user",
            Viewer::User { username, .. } => username,
        }
    }
}

/// A request the dashboard refuses before looking at what it asks.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error("no bearer token: send `Authorization: Bearer <token>` (or sign in at /login)")]
    NoToken,
    #[error("the apiserver did not accept the bearer token")]
    BadToken,
    #[error("asking the apiserver about the viewer failed: {0}; try again")]
    Review(#[source] kube::Error),
}

/// One permission to check: `verb` on `group`'s `resource[/subresource]` in `namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: &'a str,
    pub name: Option<&'a str>,
}

pub struct Auth {
    mode: AuthMode,
    client: Client,
}

impl Auth {
    pub fn new(mode: AuthMode, client: Client) -> Auth {
        Auth { mode, client }
    }

    /// The viewer of a request carrying `token` (from the Authorization header or the cookie).
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Viewer, Denied> {
        if self.mode == AuthMode::Kubeconfig {
            return Ok(Viewer::Local);
        }
        let token = token.filter(|t| !t.is_empty()).ok_or(Denied::NoToken)?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(Denied::Review)?;
        viewer_of(answer.status.unwrap_or_default()).ok_or(Denied::BadToken)
    }

    /// Whether the viewer's own RBAC allows `permission`.
    pub async fn can(&self, viewer: &Viewer, permission: &Permission<'_>) -> Result<bool, Denied> {
        let Some(spec) = review_spec(viewer, permission) else {
            return Ok(true);
        };
        let review = SubjectAccessReview {
            spec,
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(Denied::Review)?;
        Ok(allowed(answer.status.as_ref()))
    }
}

/// The authenticated user of a TokenReview's status, if it authenticated one.
fn viewer_of(status: k8s_openapi::api::authentication::v1::TokenReviewStatus) -> Option<Viewer> {
    if status.authenticated != Some(true) {
        return None;
    }
    let user = status.user?;
    Some(Viewer::User {
        username: user.username.filter(|u| !u.is_empty())?,
        uid: user.uid.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default(),
    })
}

/// The SubjectAccessReview asking about `viewer`; `None` for the local user (nothing to ask).
fn review_spec(viewer: &Viewer, p: &Permission<'_>) -> Option<SubjectAccessReviewSpec> {
    let Viewer::User {
        username,
        uid,
        groups,
        extra,
    } = viewer
    else {
        return None;
    };
    Some(SubjectAccessReviewSpec {
        user: Some(username.clone()),
        uid: Some(uid.clone()).filter(|u| !u.is_empty()),
        groups: Some(groups.clone()),
        extra: Some(extra.clone()).filter(|e| !e.is_empty()),
        resource_attributes: Some(ResourceAttributes {
            verb: Some(p.verb.into()),
            group: Some(p.group.into()),
            resource: Some(p.resource.into()),
            subresource: p.subresource.map(Into::into),
            namespace: Some(p.namespace.into()),
            name: p.name.map(Into::into),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Allowed only when the apiserver says so and no authoriser denied it.
fn allowed(status: Option<&SubjectAccessReviewStatus>) -> bool {
    status.is_some_and(|s| s.allowed && s.denied != Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn alice() -> Viewer {
        Viewer::User {
            username: "system:serviceaccount:team:alice".into(),
            uid: "u1".into(),
            groups: vec!["system:serviceaccounts".into()],
            extra: BTreeMap::new(),
        }
    }

    const PROMOTE: Permission<'static> = Permission {
        verb: "patch",
        group: "argoproj.io",
        resource: "rollouts",
        subresource: Some("status"),
        namespace: "team",
        name: Some("web"),
    };

    #[test]
    fn the_review_asks_about_the_viewer_not_the_dashboard() {
        let spec = review_spec(&alice(), &PROMOTE).unwrap();
        assert_eq!(
            spec.user.as_deref(),
            Some("system:serviceaccount:team:alice")
        );
        assert_eq!(
            spec.groups,
            Some(vec!["system:serviceaccounts".to_string()])
        );
        let attrs = spec.resource_attributes.unwrap();
        assert_eq!(attrs.verb.as_deref(), Some("patch"));
        assert_eq!(attrs.subresource.as_deref(), Some("status"));
        assert_eq!(attrs.namespace.as_deref(), Some("team"));
        assert_eq!(attrs.name.as_deref(), Some("web"));
        assert!(review_spec(&Viewer::Local, &PROMOTE).is_none());
    }

    #[test]
    fn only_an_allowed_undenied_answer_allows() {
        let answer = |allowed, denied| SubjectAccessReviewStatus {
            allowed,
            denied,
            ..Default::default()
        };
        assert!(allowed(Some(&answer(true, None))));
        assert!(!allowed(Some(&answer(true, Some(true)))));
        assert!(!allowed(Some(&answer(false, None))));
        assert!(!allowed(None));
    }

    #[test]
    fn an_unauthenticated_token_is_no_viewer() {
        assert_eq!(viewer_of(TokenReviewStatus::default()), None);
        let ok = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo {
                username: Some("bob".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(viewer_of(ok), Some(Viewer::User { username, .. }) if username == "bob"));
    }
}
