//! Counts every request the controller's own kube client sends, by resource, verb and response
//! status: `controller_clientset_k8s_request_total{kind,verb,status_code}` on `/metrics`.
//!
//! The name is Argo Rollouts', but the labels are not: Argo also labels each series with the
//! object's `namespace` and `name`, which gives one series per object and verb and grows the
//! controller's memory with every object it ever touched (argo-rollouts#3929). Here `kind` is the
//! resource plural with its subresource (`replicasets`, `canaries/status`), so the number of
//! series is bounded by the kinds the controller uses × 9 verbs × the status codes seen.
//!
//! The verb is the apiserver's own (its `RequestInfo`): a `GET` with `watch=true` is `watch`, a
//! `GET` of a collection `list`, of one object `get`; `POST` `create`, `PUT` `update`, `PATCH`
//! (server-side apply included) `patch`, `DELETE` `delete`, or `deletecollection` on a collection.
//!
//! The layer sits outside kube's retry layer, so a retried request counts once, with its last
//! status. A watch counts when the apiserver answers it (the stream then stays open). A request
//! that got no HTTP response at all (connection refused, timeout) counts with `status_code="error"`.
//!
//! The same layer notes each request's start and answer for `/healthz` when given a
//! [`Liveness`] ([`CountLayer::with_liveness`]).
//!
//! This module only counts; it never changes, delays or retries a request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{Method, Request, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::liveness::Liveness;

/// The family's name as registered: prometheus-client appends `_total` to a counter's samples,
/// which gives Argo's `controller_clientset_k8s_request_total`.
pub const FAMILY: &str = "controller_clientset_k8s_request";

/// What the family's help text says, including how it differs from Argo's.
pub const HELP: &str = "Number of kubernetes requests executed, by resource (with subresource), verb and status code; \
     unlike Argo Rollouts, no namespace or name labels (bounded cardinality)";

/// `{kind, verb, status_code}` of `controller_clientset_k8s_request_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Resource plural, with `/subresource` when there is one (`pods/status`); `discovery` for
    /// `/api`, `/apis/<group>[/<version>]`; `nonresource` for any other path (`/version`, …).
    pub kind: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// The HTTP status code (`200`, `201`, `404`, …), or `error` when no response came.
    pub status_code: String,
}

/// The counter family; cloning shares it.
pub type RequestCounts = Family<RequestLabels, Counter>;

/// What a request is about, from its method, path and query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub kind: String,
    pub verb: &'static str,
}

/// Classifies a request the way the apiserver's `RequestInfoFactory` does, for the labels.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let watch_param = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    });
    // `/api/v1/...` (core group) or `/apis/<group>/<version>/...`.
    let rest: &[&str] = match segments.as_slice() {
        ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _] => {
            return RequestInfo {
                kind: "discovery".into(),
                verb: simple_verb(method, true, false),
            };
        }
        ["api", _, rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => {
            return RequestInfo {
                kind: "nonresource".into(),
                verb: simple_verb(method, true, false),
            };
        }
    };
    // The deprecated `/watch/` prefix (`/api/v1/watch/namespaces/ns/pods`).
    let (legacy_watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    // `namespaces/<ns>/<resource>...`, except a Namespace's own subresources.
    let rest = match rest {
        ["namespaces", _, next, ..] if !matches!(*next, "status" | "finalize") => &rest[2..],
        rest => rest,
    };
    let (kind, named) = match rest {
        [] => ("nonresource".to_string(), false),
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    RequestInfo {
        kind,
        verb: simple_verb(method, !named, legacy_watch || watch_param),
    }
}

fn simple_verb(method: &Method, collection: bool, watch: bool) -> &'static str {
    match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if collection => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if collection => "deletecollection",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// The tower layer that counts; put it on the client with
/// `ClientBuilder::try_from(config)?.with_layer(&CountLayer::new(counts)).build()`.
#[derive(Clone)]
pub struct CountLayer {
    counts: RequestCounts,
    liveness: Option<std::sync::Arc<Liveness>>,
}

impl CountLayer {
    pub fn new(counts: RequestCounts) -> Self {
        Self {
            counts,
            liveness: None,
        }
    }

    /// Also notes each request's start and answer in `liveness`.
    pub fn with_liveness(self, liveness: std::sync::Arc<Liveness>) -> Self {
        Self {
            liveness: Some(liveness),
            ..self
        }
    }
}

impl<S> tower::Layer<S> for CountLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted {
            inner,
            counts: self.counts.clone(),
            liveness: self.liveness.clone(),
        }
    }
}

