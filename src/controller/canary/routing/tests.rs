use serde_json::json;

use super::*;

fn canary(analysis: Value, provider: &str) -> Canary {
    serde_json::from_value(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": "test", "uid": "u-1"},
        "spec": {
            "provider": provider,
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "service": {"port": 80, "hosts": ["app.example.com"],
                        "gatewayRefs": [{"name": "gw", "namespace": "infra"}]},
            "analysis": analysis,
        },
    }))
    .expect("a Canary")
}

const GW: Provider = Provider::GatewayApi("v1");

fn split(canary: i32) -> Split {
    Split {
        primary: 100 - canary,
        canary,
        mirrored: false,
    }
}

#[test]
fn providers_parse_like_upstream() {
    assert_eq!(Provider::parse("kubernetes"), Parsed::NoRouter);
    assert_eq!(Provider::parse("gatewayapi:v1"), Parsed::Routed(GW));
    assert_eq!(Provider::parse("gatewayapi"), Parsed::Routed(GW));
    assert_eq!(
        Provider::parse("gatewayapi:v1beta1"),
        Parsed::Routed(Provider::GatewayApi("v1beta1"))
    );
    assert_eq!(Provider::parse("istio"), Parsed::Routed(Provider::Istio));
    assert_eq!(
        Provider::parse("linkerd"),
        Parsed::Routed(Provider::Smi("v1alpha2"))
    );
    assert_eq!(
        Provider::parse("smi:v1alpha3"),
        Parsed::Routed(Provider::Smi("v1alpha3"))
    );
    assert_eq!(
        Provider::parse("traefik"),
        Parsed::Routed(Provider::Traefik)
    );
    assert_eq!(
        Provider::parse("smi:v1alpha4"),
        Parsed::Routed(Provider::Smi("v1alpha4"))
    );
    assert_eq!(Provider::parse("nginx"), Parsed::Routed(Provider::Nginx));
    assert_eq!(Provider::parse("contour"), Parsed::Unsupported);
    assert_eq!(Provider::parse("smi:v1alpha1"), Parsed::Unsupported);
}

