#!/usr/bin/env python3
"""tests/conformance/flagger-dataplane.py: the cluster network Flagger's e2e scripts assume, for
`tests/conformance/flagger` (standard library only, like tests/env/git-http.py).

kwok's pods run nothing and the host has no cluster DNS, so this one process stands in for both:

* an HTTP forward proxy (the controller, `sluice loadtester`, its `hey` and the scripts' `curl`
  get HTTP_PROXY/http_proxy pointing here) that resolves in-cluster names as cluster DNS does:
  `name`, `name.ns`, `name.ns.svc[.cluster.local]` (a bare name is in --default-namespace, where
  the load tester runs);
* `--real NS/NAME=HOST:PORT`: Services whose pods are real processes on the host (the load tester,
  Prometheus): requests are forwarded there unchanged;
* any other Service: its selector is read from the apiserver (through `kubectl proxy`), one of its
  Ready pods is picked, and the request is answered as podinfo answers it (`/status/<code>`,
  `/token`, `/delay/<s>`, else podinfo's JSON with the pod's name and image tag). No Ready pod:
  503, as a Service without endpoints would fail;
* `<gateway>-istio.<ns>` (Istio's Service for a Gateway API Gateway, absent here): the HTTPRoutes
  attached to Gateway `<gateway>` pick the backend as a Gateway data plane would (hostnames,
  path / header matches, backendRef weights, header modifier filters);
* Gateways of class `--gateway-class` (default `istio`: upstream's scripts use Istio's, and no
  controller serves that class here): as their controller, it reports each HTTPRoute attached
  to them `Accepted` for its generation in `status.parents` (what Istio writes), since it is
  also what routes their traffic;
* `/metrics` (origin-form, scraped by the test environment's Prometheus through file_sd): for
  every answer a pod gave, the series podinfo itself exports
  (`http_request_duration_seconds_*{kubernetes_namespace, kubernetes_pod_name, status}`, as
  Flagger's Prometheus relabels them) and Istio's proxies export
  (`istio_requests_total` / `istio_request_duration_milliseconds_*` with
  `destination_workload[_namespace]`, both reporters).

Never invents an answer for a pod that is not Ready, never answers for a name it cannot resolve
(502), and never talks to anything but the apiserver proxy and the --real addresses.
"""

import argparse
import http.client
import http.server
import json
import random
import re
import sys
import threading
import time
import urllib.parse
import urllib.request

BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
HOP = {"connection", "proxy-connection", "keep-alive", "transfer-encoding", "te", "upgrade",
       "proxy-authorization", "proxy-authenticate", "trailer"}


class Api:
    """GETs through `kubectl proxy`, cached for a second (hey sends tens of requests a second)."""

    def __init__(self, base):
        self.base = base.rstrip("/")
        self.cache = {}
        self.lock = threading.Lock()

    def get(self, path, query=None):
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        now = time.monotonic()
        with self.lock:
            hit = self.cache.get(url)
            if hit and now - hit[0] < 1.0:
                return hit[1]
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                value = json.load(r)
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
            value = None
        with self.lock:
            self.cache[url] = (now, value)
        return value