/// A service that counts each request's outcome, then passes the response on unchanged.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    counts: RequestCounts,
    liveness: Option<std::sync::Arc<Liveness>>,
}

impl<S, B, R> tower::Service<Request<B>> for Counted<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let info = classify(
            request.method(),
            request.uri().path(),
            request.uri().query(),
        );
        let counts = self.counts.clone();
        let pending = self.liveness.as_ref().map(Liveness::sent);
        let response = self.inner.call(request);
        Box::pin(async move {
            // The whole guard moves in, so the request ends (answered or not) with the future.
            let mut pending = pending;
            let result = response.await;
            if let Some(pending) = pending.as_mut() {
                pending.answered = result.is_ok();
            }
            let status_code = match &result {
                Ok(response) => response.status().as_str().to_string(),
                Err(_) => "error".to_string(),
            };
            counts
                .get_or_create(&RequestLabels {
                    kind: info.kind,
                    verb: info.verb.to_string(),
                    status_code,
                })
                .inc();
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service};

    #[test]
    fn paths_are_classified_as_the_apiserver_does() {
        let get = Method::GET;
        #[rustfmt::skip]
        let table: &[(&Method, &str, Option<&str>, &str, &str)] = &[
            // Core group, namespaced.
            (&get, "/api/v1/namespaces/ns/pods", None, "pods", "list"),
            (&get, "/api/v1/namespaces/ns/pods/x", None, "pods", "get"),
            (&get, "/api/v1/namespaces/ns/pods", Some("watch=true&resourceVersion=1"), "pods", "watch"),
            (&get, "/api/v1/namespaces/ns/pods", Some("labelSelector=a%3Db&watch=1"), "pods", "watch"),
            (&get, "/api/v1/namespaces/ns/pods", Some("watchy=true"), "pods", "list"),
            (&Method::PATCH, "/api/v1/namespaces/ns/pods/x/status", Some("fieldManager=sluice"), "pods/status", "patch"),
            (&Method::POST, "/api/v1/namespaces/ns/pods/x/eviction", None, "pods/eviction", "create"),
            (&Method::POST, "/api/v1/namespaces/ns/services", None, "services", "create"),
            (&Method::DELETE, "/api/v1/namespaces/ns/services/web", None, "services", "delete"),
            (&Method::DELETE, "/api/v1/namespaces/ns/pods", None, "pods", "deletecollection"),
            // Named groups.
            (&Method::POST, "/apis/apps/v1/namespaces/ns/replicasets", None, "replicasets", "create"),
            (&Method::PUT, "/apis/apps/v1/namespaces/ns/deployments/web/scale", None, "deployments/scale", "update"),
            (&Method::PATCH, "/apis/flagger.app/v1beta1/namespaces/ns/canaries/web/status", None, "canaries/status", "patch"),
            (&get, "/apis/argoproj.io/v1alpha1/rollouts", Some("watch=true"), "rollouts", "watch"),
            (&get, "/apis/argoproj.io/v1alpha1/namespaces/ns/rollouts", Some("limit=500"), "rollouts", "list"),
            (&Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/ns/leases/sluice", None, "leases", "update"),
            // Cluster-scoped objects, and Namespaces themselves.
            (&get, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.y", None, "customresourcedefinitions", "get"),
            (&get, "/api/v1/nodes", None, "nodes", "list"),
            (&get, "/api/v1/namespaces", None, "namespaces", "list"),
            (&get, "/api/v1/namespaces/ns", None, "namespaces", "get"),
            (&Method::PUT, "/api/v1/namespaces/ns/finalize", None, "namespaces/finalize", "update"),
            (&Method::PATCH, "/api/v1/namespaces/ns/status", None, "namespaces/status", "patch"),
            // The deprecated watch prefix.
            (&get, "/api/v1/watch/namespaces/ns/pods", None, "pods", "watch"),
            (&get, "/apis/apps/v1/watch/replicasets", None, "replicasets", "watch"),
            // Discovery and other paths.
            (&get, "/api", None, "discovery", "list"),
            (&get, "/api/v1", None, "discovery", "list"),
            (&get, "/apis", None, "discovery", "list"),
            (&get, "/apis/apps", None, "discovery", "list"),
            (&get, "/apis/apps/v1", None, "discovery", "list"),
            (&get, "/version", None, "nonresource", "list"),
            (&get, "/", None, "nonresource", "list"),
            (&get, "", None, "nonresource", "list"),
            // Doubled or trailing slashes do not change the meaning.
            (&get, "/api/v1/namespaces/ns/pods/", None, "pods", "list"),
            (&get, "//apis/apps/v1//namespaces/ns/deployments/web", None, "deployments", "get"),
        ];
        for (method, path, query, kind, verb) in table {
            let info = classify(method, path, *query);
            assert_eq!(
                (info.kind.as_str(), info.verb),
                (*kind, *verb),
                "{method} {path}?{}",
                query.unwrap_or("")
            );
        }
    }

    /// An inner service answering every request with `status`, or failing without a response.
    #[derive(Clone)]
    struct Answer(Option<u16>);

    impl Service<Request<()>> for Answer {
        type Response = Response<()>;
        type Error = &'static str;
        type Future = std::future::Ready<Result<Response<()>, &'static str>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::ready(match self.0 {
                Some(code) => Ok(Response::builder()
                    .status(code)
                    .body(())
                    .expect("a response")),
                None => Err("connection refused"),
            })
        }
    }

    fn labels(kind: &str, verb: &str, status_code: &str) -> RequestLabels {
        RequestLabels {
            kind: kind.into(),
            verb: verb.into(),
            status_code: status_code.into(),
        }
    }

    #[tokio::test]
    async fn each_response_is_counted_with_its_status_and_passed_on() {
        let counts = RequestCounts::default();
        let layer = CountLayer::new(counts.clone());
        let request = |method: Method, uri: &str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .expect("a request")
        };
        let mut created = layer.layer(Answer(Some(201)));
        for _ in 0..2 {
            let response = created
                .call(request(
                    Method::POST,
                    "/apis/apps/v1/namespaces/ns/replicasets?fieldManager=sluice",
                ))
                .await
                .expect("answered");
            assert_eq!(response.status(), 201);
        }
        let mut missing = layer.layer(Answer(Some(404)));
        missing
            .call(request(Method::GET, "/api/v1/namespaces/ns/services/web"))
            .await
            .expect("answered");
        let mut down = layer.layer(Answer(None));
        let err = down
            .call(request(
                Method::GET,
                "/apis/flagger.app/v1beta1/namespaces/ns/canaries?watch=true",
            ))
            .await
            .expect_err("no response");
        assert_eq!(err, "connection refused");

        let value = |l: RequestLabels| counts.get(&l).map(|c| c.get());
        assert_eq!(value(labels("replicasets", "create", "201")), Some(2));
        assert_eq!(value(labels("services", "get", "404")), Some(1));
        assert_eq!(value(labels("canaries", "watch", "error")), Some(1));
        assert_eq!(value(labels("replicasets", "create", "200")), None);
    }
}