#[test]
fn gateway_route_is_flaggers_shape_and_reads_back() {
    let c = canary(json!({"stepWeight": 20}), "gatewayapi:v1");
    let objects = render(&c, GW, split(20), None).expect("rendered");
    assert_eq!(objects.len(), 1);
    let route = &objects[0];
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(route["kind"], "HTTPRoute");
    assert_eq!(route["metadata"]["name"], "podinfo");
    assert_eq!(route["metadata"]["namespace"], "test");
    assert_eq!(route["metadata"]["ownerReferences"][0]["kind"], "Canary");
    assert_eq!(route["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        route["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/reconcile"],
        "disabled"
    );
    assert_eq!(
        route["metadata"]["annotations"]["helm.toolkit.fluxcd.io/driftDetection"],
        "disabled"
    );
    assert_eq!(
        route["spec"]["parentRefs"],
        json!([{"name": "gw", "namespace": "infra"}])
    );
    assert_eq!(route["spec"]["hostnames"], json!(["app.example.com"]));
    assert_eq!(
        route["spec"]["rules"],
        json!([{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [
                {"group": "", "kind": "Service", "name": "podinfo-primary", "port": 80, "weight": 80},
                {"group": "", "kind": "Service", "name": "podinfo-canary", "port": 80, "weight": 20},
            ],
        }])
    );
    assert_eq!(
        read(GW, route, "podinfo-primary", "podinfo-canary"),
        Some(RouterWeights {
            canary_weight: 20,
            mirrored: false
        })
    );
}

#[test]
fn checksum_follows_weights_and_spec() {
    let c = canary(json!({"stepWeight": 20}), "gatewayapi:v1");
    let sum = |c: &Canary, w| {
        render(c, GW, split(w), None).unwrap()[0]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
            .clone()
    };
    assert_eq!(sum(&c, 20), sum(&c, 20));
    assert_ne!(sum(&c, 20), sum(&c, 40));
    let mut other = c.clone();
    other.spec.service.as_mut().unwrap().hosts = vec!["b.example.com".into()];
    assert_ne!(sum(&c, 20), sum(&other, 20));
}

#[test]
fn ab_testing_routes_matching_requests_by_a_first_rule() {
    let c = canary(
        json!({"iterations": 3, "match": [
            {"headers": {"x-canary": {"exact": "insider"}}},
            {"headers": {"cookie": {"prefix": "canary=1"}}},
        ]}),
        "gatewayapi:v1",
    );
    let route = &render(&c, GW, split(100), None).unwrap()[0];
    let rules = route["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0]["matches"],
        json!([
            {"path": {"type": "PathPrefix", "value": "/"},
             "headers": [{"name": "x-canary", "type": "Exact", "value": "insider"}]},
            {"path": {"type": "PathPrefix", "value": "/"},
             "headers": [{"name": "cookie", "type": "RegularExpression", "value": "^canary=1.*"}]},
        ])
    );
    assert_eq!(rules[0]["backendRefs"][1]["weight"], 100);
    assert_eq!(
        rules[1],
        json!({"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
               "backendRefs": [{"group": "", "kind": "Service", "name": "podinfo-primary",
                                "port": 80, "weight": 100}]})
    );
    assert_eq!(
        read(GW, route, "podinfo-primary", "podinfo-canary").map(|w| w.canary_weight),
        Some(100)
    );
}

#[test]
fn blue_green_mirroring_adds_a_request_mirror_filter() {
    let c = canary(json!({"iterations": 3, "mirror": true}), "gatewayapi:v1");
    let mirrored = Split {
        primary: 100,
        canary: 0,
        mirrored: true,
    };
    let route = &render(&c, GW, mirrored, None).unwrap()[0];
    assert_eq!(
        route["spec"]["rules"][0]["filters"],
        json!([{"type": "RequestMirror", "requestMirror": {"backendRef":
            {"group": "", "kind": "Service", "name": "podinfo-canary", "port": 80}}}])
    );
    assert_eq!(
        read(GW, route, "podinfo-primary", "podinfo-canary"),
        Some(RouterWeights {
            canary_weight: 0,
            mirrored: true
        })
    );
    let plain = &render(&c, GW, split(0), None).unwrap()[0];
    assert!(plain["spec"]["rules"][0].get("filters").is_none());
}

#[test]
fn gateway_needs_gateway_refs_and_supported_matches() {
    let mut c = canary(json!({"stepWeight": 10}), "gatewayapi:v1");
    c.spec.service.as_mut().unwrap().gateway_refs.clear();
    let e = render(&c, GW, split(0), None).unwrap_err();
    assert!(e.contains("spec.service.gatewayRefs"), "{e}");
    let c = canary(
        json!({"iterations": 2, "match": [{"headers": {"x": {"suffix": "y"}}}]}),
        "gatewayapi:v1",
    );
    let e = render(&c, GW, split(0), None).unwrap_err();
    assert!(e.contains("analysis.match[0].headers.x"), "{e}");
}

#[test]
fn istio_delegation_renders_a_delegate_without_hosts_or_gateways() {
    let mut c = canary(json!({"stepWeight": 10}), "istio");
    let service = c.spec.service.as_mut().unwrap();
    service.delegation = Some(true);
    let error = render(&c, Provider::Istio, split(10), None).unwrap_err();
    assert!(error.starts_with("service.delegation"), "{error}");
    let service = c.spec.service.as_mut().unwrap();
    service.hosts.clear();
    let vs = &render(&c, Provider::Istio, split(10), None).unwrap()[0];
    assert!(vs["spec"].get("hosts").is_none(), "{vs}");
    assert!(vs["spec"].get("gateways").is_none(), "{vs}");
    assert_eq!(vs["spec"]["http"][0]["route"][1]["weight"], 10);
}

#[test]
fn istio_virtual_service_and_destination_rules() {
    let c = canary(
        json!({"iterations": 2, "match": [{"headers": {"x-canary": {"exact": "1"}}}]}),
        "istio",
    );
    let objects = render(&c, Provider::Istio, split(100), None).unwrap();
    let kinds: Vec<_> = objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("VirtualService", "podinfo"),
            ("DestinationRule", "podinfo-primary"),
            ("DestinationRule", "podinfo-canary"),
        ]
    );
    let vs = &objects[0];
    assert_eq!(vs["spec"]["hosts"], json!(["app.example.com", "podinfo"]));
    let http = vs["spec"]["http"].as_array().unwrap();
    assert_eq!(
        http[0]["match"],
        json!([{"headers": {"x-canary": {"exact": "1"}}}])
    );
    assert_eq!(http[0]["route"][1]["destination"]["host"], "podinfo-canary");
    assert_eq!(http[0]["route"][1]["weight"], 100);
    assert_eq!(http[1]["route"].as_array().unwrap().len(), 1);
    assert_eq!(
        read(Provider::Istio, vs, "podinfo-primary", "podinfo-canary").map(|w| w.canary_weight),
        Some(100)
    );
}

