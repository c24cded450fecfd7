//! `sluice dashboard` against the real cluster and a real `sluice controller`: a Rollout paused
//! at a step is shown with its current step and weight, Server-Sent Events push the promotion
//! made from the page, actions are refused without `--enable-actions` or a CSRF token, and with
//! `--auth token` each viewer's own RBAC decides (a read-only ServiceAccount gets 403, one
//! allowed to patch promotes).

mod common;

use std::time::Duration;

use common::dashboard::{DashboardProcess, Events, csrf_of};
use common::rollouts::{Fixture, fixture};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::json;
use sluice::api::argo::rollout::{Rollout, RolloutPhase};
use sluice::cli::rollouts::Session;

const TIMEOUT: Duration = Duration::from_secs(90);
const NAME: &str = "web";

/// A client that shows redirects instead of following them.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl Fixture {
    /// A Healthy Rollout updated to a second image, paused at step 1 (after `setWeight: 20`).
    async fn paused_at_step_one(&self) {
        let rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": NAME},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": NAME}},
                "template": {
                    "metadata": {"labels": {"app": NAME}},
                    "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
                },
                "strategy": {"canary": {"steps": [
                    {"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}},
                ]}},
            },
        }))
        .unwrap();
        self.rollouts
            .create(&PostParams::default(), &rollout)
            .await
            .expect("creating the Rollout");
        self.wait("Healthy", |r| phase(r) == Some(RolloutPhase::Healthy))
            .await;
        let session = Session {
            client: self.env.client.clone(),
            namespace: self.ns.name.clone(),
        };
        session
            .set_image(NAME, "web=registry.invalid/web:2")
            .await
            .expect("set image");
        self.wait("paused at step 1", |r| {
            phase(r) == Some(RolloutPhase::Paused) && step(r) == Some(1)
        })
        .await;
    }

    async fn wait(&self, what: &str, check: impl Fn(&Rollout) -> bool) -> Rollout {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let r = self.rollouts.get(NAME).await.expect("reading the Rollout");
            let observed = r.status.as_ref().is_some_and(|s| {
                s.observed_generation == r.metadata.generation.unwrap_or_default().to_string()
            });
            if observed && check(&r) {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {}\ncontroller log:\n{}",
                serde_json::to_string_pretty(&r.status).unwrap_or_default(),
                self.ctl.log_end()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn phase(r: &Rollout) -> Option<RolloutPhase> {
    r.status.as_ref().and_then(|s| s.phase)
}

fn step(r: &Rollout) -> Option<i32> {
    r.status.as_ref().and_then(|s| s.current_step_index)
}

const STEP_ONE_CURRENT: &str =
    "<li class=\"step current\" data-index=\"1\" aria-current=\"step\">pause</li>";
const STEP_THREE_CURRENT: &str =
    "<li class=\"step current\" data-index=\"3\" aria-current=\"step\">pause</li>";

async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

async fn post_action(
    client: &reqwest::Client,
    url: &str,
    csrf: Option<&str>,
    token: Option<&str>,
) -> u16 {
    let mut request = client.post(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let form: Vec<(&str, &str)> = csrf.map(|c| vec![("csrf", c)]).unwrap_or_default();
    request
        .form(&form)
        .send()
        .await
        .expect("POST")
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_page_shows_step_and_weight_and_pushes_the_promotion_made_from_it() {
    let Some(f) = fixture("dashboard").await else {
        return;
    };
    f.paused_at_step_one().await;
    let client = http();

    // Read-only by default: the page shows the step and the weight, and refuses actions.
    let ro = DashboardProcess::start(&f.env, &f.ns.name, &[]).await;
    let page_url = format!("{}/rollouts/{}/{NAME}", ro.url, f.ns.name);
    let (status, html) = get(&client, &page_url, None).await;
    assert_eq!(status, 200, "{html}\n{}", ro.log_text());
    for want in [
        STEP_ONE_CURRENT,
        "<dd id=\"weight-desired\">20%</dd>",
        "<dd id=\"step\">1/4</dd>",
        "registry.invalid/web:2",
        "registry.invalid/web:1",
        "Suspended",
        "Read-only: this dashboard runs without --enable-actions.",
    ] {
        assert!(html.contains(want), "no {want:?} in\n{html}");
    }
    assert!(
        !html.contains("action-promote"),
        "a promote button on a read-only page"
    );
    let (_, overview) = get(&client, &format!("{}/", ro.url), None).await;
    assert!(
        overview.contains(&format!("href=\"/rollouts/{}/{NAME}\"", f.ns.name)),
        "{overview}"
    );
    let csrf = csrf_of(&html);
    let promote = format!("{page_url}/promote");
    assert_eq!(post_action(&client, &promote, Some(&csrf), None).await, 403);
    drop(ro);

    // With --enable-actions: the page has the buttons; a post without the page's token is refused.
    let rw = DashboardProcess::start(&f.env, &f.ns.name, &["--enable-actions"]).await;
    let page_url = format!("{}/rollouts/{}/{NAME}", rw.url, f.ns.name);
    let (_, html) = get(&client, &page_url, None).await;
    assert!(html.contains("id=\"action-promote\""), "{html}");
    let csrf = csrf_of(&html);
    let promote = format!("{page_url}/promote");
    assert_eq!(post_action(&client, &promote, None, None).await, 403);
    assert_eq!(
        post_action(&client, &promote, Some("00ff"), None).await,
        403
    );
    // A valid token posted from another site's page is refused too.
    let cross_site = client
        .post(&promote)
        .header("Origin", "http://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(cross_site, 403);
    assert_eq!(step(&f.rollouts.get(NAME).await.unwrap()), Some(1));

    // The live stream sends the page now, and again after the promotion pressed on it.
    let mut events = Events::open(
        &client,
        &format!("{}/sse?page=/rollouts/{}/{NAME}", rw.url, f.ns.name),
    )
    .await;
    events
        .until(TIMEOUT, "step 1 current", |d| d.contains(STEP_ONE_CURRENT))
        .await;
    assert_eq!(post_action(&client, &promote, Some(&csrf), None).await, 303);
    let pushed = events
        .until(TIMEOUT, "step 3 current at 60%", |d| {
            d.contains(STEP_THREE_CURRENT) && d.contains("<dd id=\"weight-desired\">60%</dd>")
        })
        .await;
    assert!(pushed.contains("<dd id=\"step\">3/4</dd>"), "{pushed}");
    f.wait("paused at step 3", |r| step(r) == Some(3)).await;
}

/// A ServiceAccount with `rules` in the namespace, and a token for it.
async fn account_token(f: &Fixture, name: &str, rules: serde_json::Value) -> String {
    let ns = &f.ns.name;
    let accounts: Api<ServiceAccount> = Api::namespaced(f.env.client.clone(), ns);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .expect("creating a ServiceAccount");
    for manifest in [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": name}, "rules": rules}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]}),
    ] {
        f.env.create(ns, manifest).await;
    }
    accounts
        .create_token_request(
            name,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("a TokenRequest")
        .status
        .expect("a token")
        .token
}

#[tokio::test]
async fn with_token_auth_each_viewers_own_rbac_decides() {
    let Some(f) = fixture("dashboard-rbac").await else {
        return;
    };
    f.paused_at_step_one().await;
    let read = json!([
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts", "analysisruns"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    ]);
    let mut operate = read.clone();
    operate.as_array_mut().unwrap().push(json!(
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts", "rollouts/status"], "verbs": ["patch"]}
    ));
    let viewer = account_token(&f, "viewer", read).await;
    let operator = account_token(&f, "operator", operate).await;
    let nobody = account_token(&f, "nobody", json!([])).await;

    let d =
        DashboardProcess::start(&f.env, &f.ns.name, &["--auth", "token", "--enable-actions"]).await;
    let client = http();
    let page_url = format!("{}/rollouts/{}/{NAME}", d.url, f.ns.name);
    let promote = format!("{page_url}/promote");

    // No token, or one the apiserver does not accept: 401.
    assert_eq!(get(&client, &page_url, None).await.0, 401);
    assert_eq!(get(&client, &page_url, Some("not-a-token")).await.0, 401);
    // No RBAC to list Rollouts: the Rollout is not there for that viewer.
    let (status, overview) = get(&client, &format!("{}/", d.url), Some(&nobody)).await;
    assert_eq!(status, 200, "{overview}\n{}", d.log_text());
    assert!(overview.contains("No Rollouts you may list."), "{overview}");
    assert_eq!(get(&client, &page_url, Some(&nobody)).await.0, 404);

    // The read-only viewer sees the page without buttons, and a promote is refused.
    let (status, html) = get(&client, &page_url, Some(&viewer)).await;
    assert_eq!(status, 200, "{html}\n{}", d.log_text());
    assert!(html.contains(STEP_ONE_CURRENT), "{html}");
    assert!(
        html.contains("Read-only: your RBAC allows no patch"),
        "{html}"
    );
    let viewer_csrf = csrf_of(&html);
    assert_eq!(
        post_action(&client, &promote, Some(&viewer_csrf), Some(&viewer)).await,
        403
    );
    // A token's CSRF value is its viewer's only.
    let (_, html) = get(&client, &page_url, Some(&operator)).await;
    assert!(html.contains("id=\"action-promote\""), "{html}");
    let operator_csrf = csrf_of(&html);
    assert_eq!(
        post_action(&client, &promote, Some(&viewer_csrf), Some(&operator)).await,
        403
    );
    assert_eq!(step(&f.rollouts.get(NAME).await.unwrap()), Some(1));

    // The operator's promote goes through.
    assert_eq!(
        post_action(&client, &promote, Some(&operator_csrf), Some(&operator)).await,
        303,
        "{}",
        d.log_text()
    );
    f.wait("paused at step 3", |r| step(r) == Some(3)).await;
}

/// Where the browser test leaves its screenshots (test artefacts).
fn screenshots() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots")
}

#[tokio::test]
async fn in_a_real_browser_the_weight_changes_live_and_promote_is_pressed() {
    let Some(f) = fixture("dashboard-browser").await else {
        return;
    };
    let Some(mut browser) = common::browser::Browser::start().await else {
        return;
    };
    f.paused_at_step_one().await;
    let read = json!([
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts", "analysisruns"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    ]);
    let mut operate = read.clone();
    operate.as_array_mut().unwrap().push(json!(
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts", "rollouts/status"], "verbs": ["patch"]}
    ));
    let viewer = account_token(&f, "viewer", read).await;
    let operator = account_token(&f, "operator", operate).await;
    let d =
        DashboardProcess::start(&f.env, &f.ns.name, &["--auth", "token", "--enable-actions"]).await;
    let page_url = format!("{}/rollouts/{}/{NAME}", d.url, f.ns.name);

    // Sign in as the operator through the form; the overview lists the Rollout.
    browser.navigate(&format!("{}/login", d.url)).await;
    browser
        .eval(&format!(
            "document.querySelector('input[name=token]').value = {}; \
             document.querySelector('form').submit(); true",
            json!(operator)
        ))
        .await;
    browser
        .until(TIMEOUT, "the overview", &format!(
            "document.readyState === 'complete' && !!document.querySelector('a[href=\"/rollouts/{}/{NAME}\"]')",
            f.ns.name
        ))
        .await;
    browser
        .screenshot(&screenshots().join("overview.png"))
        .await;

    // The Rollout's page, live: step 1 at 20 %; a promotion made elsewhere (the CLI's patch)
    // shows as step 3 at 60 % without a reload (the marker set on the window survives).
    browser.navigate(&page_url).await;
    browser
        .until(
            TIMEOUT,
            "the event stream's first update",
            "Number(document.querySelector('main').dataset.updates || 0) >= 1",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('li.step.current').dataset.index")
            .await,
        "1"
    );
    assert_eq!(
        browser
            .eval("document.getElementById('weight-desired').textContent")
            .await,
        "20%"
    );
    browser
        .eval("window.sluiceMarker = 'no reload'; true")
        .await;
    let session = Session {
        client: f.env.client.clone(),
        namespace: f.ns.name.clone(),
    };
    session
        .intent(NAME, sluice::engine::intent::Intent::Promote)
        .await
        .expect("promote through the CLI's patch");
    browser
        .until(TIMEOUT, "step 3 at 60% pushed live", "document.getElementById('weight-desired').textContent === '60%' && document.querySelector('li.step.current').dataset.index === '3'")
        .await;
    assert_eq!(browser.eval("window.sluiceMarker").await, "no reload");
    browser.screenshot(&screenshots().join("rollout.png")).await;

    // Press promote: past the last step, the Rollout completes and the page says so.
    browser
        .eval("document.getElementById('action-promote').click(); true")
        .await;
    f.wait("Healthy after the promotion pressed in the browser", |r| {
        phase(r) == Some(RolloutPhase::Healthy)
    })
    .await;
    browser
        .until(TIMEOUT, "Healthy on the page", "document.getElementById('phase') && document.getElementById('phase').textContent === 'Healthy'")
        .await;

    // Signed in as the read-only viewer: no buttons, and a promote posted from the page anyway
    // (with the viewer's own CSRF token) is refused.
    browser.navigate(&format!("{}/login", d.url)).await;
    browser
        .eval(&format!(
            "document.querySelector('input[name=token]').value = {}; \
             document.querySelector('form').submit(); true",
            json!(viewer)
        ))
        .await;
    browser
        .until(
            TIMEOUT,
            "the overview as the viewer",
            "location.pathname === '/' && document.readyState === 'complete'",
        )
        .await;
    browser.navigate(&page_url).await;
    assert_eq!(
        browser
            .eval("document.getElementById('action-promote') === null")
            .await,
        true
    );
    let status = browser
        .eval(&format!(
            "fetch({}, {{method: 'POST', headers: {{'Content-Type': 'application/x-www-form-urlencoded'}}, \
             body: 'csrf=' + document.querySelector('meta[name=csrf-token]').content, redirect: 'manual'}}) \
             .then(r => r.status)",
            json!(format!("{page_url}/abort"))
        ))
        .await;
    assert_eq!(status, 403, "{}", d.log_text());
    assert_eq!(
        phase(&f.rollouts.get(NAME).await.unwrap()),
        Some(RolloutPhase::Healthy)
    );
}

/// The chart's dashboard (`dashboard.enabled`, off by default): its ServiceAccount and RBAC
/// applied for real, and `sluice dashboard --auth token` run with only that account's token —
/// enough to watch, review viewers and send an allowed viewer's promote.
#[tokio::test]
async fn the_charts_dashboard_account_serves_token_viewers() {
    let Some(f) = fixture("dashboard-chart").await else {
        return;
    };
    let Some(helm) = common::chart::helm_or_skip(&f.env) else {
        return;
    };
    let ns = &f.ns.name;
    let default = common::chart::render_chart(&helm, ns, false, &[]);
    assert!(
        !default.contains("component: dashboard"),
        "the dashboard is on by default"
    );

    let release = common::unique_name("dash");
    let rendered = common::service_account::run(
        std::process::Command::new(&helm)
            .args(["template", &release])
            .arg(common::chart::root().join("deploy/helm/sluice"))
            .args(["--namespace", ns])
            .args(["--set", &format!("controller.watchNamespace={ns}")])
            .args([
                "--set",
                "dashboard.enabled=true",
                "--set",
                "dashboard.enableActions=true",
            ]),
        "helm template (dashboard)",
    );
    let docs: Vec<serde_json::Value> = common::chart::documents(&rendered)
        .into_iter()
        .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "dashboard")
        .collect();
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a dashboard Deployment");
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    for want in [
        "dashboard",
        "--auth=token",
        "--enable-actions=true",
        "--address=0.0.0.0",
    ] {
        assert!(
            args.as_array().unwrap().iter().any(|a| a == want),
            "{want} not in {args}"
        );
    }
    let mut cluster_scoped = common::service_account::ClusterScoped::new(&f.env);
    let mut account = String::new();
    for d in docs
        .iter()
        .filter(|d| !matches!(d["kind"].as_str(), Some("Deployment" | "Service")))
    {
        let kind = d["kind"].as_str().unwrap();
        let name = d["metadata"]["name"].as_str().unwrap();
        if kind.starts_with("Cluster") {
            cluster_scoped
                .objects
                .push(format!("{}/{name}", kind.to_lowercase()));
        }
        if kind == "ServiceAccount" {
            account = name.to_string();
        }
        let file = f
            .env
            .dir
            .join(format!("{release}-{}.json", kind.to_lowercase()));
        std::fs::write(&file, d.to_string()).unwrap();
        common::service_account::run(
            f.env.kubectl().args(["apply", "-n", ns, "-f"]).arg(&file),
            "applying the dashboard's RBAC",
        );
        let _ = std::fs::remove_file(&file);
    }
    let token = Api::<ServiceAccount>::namespaced(f.env.client.clone(), ns)
        .create_token_request(
            &account,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("a token for the dashboard's ServiceAccount")
        .status
        .unwrap()
        .token;
    let kubeconfig = f.env.dir.join(format!("{release}.kubeconfig"));
    common::service_account::token_kubeconfig(&f.env, &token, &kubeconfig);

    f.paused_at_step_one().await;
    let operate = json!([
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts"], "verbs": ["get", "list"]},
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts", "rollouts/status"], "verbs": ["patch"]},
    ]);
    let operator = account_token(&f, "operator", operate).await;
    let d = DashboardProcess::start_as(
        &f.env,
        ns,
        &["--auth", "token", "--enable-actions"],
        &kubeconfig,
    )
    .await;
    let client = http();
    let page_url = format!("{}/rollouts/{ns}/{NAME}", d.url);
    let (status, html) = common::eventually(TIMEOUT, "the page as the operator", || async {
        let (status, html) = get(&client, &page_url, Some(&operator)).await;
        (status == 200).then_some((status, html))
    })
    .await;
    assert_eq!(status, 200);
    assert!(html.contains(STEP_ONE_CURRENT), "{html}");
    let csrf = csrf_of(&html);
    assert_eq!(
        post_action(
            &client,
            &format!("{page_url}/promote"),
            Some(&csrf),
            Some(&operator)
        )
        .await,
        303,
        "{}",
        d.log_text()
    );
    f.wait("paused at step 3", |r| step(r) == Some(3)).await;
    let log = d.log_text();
    assert!(
        !log.contains("forbidden"),
        "the chart's RBAC refused something:\n{log}"
    );
    let _ = std::fs::remove_file(&kubeconfig);
    drop(cluster_scoped);
}
