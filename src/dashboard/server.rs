//! The HTTP side: routes, security headers, who is asking and what they may see or press.
//!
//! Pages and Server-Sent Events are rendered from the shared caches only; an action is the CLI's
//! patch, sent after the CSRF token and (with `--auth token`) the viewer's own RBAC allowed it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, Path, Query, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use futures::Stream;
use k8s_openapi::jiff::Timestamp;
use kube::{Client, ResourceExt};
use serde::Deserialize;

use super::actions::{self, Action};
use super::auth::{Auth, Denied, Permission, Viewer};
use super::cache::{Cache, Snapshot};
use super::csrf::Csrf;
use super::html::{esc, page};
use super::view::rollout::Controls;
use super::view::{canary, overview, rollout};
use super::{AuthMode, Config};

/// Everything a request handler needs; shared by all.
pub struct State {
    client: Client,
    cache: Cache,
    config: Config,
    csrf: Csrf,
    auth: Auth,
}

type Shared = Arc<State>;

impl State {
    pub fn new(client: Client, cache: Cache, config: Config) -> Shared {
        Arc::new(State {
            auth: Auth::new(config.auth, client.clone()),
            client,
            cache,
            config,
            csrf: Csrf::new(),
        })
    }
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const TOKEN_COOKIE: &str = "sluice_token";

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(overview_page))
        .route("/healthz", get(healthz))
        .route("/assets/dashboard.css", get(css))
        .route("/assets/dashboard.js", get(js))
        .route("/login", get(login_form).post(login))
        .route("/sse", get(sse))
        .route("/rollouts/{ns}/{name}", get(rollout_page))
        .route("/rollouts/{ns}/{name}/{action}", post(act))
        .route("/canaries/{ns}/{name}", get(canary_page))
        .layer(middleware::from_fn(same_origin_posts))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// A POST whose `Origin` names another site is refused before any handler (the sign-in form
/// too, which has no CSRF token yet); browsers send `Origin` on every cross-site POST.
async fn same_origin_posts(request: axum::extract::Request, next: middleware::Next) -> Response {
    if request.method() == axum::http::Method::POST {
        let header = |name| {
            request
                .headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        if let Some(origin) = header(header::ORIGIN)
            && !same_origin(origin, header(header::HOST).unwrap_or_default())
        {
            return forbidden("A form from another site may not post here.");
        }
    }
    next.run(request).await
}

/// Whether `origin` (`http://host:port`) is the site `host` (the Host header) serves.
fn same_origin(origin: &str, host: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| !host.is_empty() && authority.eq_ignore_ascii_case(host))
}

async fn security_headers(request: axum::extract::Request, next: middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: with it browsers send `Origin: null` on the dashboard's own form
        // posts, which could not be told from another site's.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Ready once the caches hold a full list of every kind, so no page is rendered from half a view.
async fn healthz(Extract(state): Extract<Shared>) -> Response {
    if state.cache.synced() {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the watch caches are not synced yet",
        )
            .into_response()
    }
}

async fn css() -> Response {
    asset("text/css", include_str!("assets/dashboard.css"))
}