#[test]
fn smi_and_traefik_split_and_refuse_what_they_cannot_route() {
    let c = canary(json!({"stepWeight": 10}), "smi:v1alpha2");
    let ts = &render(&c, Provider::Smi("v1alpha2"), split(30), None).unwrap()[0];
    assert_eq!(ts["apiVersion"], "split.smi-spec.io/v1alpha2");
    assert_eq!(
        ts["spec"],
        json!({"service": "podinfo", "backends": [
            {"service": "podinfo-primary", "weight": 70},
            {"service": "podinfo-canary", "weight": 30}]})
    );
    assert_eq!(
        read(
            Provider::Smi("v1alpha2"),
            ts,
            "podinfo-primary",
            "podinfo-canary"
        )
        .map(|w| w.canary_weight),
        Some(30)
    );
    let t = &render(&c, Provider::Traefik, split(40), None).unwrap()[0];
    assert_eq!(t["spec"]["weighted"]["services"][1]["weight"], 40);
    assert_eq!(
        read(Provider::Traefik, t, "podinfo-primary", "podinfo-canary").map(|w| w.canary_weight),
        Some(40)
    );
    let ab = canary(
        json!({"iterations": 2, "match": [{"headers": {"x": {"exact": "1"}}}]}),
        "smi:v1alpha2",
    );
    assert!(render(&ab, Provider::Smi("v1alpha2"), split(0), None).is_err());
    let mirror = canary(json!({"iterations": 2, "mirror": true}), "traefik");
    assert!(render(&mirror, Provider::Traefik, split(0), None).is_err());
}

#[test]
fn relative_weights_read_as_a_share_of_100() {
    let ts = json!({"spec": {"backends": [
        {"service": "p", "weight": 3}, {"service": "c", "weight": 1}]}});
    assert_eq!(
        read(Provider::Smi("v1alpha3"), &ts, "p", "c").map(|w| w.canary_weight),
        Some(25)
    );
    let empty = json!({"spec": {"backends": [
        {"service": "p", "weight": 0}, {"service": "c", "weight": 0}]}});
    assert_eq!(read(Provider::Smi("v1alpha3"), &empty, "p", "c"), None);
    let other = json!({"spec": {"backends": [{"service": "x", "weight": 1}]}});
    assert_eq!(read(Provider::Smi("v1alpha3"), &other, "p", "c"), None);
}

fn route(generation: i64, parents: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "podinfo", "namespace": "test", "generation": generation},
        "spec": {"parentRefs": [{"name": "gw"}]}, "status": {"parents": parents},
    }))
    .unwrap()
}

fn parent(name: &str, generation: i64, status: &str, reason: &str) -> Value {
    json!({"parentRef": {"name": name}, "controllerName": "traefik.io/gateway-controller",
           "conditions": [{"type": "Accepted", "status": status, "reason": reason,
                           "observedGeneration": generation, "message": "nope"}]})
}

#[test]
fn a_write_is_applied_once_the_cache_shows_it() {
    assert!(not_applied(None, 1, None).is_some());
    let stale = not_applied(Some(&route(1, json!([]))), 2, None).unwrap();
    assert!(stale.contains("generation 1"), "{stale}");
    assert_eq!(not_applied(Some(&route(2, json!([]))), 2, None), None);
    assert_eq!(not_applied(Some(&route(3, json!([]))), 2, None), None);
    let split: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
        "metadata": {"name": "podinfo", "generation": 4}, "spec": {},
    }))
    .unwrap();
    assert_eq!(not_applied(Some(&split), 4, None), None);
    assert!(not_applied(Some(&split), 5, None).is_some());
}