class Metrics:
    """Counters of the answers pods gave, in Prometheus' text format."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count = {}  # (ns, pod, workload, code) -> n
        self.sum = {}
        self.bucket = {}  # (ns, pod, workload, code, le) -> n

    def record(self, ns, pod, workload, app, code, seconds):
        key = (ns, pod, workload, app, str(code))
        with self.lock:
            self.count[key] = self.count.get(key, 0) + 1
            self.sum[key] = self.sum.get(key, 0.0) + seconds
            for le in BUCKETS + ["+Inf"]:
                if le == "+Inf" or seconds <= le:
                    k = key + (le,)
                    self.bucket[k] = self.bucket.get(k, 0) + 1

    def text(self):
        out = []
        with self.lock:
            for (ns, pod, wl, app, code), n in self.count.items():
                pl = podinfo_labels(ns, pod, app, code)
                out.append(f"http_request_duration_seconds_count{{{pl}}} {n}")
                out.append(f"http_request_duration_seconds_sum{{{pl}}} {self.sum[(ns, pod, wl, app, code)]}")
                for reporter in ("source", "destination"):
                    il = (f'reporter="{reporter}",destination_workload_namespace="{ns}",'
                          f'destination_workload="{wl}",destination_pod="{pod}",response_code="{code}"')
                    out.append(f"istio_requests_total{{{il}}} {n}")
                    out.append(f"istio_request_duration_milliseconds_count{{{il}}} {n}")
                    out.append(f"istio_request_duration_milliseconds_sum{{{il}}} "
                               f"{self.sum[(ns, pod, wl, app, code)] * 1000}")
            for (ns, pod, wl, app, code, le), n in self.bucket.items():
                pl = podinfo_labels(ns, pod, app, code)
                les = "+Inf" if le == "+Inf" else repr(float(le))
                out.append(f'http_request_duration_seconds_bucket{{{pl},le="{les}"}} {n}')
                lems = "+Inf" if le == "+Inf" else repr(float(le) * 1000)
                for reporter in ("source", "destination"):
                    il = (f'reporter="{reporter}",destination_workload_namespace="{ns}",'
                          f'destination_workload="{wl}",destination_pod="{pod}",response_code="{code}"')
                    out.append(f'istio_request_duration_milliseconds_bucket{{{il},le="{lems}"}} {n}')
        return "\n".join(out) + "\n"


def podinfo_labels(ns, pod, app, code):
    """podinfo's series as Flagger's Prometheus (kubernetes_*) and Istio's addon Prometheus
    (namespace, pod, app: the pod's labels) relabel them."""
    return (f'kubernetes_namespace="{ns}",kubernetes_pod_name="{pod}",namespace="{ns}",pod="{pod}",'
            f'app="{app}",status="{code}"')


class Unresolved(Exception):
    """A name that is not a Service (or Gateway) of the cluster."""


def ready(pod):
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions", []))


def workload(pod):
    """The Deployment / DaemonSet a pod belongs to (a ReplicaSet's name less its hash)."""
    for ref in pod["metadata"].get("ownerReferences", []):
        if ref.get("kind") == "ReplicaSet":
            return ref["name"].rsplit("-", 1)[0]
        return ref.get("name", "")
    return pod["metadata"]["name"]


class Plane:
    def __init__(self, api, real, default_ns):
        self.api = api
        self.real = real
        self.default_ns = default_ns
        self.metrics = Metrics()

    def split(self, host):
        """(namespace, name) of an in-cluster host name, as cluster DNS reads it."""
        host = host.rsplit(":", 1)[0] if not host.startswith("[") else host
        parts = host.lower().split(".")
        if len(parts) == 1:
            return self.default_ns, parts[0]
        if len(parts) == 2 or parts[2:] in (["svc"], ["svc", "cluster", "local"]):
            return parts[1], parts[0]
        raise Unresolved(f"{host} is not a cluster name")

    def route(self, host, headers, path):
        """Where a request goes: ("real", addr) or ("pod", pod, ns, extra response headers)."""
        ns, name = self.split(host)
        if (ns, name) in self.real:
            return ("real", self.real[(ns, name)], [])
        svc = self.api.get(f"/api/v1/namespaces/{ns}/services/{name}")
        if svc is None and name.endswith("-istio"):
            gw = self.api.get(f"/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/gateways/{name[:-6]}")
            if gw is not None:
                return self.via_gateway(ns, name[:-6], headers, path)
        if svc is None:
            raise Unresolved(f"no Service {ns}/{name}")
        return self.service(ns, name, svc, [])

    def service(self, ns, name, svc, extra):
        if (ns, name) in self.real:
            return ("real", self.real[(ns, name)], extra)
        selector = svc.get("spec", {}).get("selector") or {}
        if not selector:
            return ("none", f"Service {ns}/{name} has no selector", extra)
        sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        pods = self.api.get(f"/api/v1/namespaces/{ns}/pods", {"labelSelector": sel}) or {}
        live = [p for p in pods.get("items", []) if ready(p)]
        if not live:
            return ("none", f"Service {ns}/{name} has no ready endpoint", extra)
        return ("pod", random.choice(live), extra)

    def via_gateway(self, gw_ns, gw, headers, path):
        hostname = headers.get("Host", "").rsplit(":", 1)[0].lower()
        routes = self.api.get("/apis/gateway.networking.k8s.io/v1/httproutes") or {}
        candidates = []
        for r in routes.get("items", []):
            rns = r["metadata"]["namespace"]
            spec = r.get("spec", {})
            if not any(p.get("name") == gw and p.get("namespace", rns) == gw_ns
                       for p in spec.get("parentRefs", [])):
                continue
            names = [h.lower() for h in spec.get("hostnames", [])]
            if names and not any(h == hostname or (h.startswith("*.") and hostname.endswith(h[1:]))
                                 for h in names):
                continue
            for rule in spec.get("rules", []):
                for m in rule.get("matches") or [{}]:
                    if matches(m, headers, path):
                        # Gateway API precedence: more header matches first.
                        candidates.append((-len(m.get("headers", [])), rns, rule))
        if not candidates:
            raise Unresolved(f"no HTTPRoute of Gateway {gw_ns}/{gw} matches host {hostname!r} {path}")
        candidates.sort(key=lambda c: c[0])
        _, rns, rule = candidates[0]
        refs = [b for b in rule.get("backendRefs", []) if b.get("weight", 1) > 0]
        if not refs:
            return ("none", "the matching HTTPRoute rule has no backend with weight", [])
        total = sum(b.get("weight", 1) for b in refs)
        pick = random.uniform(0, total)
        for b in refs:
            pick -= b.get("weight", 1)
            if pick <= 0:
                break
        extra = []
        for f in rule.get("filters", []):
            if f.get("type") == "ResponseHeaderModifier":
                mod = f.get("responseHeaderModifier", {})
                extra += [(h["name"], h["value"]) for h in mod.get("add", []) + mod.get("set", [])]
        bns = b.get("namespace", rns)
        svc = self.api.get(f"/api/v1/namespaces/{bns}/services/{b['name']}")
        if svc is None:
            return ("none", f"backend Service {bns}/{b['name']} does not exist", extra)
        return self.service(bns, b["name"], svc, extra)


def accept_routes(api, base, gateway_class):
    """Reports every HTTPRoute attached to a Gateway of `gateway_class` Accepted, as that class's
    controller would, once per generation."""
    controller = "istio.io/gateway-controller"
    while True:
        try:
            routes = api.get("/apis/gateway.networking.k8s.io/v1/httproutes") or {}
            for r in routes.get("items", []):
                meta, spec = r["metadata"], r.get("spec", {})
                parents = []
                for ref in spec.get("parentRefs", []):
                    gns = ref.get("namespace", meta["namespace"])
                    gw = api.get(f"/apis/gateway.networking.k8s.io/v1/namespaces/{gns}/gateways/{ref['name']}")
                    if not gw or gw.get("spec", {}).get("gatewayClassName") != gateway_class:
                        continue
                    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    parents.append({"parentRef": ref, "controllerName": controller, "conditions": [
                        {"type": t, "status": "True", "reason": t, "message": "", "lastTransitionTime": now,
                         "observedGeneration": meta["generation"]} for t in ("Accepted", "ResolvedRefs")]})
                if not parents:
                    continue
                have = [(p.get("parentRef"), [c.get("observedGeneration") for c in p.get("conditions", [])])
                        for p in r.get("status", {}).get("parents", [])]
                want = [(p["parentRef"], [meta["generation"]] * 2) for p in parents]
                if have == want:
                    continue
                url = (f"{base}/apis/gateway.networking.k8s.io/v1/namespaces/{meta['namespace']}"
                       f"/httproutes/{meta['name']}/status")
                body = json.dumps({"status": {"parents": parents}}).encode()
                req = urllib.request.Request(url, data=body, method="PATCH",
                                             headers={"Content-Type": "application/merge-patch+json"})
                urllib.request.urlopen(req, timeout=10).close()
        except Exception as e:  # the next round retries; say why
            sys.stderr.write(f"accepting routes: {e}\n")
        time.sleep(1)


def matches(m, headers, path):
    p = m.get("path")
    if p:
        value = p.get("value", "/")
        kind = p.get("type", "PathPrefix")
        if kind == "Exact" and path.split("?")[0] != value:
            return False
        if kind == "PathPrefix" and not (path.startswith(value.rstrip("/") + "/") or
                                         path.split("?")[0] == value or value == "/"):
            return False
        if kind == "RegularExpression" and not re.match(value, path):
            return False
    for h in m.get("headers", []):
        got = headers.get(h["name"])
        if got is None:
            return False
        if h.get("type", "Exact") == "Exact" and got != h["value"]:
            return False
        if h.get("type") == "RegularExpression" and not re.search(h["value"], got):
            return False
    return True


def podinfo_answer(pod, method, path):
    """podinfo's answer for a path: (status, content type, body)."""
    name = pod["metadata"]["name"]
    image = pod["spec"]["containers"][0].get("image", "")
    version = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else "latest"
    bare = path.split("?")[0]
    m = re.fullmatch(r"/status/(\d{3})", bare)
    if m:
        code = int(m.group(1))
        return code, {"status": code}
    m = re.fullmatch(r"/delay/(\d+)", bare)
    if m:
        time.sleep(min(int(m.group(1)), 10))
        return 200, {"delay": int(m.group(1))}
    if bare == "/token" and method == "POST":
        return 200, {"token": f"{name}-{random.getrandbits(64):016x}",
                     "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))}
    return 200, {"hostname": name, "version": version, "message": f"greetings from podinfo v{version}"}


def handler_for(plane):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            if plane_args.verbose:
                sys.stderr.write("%s %s\n" % (self.address_string(), fmt % a))

        def reply(self, code, body, ctype="application/json", extra=()):
            data = body if isinstance(body, bytes) else json.dumps(body).encode() + b"\n"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else None

        def handle_any(self):
            started = time.monotonic()
            body = self.body()
            if self.path.startswith("/"):
                if self.path == "/metrics":
                    return self.reply(200, plane.metrics.text().encode(), "text/plain; version=0.0.4")
                if self.path == "/healthz":
                    return self.reply(200, {"ok": True})
                return self.reply(404, {"error": "not a proxy request"})
            url = urllib.parse.urlsplit(self.path)
            if url.scheme != "http":
                return self.reply(502, {"error": f"only http:// is proxied, not {url.scheme}"})
            path = url.path or "/"
            if url.query:
                path += "?" + url.query
            try:
                where = plane.route(url.netloc, self.headers, path)
            except Unresolved as e:
                return self.reply(502, {"error": str(e)})
            except Exception as e:  # the apiserver proxy failed: say so, never guess
                return self.reply(502, {"error": f"reading the cluster: {e}"})
            kind, target, extra = where
            if kind == "none":
                return self.reply(503, {"error": target}, extra=extra)
            if kind == "real":
                return self.forward(target, path, body)
            pod = target
            code, answer = podinfo_answer(pod, self.command, path)
            self.reply(code, answer, extra=extra)
            plane.metrics.record(pod["metadata"]["namespace"], pod["metadata"]["name"], workload(pod),
                                 pod["metadata"].get("labels", {}).get("app", ""), code,
                                 time.monotonic() - started)

        def forward(self, addr, path, body):
            host, port = addr.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=600)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            try:
                conn.request(self.command, path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
            except OSError as e:
                return self.reply(502, {"error": f"forwarding to {addr}: {e}"})
            finally:
                conn.close()
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any

    return Handler


def main():
    global plane_args
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--api", required=True, help="base URL of `kubectl proxy`")
    ap.add_argument("--real", action="append", default=[], metavar="NS/NAME=HOST:PORT")
    ap.add_argument("--default-namespace", default="test")
    ap.add_argument("--gateway-class", default="istio")
    ap.add_argument("--port-file", help="where to write the port listened on")
    ap.add_argument("--verbose", action="store_true")
    plane_args = ap.parse_args()
    real = {}
    for r in plane_args.real:
        key, addr = r.split("=", 1)
        ns, name = key.split("/", 1)
        real[(ns, name)] = addr
    plane = Plane(Api(plane_args.api), real, plane_args.default_namespace)
    threading.Thread(target=accept_routes, daemon=True,
                     args=(plane.api, plane_args.api.rstrip("/"), plane_args.gateway_class)).start()
    host, port = plane_args.listen.rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), handler_for(plane))
    server.daemon_threads = True
    if plane_args.port_file:
        with open(plane_args.port_file + ".tmp", "w") as f:
            f.write(str(server.server_address[1]))
        import os
        os.rename(plane_args.port_file + ".tmp", plane_args.port_file)
    server.serve_forever()


plane_args = None
if __name__ == "__main__":
    main()