async fn js() -> Response {
    asset("text/javascript", include_str!("assets/dashboard.js"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

// ---- who is asking, and what they may read -----------------------------------------------

/// The bearer token of a request: the Authorization header, else the sign-in cookie.
fn bearer(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return value.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("sluice_token=").map(String::from))
}

fn refusal(denied: Denied) -> Response {
    let status = match denied {
        Denied::NoToken | Denied::BadToken => StatusCode::UNAUTHORIZED,
        Denied::Review(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = format!(
        "{}<p><a href=\"/login\">Sign in</a></p>",
        esc(&denied.to_string())
    );
    (status, Html(page("Not signed in", "", "", &body))).into_response()
}

/// How long an event stream trusts its viewer's token and RBAC answers before asking again, so
/// a revoked token or Role stops the stream's updates within this time.
const REVIEW_AGAIN: Duration = Duration::from_secs(60);

/// A permission question: namespace, verb, group, resource, subresource.
type Question = (
    String,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

/// One viewer's permissions, asked once each and kept for a request, or for [`REVIEW_AGAIN`] in
/// an event stream (bounded: a handful of resources per namespace).
struct Scope {
    viewer: Viewer,
    token: Option<String>,
    reviewed: tokio::time::Instant,
    answers: HashMap<Question, bool>,
}

impl Scope {
    async fn of(state: &State, headers: &HeaderMap) -> Result<Scope, Response> {
        let token = bearer(headers);
        let viewer = state
            .auth
            .authenticate(token.as_deref())
            .await
            .map_err(refusal)?;
        Ok(Scope {
            viewer,
            token,
            reviewed: tokio::time::Instant::now(),
            answers: HashMap::new(),
        })
    }

    /// In a long-lived stream: after [`REVIEW_AGAIN`], the token is reviewed again and the RBAC
    /// answers forgotten; `false` once the token is no longer accepted (or is someone else's).
    async fn still_valid(&mut self, state: &State) -> bool {
        if self.reviewed.elapsed() < REVIEW_AGAIN {
            return true;
        }
        match state.auth.authenticate(self.token.as_deref()).await {
            Ok(viewer) if viewer == self.viewer => {
                self.reviewed = tokio::time::Instant::now();
                self.answers.clear();
                true
            }
            _ => false,
        }
    }

    async fn can(
        &mut self,
        state: &State,
        verb: &'static str,
        group: &'static str,
        resource: &'static str,
        subresource: Option<&'static str>,
        namespace: &str,
    ) -> bool {
        let key = (namespace.to_string(), verb, group, resource, subresource);
        if let Some(answer) = self.answers.get(&key) {
            return *answer;
        }
        let permission = Permission {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name: None,
        };
        // A failed review refuses, and is asked again next time.
        match state.auth.can(&self.viewer, &permission).await {
            Ok(answer) => {
                self.answers.insert(key, answer);
                answer
            }
            Err(e) => {
                tracing::warn!(error = %e, "SubjectAccessReview failed");
                false
            }
        }
    }

    /// The caches' contents this viewer may list, namespace by namespace.
    async fn visible(&mut self, state: &State, mut snap: Snapshot) -> Snapshot {
        if self.viewer == Viewer::Local {
            return snap;
        }
        snap.rollouts = self
            .keep(state, snap.rollouts, "argoproj.io", "rollouts")
            .await;
        snap.runs = self
            .keep(state, snap.runs, "argoproj.io", "analysisruns")
            .await;
        snap.canaries = self
            .keep(state, snap.canaries, "flagger.app", "canaries")
            .await;
        snap.replica_sets = self
            .keep(state, snap.replica_sets, "apps", "replicasets")
            .await;
        snap.events = self.keep(state, snap.events, "", "events").await;
        snap
    }

    async fn keep<K: kube::Resource>(
        &mut self,
        state: &State,
        objects: Vec<Arc<K>>,
        group: &'static str,
        resource: &'static str,
    ) -> Vec<Arc<K>> {
        let mut kept = Vec::with_capacity(objects.len());
        for object in objects {
            let ns = object.meta().namespace.clone().unwrap_or_default();
            if self.can(state, "list", group, resource, None, &ns).await {
                kept.push(object);
            }
        }
        kept
    }

    /// The actions this viewer may press on the Rollout, and why there are none when so.
    async fn actions(
        &mut self,
        state: &State,
        r: &crate::api::argo::rollout::Rollout,
    ) -> (Vec<Action>, &'static str) {
        if !state.config.enable_actions {
            return (
                Vec::new(),
                "Read-only: this dashboard runs without --enable-actions.",
            );
        }
        let ns = r.namespace().unwrap_or_default();
        let mut allowed = Vec::new();
        for action in actions::ALL {
            let mut ok = true;
            for need in action.needs(r) {
                ok &= self
                    .can(
                        state,
                        need.verb,
                        "argoproj.io",
                        "rollouts",
                        need.subresource,
                        &ns,
                    )
                    .await;
            }
            if ok {
                allowed.push(action);
            }
        }
        (
            allowed,
            "Read-only: your RBAC allows no patch of this Rollout.",
        )
    }
}

// ---- pages ------------------------------------------------------------------------------------

/// Which page a live stream renders.
enum Live {
    Overview,
    Rollout(String, String),
    Canary(String, String),
}

impl Live {
    fn parse(path: &str) -> Option<Live> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match parts.as_slice() {
            [""] => Some(Live::Overview),
            ["rollouts", ns, name] => Some(Live::Rollout(ns.to_string(), name.to_string())),
            ["canaries", ns, name] => Some(Live::Canary(ns.to_string(), name.to_string())),
            _ => None,
        }
    }
}

/// Renders a page's `<main>` for the viewer; `None` when the object is not (visible) there.
async fn render(state: &State, scope: &mut Scope, live: &Live) -> Option<String> {
    let snap = scope.visible(state, state.cache.snapshot()).await;
    let now = Timestamp::now();
    match live {
        Live::Overview => Some(overview::render(&snap, now)),
        Live::Rollout(ns, name) => {
            let r = snap
                .rollouts
                .iter()
                .find(|r| r.namespace().as_deref() == Some(ns.as_str()) && &r.name_any() == name)?
                .clone();
            let (allowed, read_only) = scope.actions(state, &r).await;
            let csrf = state.csrf.token(&scope.viewer.subject());
            let controls = Controls {
                csrf: &csrf,
                allowed: &allowed,
                read_only,
            };
            rollout::render(&snap, ns, name, &controls, now)
        }
        Live::Canary(ns, name) => canary::render(&snap, ns, name, now),
    }
}

async fn show(state: Shared, headers: HeaderMap, title: String, path: String) -> Response {
    let mut scope = match Scope::of(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(live) = Live::parse(&path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match render(&state, &mut scope, &live).await {
        Some(main) => {
            let csrf = state.csrf.token(&scope.viewer.subject());
            Html(page(&title, &path, &csrf, &main)).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Html(page(
                "Not found",
                "",
                "",
                &format!(
                    "<p>{} is not in the dashboard's cache, or your RBAC does not let you list it.</p>",
                    esc(&title)
                ),
            )),
        )
            .into_response(),
    }
}

async fn overview_page(Extract(state): Extract<Shared>, headers: HeaderMap) -> Response {
    show(state, headers, "Overview".into(), "/".into()).await
}

async fn rollout_page(
    Extract(state): Extract<Shared>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/rollouts/{ns}/{name}");
    show(state, headers, format!("Rollout {ns}/{name}"), path).await
}

async fn canary_page(
    Extract(state): Extract<Shared>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/canaries/{ns}/{name}");
    show(state, headers, format!("Canary {ns}/{name}"), path).await
}

// ---- live updates -------------------------------------------------------------------------------

#[derive(Deserialize)]
struct SseQuery {
    page: String,
}

/// Server-Sent Events: the page's `<main>` at once, then again after every change of the caches
/// (at most every 250 ms). A stream holds one change receiver and nothing queued.
async fn sse(
    Extract(state): Extract<Shared>,
    Query(query): Query<SseQuery>,
    headers: HeaderMap,
) -> Response {
    let scope = match Scope::of(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(live) = Live::parse(&query.page) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let changes = state.cache.changes();
    Sse::new(updates(state, scope, live, changes))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn updates(
    state: Shared,
    scope: Scope,
    live: Live,
    changes: tokio::sync::watch::Receiver<u64>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold(
        (state, scope, live, changes, true),
        |(state, mut scope, live, mut changes, first)| async move {
            if !first {
                changes.changed().await.ok()?;
                tokio::time::sleep(Duration::from_millis(250)).await;
                changes.borrow_and_update();
                if !scope.still_valid(&state).await {
                    return None;
                }
            }
            let main = render(&state, &mut scope, &live).await.unwrap_or_else(|| {
                "<p class=\"none\">Gone (deleted, or no longer visible to you).</p>".into()
            });
            let event = SseEvent::default().event("main").data(main);
            Some((Ok(event), (state, scope, live, changes, false)))
        },
    )
}

// ---- actions ---------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
}

fn forbidden(why: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(page("Forbidden", "", "", &format!("<p>{}</p>", esc(why)))),
    )
        .into_response()
}

async fn act(
    Extract(state): Extract<Shared>,
    Path((ns, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let mut scope = match Scope::of(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(action) = Action::parse(&action) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !state.csrf.verify(&scope.viewer.subject(), &form.csrf) {
        return forbidden(
            "The form's CSRF token is missing or not yours: reload the page and press again.",
        );
    }
    if !state.config.enable_actions {
        return forbidden(
            "This dashboard is read-only: start it with --enable-actions to allow actions.",
        );
    }
    let Some(rollout) = state
        .cache
        .rollouts
        .state()
        .into_iter()
        .find(|r| r.namespace().as_deref() == Some(ns.as_str()) && r.name_any() == name)
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Asked afresh for the named object: an earlier page's answer is not reused for a write.
    for need in action.needs(&rollout) {
        let permission = Permission {
            verb: need.verb,
            group: "argoproj.io",
            resource: "rollouts",
            subresource: need.subresource,
            namespace: &ns,
            name: Some(&name),
        };
        match state.auth.can(&scope.viewer, &permission).await {
            Ok(true) => {}
            Ok(false) => {
                return forbidden(&format!(
                    "{} may not {} rollouts{} in {ns}: {} needs it.",
                    scope.viewer.name(),
                    need.verb,
                    need.subresource
                        .map(|s| format!("/{s}"))
                        .unwrap_or_default(),
                    action.name()
                ));
            }
            Err(e) => return refusal(e),
        }
    }
    scope.answers.clear();
    match action.run(state.client.clone(), &ns, &name).await {
        Ok(message) => {
            tracing::info!(viewer = scope.viewer.name(), %ns, %name, action = action.name(), "{message}");
            Redirect::to(&format!(
                "/rollouts/{}/{}",
                super::html::seg(&ns),
                super::html::seg(&name)
            ))
            .into_response()
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Html(page(
                "Action failed",
                "",
                "",
                &format!("<p>{}</p>", esc(&e.to_string())),
            )),
        )
            .into_response(),
    }
}

// ---- sign-in (`--auth token`) ----------------------------------------------------------------

async fn login_form(Extract(state): Extract<Shared>) -> Response {
    if state.config.auth == AuthMode::Kubeconfig {
        return Redirect::to("/").into_response();
    }
    Html(page(
        "Sign in",
        "",
        "",
        "<h1>Sign in</h1><form method=\"post\" action=\"/login\"><label>Kubernetes bearer token \
         <input type=\"password\" name=\"token\" autocomplete=\"off\"></label> \
         <button type=\"submit\">Sign in</button></form>",
    ))
    .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

/// Checks the token once, then keeps it in an HttpOnly, SameSite=Strict cookie (`Secure` when
/// the proxy in front says the request came over HTTPS).
async fn login(
    Extract(state): Extract<Shared>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let token = form.token.trim();
    if let Err(e) = state.auth.authenticate(Some(token)).await {
        return refusal(e);
    }
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let secure = if https { "; Secure" } else { "" };
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let mut response = Redirect::to("/").into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
            response
        }
        Err(_) => refusal(Denied::BadToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_dashboards_own_origin_may_post() {
        assert!(same_origin("http://127.0.0.1:3100", "127.0.0.1:3100"));
        assert!(same_origin("https://Dash.example", "dash.example"));
        assert!(!same_origin("http://evil.example", "127.0.0.1:3100"));
        assert!(!same_origin("http://127.0.0.1:3101", "127.0.0.1:3100"));
        assert!(!same_origin("null", "127.0.0.1:3100"));
        assert!(!same_origin("http://127.0.0.1:3100", ""));
    }

    #[test]
    fn a_bearer_header_wins_over_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; sluice_token=from-cookie"),
        );
        assert_eq!(bearer(&headers).as_deref(), Some("from-cookie"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer from-header"),
        );
        assert_eq!(bearer(&headers).as_deref(), Some("from-header"));
    }

    #[test]
    fn live_pages_are_the_three_kinds_only() {
        assert!(matches!(Live::parse("/"), Some(Live::Overview)));
        assert!(
            matches!(Live::parse("/rollouts/a/b"), Some(Live::Rollout(n, r)) if n == "a" && r == "b")
        );
        assert!(matches!(
            Live::parse("/canaries/a/b"),
            Some(Live::Canary(..))
        ));
        assert!(Live::parse("/secrets/a/b").is_none());
        assert!(Live::parse("/rollouts/a/b/promote").is_none());
    }
}