#[test]
fn a_route_is_accepted_once_every_gateway_accepted_its_generation() {
    let ok = |g| parent("gw", g, "True", "Accepted");
    assert_eq!(acceptance(&route(2, json!([ok(2)]))), Acceptance::Accepted);
    // Nobody reported: a Gateway that does not exist, or no controller for its class.
    let Acceptance::Unreported(missing) = acceptance(&route(2, json!([]))) else {
        panic!("unreported")
    };
    assert_eq!(missing[0].0, "test/gw");
    assert!(
        missing[0].1.contains("no Gateway controller"),
        "{missing:?}"
    );
    // A report on an older generation is not one on this.
    let Acceptance::Unreported(missing) = acceptance(&route(3, json!([ok(2)]))) else {
        panic!("stale")
    };
    assert!(missing[0].1.contains("generation 2, not 3"), "{missing:?}");
    // A report for another parent (a ref since removed) does not count.
    assert!(matches!(
        acceptance(&route(2, json!([parent("old", 2, "True", "Accepted")]))),
        Acceptance::Unreported(_)
    ));
    // A refusal names the Gateway and the reason.
    assert_eq!(
        acceptance(&route(
            2,
            json!([parent("gw", 2, "False", "NotAllowedByListeners")])
        )),
        Acceptance::Refused {
            gateway: "test/gw".into(),
            reason: "NotAllowedByListeners".into(),
            message: "nope".into()
        }
    );
    // Every parentRef must accept: one of two is not enough.
    let mut two = route(2, json!([ok(2)]));
    two.data["spec"]["parentRefs"] =
        json!([{"name": "gw"}, {"name": "other", "namespace": "infra", "sectionName": "web"}]);
    let Acceptance::Unreported(missing) = acceptance(&two) else {
        panic!("one of two")
    };
    assert_eq!(missing[0].0, "infra/other (listener web)");
    two.data["status"]["parents"] = json!([ok(2), {
        "parentRef": {"name": "other", "namespace": "infra", "sectionName": "web"},
        "conditions": [{"type": "Accepted", "status": "True", "observedGeneration": 2}]}]);
    assert_eq!(acceptance(&two), Acceptance::Accepted);
}

fn sticky_canary(cookies: Value) -> Canary {
    let mut c = canary(
        json!({"interval": "30s", "stepWeight": 20,
               "sessionAffinity": {"cookieName": "flagger-cookie", "maxAge": 7200}}),
        "gatewayapi:v1",
    );
    c.status = Some(serde_json::from_value(cookies).unwrap());
    c
}

#[test]
fn session_affinity_pins_cookie_holders_to_the_canary_during_a_run() {
    let c = sticky_canary(json!({"sessionAffinityCookie": "flagger-cookie=abc123"}));
    let route = &render(&c, GW, split(20), None).unwrap()[0];
    assert_eq!(
        route["spec"]["rules"],
        json!([
            {
                "matches": [{"headers": [{"name": "Cookie", "type": "RegularExpression",
                                          "value": ".*flagger-cookie=abc123.*"}]}],
                "backendRefs": [
                    {"group": "", "kind": "Service", "name": "podinfo-primary", "port": 80, "weight": 0},
                    {"group": "", "kind": "Service", "name": "podinfo-canary", "port": 80, "weight": 100},
                ],
            },
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [
                    {"group": "", "kind": "Service", "name": "podinfo-primary", "port": 80, "weight": 80},
                    {"group": "", "kind": "Service", "name": "podinfo-canary", "port": 80, "weight": 20,
                     "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                         "add": [{"name": "Set-Cookie",
                                  "value": "flagger-cookie=abc123; Max-Age=7200"}]}}]},
                ],
            },
        ])
    );
    // The weight is the weighted rule's, not the cookie rule's.
    assert_eq!(
        read(GW, route, "podinfo-primary", "podinfo-canary").map(|w| w.canary_weight),
        Some(20)
    );
}

#[test]
fn session_affinity_expires_the_last_runs_cookie_at_weight_zero() {
    let c = sticky_canary(json!({"previousSessionAffinityCookie": "flagger-cookie=abc123"}));
    let route = &render(&c, GW, split(0), None).unwrap()[0];
    let rules = route["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{rules:#?}");
    assert_eq!(
        rules[0]["matches"][0]["headers"][0]["value"],
        ".*flagger-cookie=abc123.*"
    );
    assert_eq!(rules[0]["backendRefs"][0]["weight"], 100);
    assert_eq!(rules[0]["backendRefs"][1]["weight"], 0);
    assert_eq!(
        rules[0]["filters"],
        json!([{"type": "ResponseHeaderModifier", "responseHeaderModifier": {
            "add": [{"name": "Set-Cookie", "value": "flagger-cookie=abc123; Max-Age=-1"}]}}])
    );
    // No cookie rule sends anything to the canary, and no Set-Cookie on the weighted rule.
    assert!(rules[1]["backendRefs"][1].get("filters").is_none());
    assert_eq!(
        read(GW, route, "podinfo-primary", "podinfo-canary").map(|w| w.canary_weight),
        Some(0)
    );
    // Without any cookie: the plain weighted rule only (upstream repeats it).
    let plain = &render(&sticky_canary(json!({})), GW, split(0), None).unwrap()[0];
    assert_eq!(plain["spec"]["rules"].as_array().unwrap().len(), 1);
}

#[test]
fn session_affinity_primary_cookie_and_attributes() {
    let mut c = sticky_canary(json!({"sessionAffinityCookie": "c=1",
                                     "primarySessionAffinityCookie": "p=2"}));
    c.spec.analysis.as_mut().unwrap().session_affinity = Some(
        serde_json::from_value(json!({"cookieName": "c", "primaryCookieName": "p",
            "domain": "example.com", "path": "/app", "sameSite": "Lax", "secure": true,
            "httpOnly": true, "partitioned": true}))
        .unwrap(),
    );
    // Cookie values are escaped in the regular expression.
    c.spec.service.as_mut().unwrap().r#match =
        serde_json::from_value(json!([{"uri": {"prefix": "/api"}}])).unwrap();
    let route = &render(&c, GW, split(40), None).unwrap()[0];
    let rules = route["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3, "{rules:#?}");
    // The service match is kept on the cookie rules.
    assert_eq!(
        rules[0]["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/api"},
                "headers": [{"name": "Cookie", "type": "RegularExpression", "value": ".*c=1.*"}]}])
    );
    assert_eq!(rules[1]["matches"][0]["headers"][0]["value"], ".*p=2.*");
    assert_eq!(rules[1]["backendRefs"][0]["weight"], 100);
    let cookie = |b: usize| {
        rules[2]["backendRefs"][b]["filters"][0]["responseHeaderModifier"]["add"][0]["value"]
            .clone()
    };
    assert_eq!(
        cookie(1),
        "c=1; Max-Age=86400; Domain=example.com; Path=/app; SameSite=Lax; Secure; HttpOnly; Partitioned"
    );
    // The primary cookie lives one analysis interval.
    assert_eq!(
        cookie(0),
        "p=2; Max-Age=30; Domain=example.com; Path=/app; SameSite=Lax; Secure; HttpOnly; Partitioned"
    );
    assert_eq!(
        read(GW, route, "podinfo-primary", "podinfo-canary").map(|w| w.canary_weight),
        Some(40)
    );
    assert_eq!(
        cookie_match("a.b=x+y")["headers"][0]["value"],
        ".*a\\.b=x\\+y.*"
    );
}

#[test]
fn session_affinity_is_refused_where_it_cannot_be_routed() {
    let mut c = sticky_canary(json!({}));
    let err = render(&c, Provider::Istio, split(20), None).unwrap_err();
    assert!(err.contains("gatewayapi"), "{err}");
    c.spec.analysis.as_mut().unwrap().r#match =
        serde_json::from_value(json!([{"headers": {"x": {"exact": "y"}}}])).unwrap();
    let err = render(&c, GW, split(20), None).unwrap_err();
    assert!(err.contains("analysis.match"), "{err}");
}

#[test]
fn cookies_are_drawn_once_per_run_and_retired_at_weight_zero() {
    let affinity: SessionAffinity =
        serde_json::from_value(json!({"cookieName": "c", "primaryCookieName": "p"})).unwrap();
    let mut drawn = 0;
    let mut fresh = || {
        drawn += 1;
        format!("v{drawn}")
    };
    let none = Cookies::default();
    // Weight 0 before a run: nothing drawn.
    assert_eq!(none.next(&affinity, 0, &mut fresh), none);
    let run = none.next(&affinity, 20, &mut fresh);
    assert_eq!(run.canary.as_deref(), Some("c=v1"));
    assert_eq!(run.primary.as_deref(), Some("p=v2"));
    // The next steps keep them.
    assert_eq!(run.next(&affinity, 40, &mut fresh), run);
    // Promotion or rollback: the canary cookie becomes the previous one.
    let done = run.next(&affinity, 0, &mut fresh);
    assert_eq!(
        done,
        Cookies {
            canary: None,
            primary: None,
            previous: Some("c=v1".into())
        }
    );
    assert_eq!(done.next(&affinity, 0, &mut fresh), done);
    // The next run draws a new cookie and keeps the previous until it ends.
    let again = done.next(&affinity, 20, &mut fresh);
    assert_eq!(again.canary.as_deref(), Some("c=v3"));
    assert_eq!(again.previous.as_deref(), Some("c=v1"));
    // A renamed cookie is drawn again.
    let renamed: SessionAffinity = serde_json::from_value(json!({"cookieName": "d"})).unwrap();
    let next = again.next(&renamed, 20, &mut fresh);
    assert_eq!(next.canary.as_deref(), Some("d=v5"));
    assert_eq!(next.primary, None);
}

#[test]
fn random_cookie_values_differ() {
    let a = random_cookie_value();
    let b = random_cookie_value();
    assert_eq!(a.len(), 16);
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
    assert_ne!(a, b);
}

fn nginx_canary(analysis: Value) -> Canary {
    let mut c = canary(analysis, "nginx");
    c.spec.ingress_ref = serde_json::from_value(json!(
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "web"}
    ))
    .unwrap();
    c
}

fn user_ingress() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "labels": {"team": "a"}, "annotations": {
            "kubernetes.io/ingress.class": "nginx",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            "argocd.argoproj.io/tracking-id": "app:networking.k8s.io/Ingress:test/web",
            "nginx.ingress.kubernetes.io/proxy-body-size": "8m",
            "nginx.ingress.kubernetes.io/canary-weight": "5"}},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": "app.example.com", "http": {
            "paths": [{"path": "/", "pathType": "Prefix",
                       "backend": {"service": {"name": "podinfo", "port": {"number": 80}}}}]}}]},
    })
}

#[test]
fn nginx_canary_ingress_copies_the_users_and_carries_the_weight() {
    let c = nginx_canary(json!({"stepWeight": 10}));
    let source = user_ingress();
    let ingress = &render(&c, Provider::Nginx, split(30), Some(&source)).unwrap()[0];
    assert_eq!(ingress["metadata"]["name"], "web-canary");
    assert_eq!(route_name(&c, Provider::Nginx), "web-canary");
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "podinfo-canary"
    );
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    let annotations = &ingress["metadata"]["annotations"];
    assert_eq!(annotations["nginx.ingress.kubernetes.io/canary"], "true");
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/canary-weight"],
        "30"
    );
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/proxy-body-size"],
        "8m"
    );
    assert!(annotations.get("argocd.argoproj.io/tracking-id").is_none());
    assert!(
        annotations
            .get("kubectl.kubernetes.io/last-applied-configuration")
            .is_none()
    );
    assert_eq!(annotations["kubernetes.io/ingress.class"], "nginx");
    assert_eq!(ingress["metadata"]["labels"], json!({"team": "a"}));
    assert_eq!(
        read(
            Provider::Nginx,
            ingress,
            "podinfo-primary",
            "podinfo-canary"
        ),
        Some(RouterWeights {
            canary_weight: 30,
            mirrored: false
        })
    );
    assert!(render(&c, Provider::Nginx, split(30), None).is_err());
}

#[test]
fn nginx_ab_testing_uses_header_and_cookie_annotations() {
    let c = nginx_canary(json!({"iterations": 2, "match": [
        {"headers": {"x-canary": {"exact": "insider"}}},
        {"headers": {"cookie": {"exact": "canary"}}},
    ]}));
    let source = user_ingress();
    let ingress = &render(&c, Provider::Nginx, split(100), Some(&source)).unwrap()[0];
    let annotations = &ingress["metadata"]["annotations"];
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/canary-by-header"],
        "x-canary"
    );
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/canary-by-header-value"],
        "insider"
    );
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/canary-by-cookie"],
        "canary"
    );
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/canary-weight"],
        "0"
    );
    assert_eq!(
        read(Provider::Nginx, ingress, "p", "c").map(|w| w.canary_weight),
        Some(100)
    );
    let back = &render(&c, Provider::Nginx, split(0), Some(&source)).unwrap()[0];
    assert!(
        back["metadata"]["annotations"]
            .get("nginx.ingress.kubernetes.io/canary-by-header")
            .is_none()
    );
    assert_eq!(
        read(Provider::Nginx, back, "p", "c").map(|w| w.canary_weight),
        Some(0)
    );
}

#[test]
fn an_annotation_only_write_is_seen_by_its_checksum() {
    let ingress: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web-canary", "generation": 1,
                     "annotations": {CHECKSUM_ANNOTATION: "old"}},
    }))
    .unwrap();
    assert!(not_applied(Some(&ingress), 1, Some("new")).is_some());
    assert_eq!(not_applied(Some(&ingress), 1, Some("old")), None);
}

/// A Routing with no watch caches (a `kind` is served only where a test adds it) whose client
/// points nowhere: only the in-memory bookkeeping is exercised.
fn offline_routing() -> Routing {
    let config = kube::Config::new("http://127.0.0.1:9".parse().expect("static URL"));
    Routing {
        client: kube::Client::try_from(config).expect("client from static config"),
        caches: BTreeMap::new(),
        expected: PerCanary::default(),
        cookies: PerCanary::default(),
        held: PerCanary::default(),
    }
}

fn with_uid(mut c: Canary, uid: &str) -> Canary {
    c.metadata.uid = Some(uid.into());
    c
}

fn refused(
    verb_error: fn(kube::Error) -> watcher::Error,
) -> Result<watcher::Event<DynamicObject>, watcher::Error> {
    let status = kube::core::Status::failure("forbidden", "Forbidden").with_code(403);
    Err(verb_error(kube::Error::Api(status.boxed())))
}

#[test]
fn a_kind_refused_before_its_first_list_is_disabled_and_later_refusals_only_logged() {
    let access = Access::default();
    assert_eq!(
        access.observe(
            RouteKind::VirtualService,
            &refused(watcher::Error::InitialListFailed)
        ),
        Watch::Disabled
    );
    assert_eq!(access.disabled(), Some(&["list"][..]));

    let access = Access::default();
    assert_eq!(
        access.observe(
            RouteKind::VirtualService,
            &refused(watcher::Error::WatchStartFailed)
        ),
        Watch::Disabled,
        "a watch refused before the first list completed"
    );
    assert_eq!(access.disabled(), Some(&["watch"][..]));

    let access = Access::default();
    let kind = RouteKind::HttpRoute;
    assert_eq!(
        access.observe(kind, &Ok(watcher::Event::Init)),
        Watch::Continue
    );
    assert_eq!(
        access.observe(kind, &Ok(watcher::Event::InitDone)),
        Watch::Continue
    );
    for error in [
        watcher::Error::WatchStartFailed,
        watcher::Error::WatchFailed,
        watcher::Error::InitialListFailed,
    ] {
        assert_eq!(access.observe(kind, &refused(error)), Watch::Refused);
    }
    assert_eq!(access.disabled(), None, "listed once: never disabled");
    let gone = kube::core::Status::failure("gone", "Expired").with_code(410);
    assert_eq!(
        access.observe(kind, &Err(watcher::Error::WatchError(gone.boxed()))),
        Watch::Continue,
        "not a refusal"
    );
}

#[tokio::test]
async fn a_disabled_kind_holds_neither_readiness_nor_other_providers() {
    let mut routing = offline_routing();
    let vs = RouteKind::VirtualService;
    let (group, kind, plural, _) = vs.watched();
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1beta1", kind), plural);
    let disabled = Arc::new(Access::default());
    disabled.disable(vs, vec!["list", "watch"]);
    routing.caches.insert(
        vs,
        Cache {
            version: "v1beta1",
            resource: ar.clone(),
            store: Writer::new(ar).as_reader(),
            access: disabled,
        },
    );
    assert!(
        routing.synced(),
        "a kind that may not be watched does not hold readiness"
    );

    let mesh = canary(json!({"stepWeight": 20}), "istio");
    let error = routing
        .permitted(&mesh, "istio")
        .expect_err("istio needs VirtualServices");
    let message = error.to_string();
    for needle in [
        "not permitted to watch VirtualService",
        "networking.istio.io/virtualservices: list, watch refused",
        "rbac.trafficRouters.istio=true",
        "destinationrules",
    ] {
        assert!(message.contains(needle), "{needle:?} in {message}");
    }
    assert!(matches!(
        routing.observe(&mesh, "istio").await,
        Err(RoutingError::NotPermitted { .. })
    ));
    let split = Split {
        primary: 100,
        canary: 0,
        mirrored: false,
    };
    assert!(matches!(
        routing.set_routes(&mesh, "istio", split).await,
        Err(RoutingError::NotPermitted { .. })
    ));
    let plain = canary(json!({}), "kubernetes");
    assert!(routing.permitted(&plain, "kubernetes").is_ok());
    assert_eq!(
        routing.observe(&plain, "kubernetes").await.ok(),
        Some(Observation::Ready(None))
    );
    // Not served at all is another error (install the CRDs), not a permission.
    let gw = canary(json!({}), "gatewayapi:v1");
    assert!(routing.permitted(&gw, "gatewayapi:v1").is_ok());
    assert!(matches!(
        routing.observe(&gw, "gatewayapi:v1").await,
        Err(RoutingError::NotServed { .. })
    ));
}

#[tokio::test]
async fn a_recreated_canary_starts_afresh_and_a_deleted_ones_state_is_dropped() {
    let routing = offline_routing();
    let refused_route = route(
        1,
        json!([parent("gw", 1, "False", "NotAllowedByListeners")]),
    );
    let first = with_uid(canary(json!({"interval": "1s"}), "gatewayapi:v1"), "u-1");
    let warned = |c: &Canary| match routing.gate(c, &refused_route) {
        Some(Observation::NotAccepted { warning, .. }) => warning.is_some(),
        other => panic!("held expected, got {other:?}"),
    };
    assert!(warned(&first), "the first refusal is told");
    assert!(!warned(&first), "once per cause");
    routing.expected.insert(
        &first,
        Expected {
            kind: RouteKind::HttpRoute,
            name: "podinfo".into(),
            generation: 7,
            checksum: None,
        },
    );
    routing.cookies.insert(
        &first,
        Cookies {
            canary: Some("c=1".into()),
            ..Default::default()
        },
    );

    // Deleted and re-created under the same name: nothing of the first one applies.
    let second = with_uid(first.clone(), "u-2");
    assert!(
        routing.expected.get(&second).is_none(),
        "no write of the old Canary to wait for"
    );
    assert!(routing.cookies.get(&second).is_none());
    assert!(warned(&second), "the new Canary is told again");

    // The sweep keeps what the store holds (by uid) and drops the rest.
    let (store, mut writer) = kube::runtime::reflector::store::<Canary>();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitApply(second.clone()));
    writer.apply_watcher_event(&watcher::Event::InitDone);
    routing.expected.insert(
        &second,
        Expected {
            kind: RouteKind::HttpRoute,
            name: "podinfo".into(),
            generation: 1,
            checksum: None,
        },
    );
    let mut other = with_uid(canary(json!({}), "gatewayapi:v1"), "u-3");
    other.metadata.name = Some("gone".into());
    routing
        .expected
        .insert(&other, routing.expected.get(&second).unwrap());
    assert!(warned(&other));
    routing.forget_absent(&store);
    assert_eq!(routing.expected.len(), 1);
    assert!(
        routing.expected.get(&second).is_some(),
        "a present Canary keeps its state"
    );
    assert_eq!(
        routing.held.len(),
        1,
        "only the present Canary's hold is kept"
    );
    assert_eq!(routing.cookies.len(), 0);

    writer.apply_watcher_event(&watcher::Event::Delete(second.clone()));
    routing.forget_absent(&store);
    assert_eq!(
        (
            routing.expected.len(),
            routing.held.len(),
            routing.cookies.len()
        ),
        (0, 0, 0)
    );
}
