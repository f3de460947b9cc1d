#!/usr/bin/env python3
"""preflight-gate: a Kubernetes validating admission webhook (AdmissionReview
v1) that admits Jobs, Pods and PyTorchJob-style objects only when their stored
Preflight verdict lets them run.

An object opts in with an annotation on itself or on its pod template:
  preflight.dev/job-id: <the job id given to `preflight check --job-id`>
  preflight.dev/digest: <a request digest>
PASS/WARN are allowed (WARN with a warning); FAIL/ERROR are denied with the
verdict's top findings as the message. No stored verdict and an unreachable
service follow --on-missing and --on-unavailable (deny, or allow with a
warning). Objects without the annotation are allowed unless
--require-annotation. Every lookup is bounded by --timeout (keep it well
under the webhook's timeoutSeconds).

GET /metrics serves the gate's own Prometheus metrics; GET /healthz its health.

--server is HOST:PORT, a list H1:P1,H2:P2 or dns:///NAME:PORT (a headless
Service): lookups are spread round-robin over the replicas, and one that does
not answer is skipped.

Usage: preflight_gate.py --server SERVERS --cert tls.crt --key tls.key
          [--listen 0.0.0.0:8443] [--timeout 2] [--on-missing deny|allow]
          [--on-unavailable deny|allow] [--require-annotation]
"""
import argparse
import http.server
import json
import ssl
import sys
import threading
import time

import preflight

ANNOTATION_JOB = "preflight.dev/job-id"
ANNOTATION_DIGEST = "preflight.dev/digest"


class Metrics:
    """Bounded counters: decision x reason, and a latency sum/count."""

    def __init__(self):
        self.lock = threading.Lock()
        self.decisions = {}
        self.seconds_sum = 0.0
        self.count = 0

    def record(self, decision, reason, seconds):
        with self.lock:
            key = (decision, reason)
            self.decisions[key] = self.decisions.get(key, 0) + 1
            self.seconds_sum += seconds
            self.count += 1

    def render(self):
        with self.lock:
            lines = ["# HELP preflight_gate_reviews_total Admission reviews by decision and reason.",
                     "# TYPE preflight_gate_reviews_total counter"]
            for (d, r), n in sorted(self.decisions.items()):
                lines.append(f'preflight_gate_reviews_total{{decision="{d}",reason="{r}"}} {n}')
            lines += ["# HELP preflight_gate_review_duration_seconds Time to answer a review.",
                      "# TYPE preflight_gate_review_duration_seconds summary",
                      f"preflight_gate_review_duration_seconds_sum {self.seconds_sum}",
                      f"preflight_gate_review_duration_seconds_count {self.count}"]
        return "\n".join(lines) + "\n"


def find_tag(obj):
    """(annotation, value) from the object or its (nested) pod template."""
    candidates = [obj.get("metadata", {}).get("annotations") or {}]
    spec = obj.get("spec") or {}
    candidates.append(((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {})
    # PyTorchJob-style: spec.pytorchReplicaSpecs.<Role>.template.metadata.annotations
    for replica in (spec.get("pytorchReplicaSpecs") or {}).values():
        tmpl = (replica or {}).get("template") or {}
        candidates.append((tmpl.get("metadata") or {}).get("annotations") or {})
    for ann in candidates:
        if ANNOTATION_JOB in ann:
            return ANNOTATION_JOB, ann[ANNOTATION_JOB]
        if ANNOTATION_DIGEST in ann:
            return ANNOTATION_DIGEST, ann[ANNOTATION_DIGEST]
    return None, None


def decide(review, args):
    """Returns (allowed, message, warnings, reason) for one AdmissionReview."""
    obj = review["request"].get("object") or {}
    kind = (review["request"].get("kind") or {}).get("kind", "object")
    name = obj.get("metadata", {}).get("name") or obj.get("metadata", {}).get("generateName", "")
    annotation, value = find_tag(obj)
    if annotation is None:
        if args.require_annotation:
            return (False, f"{kind} {name} has no {ANNOTATION_JOB} or {ANNOTATION_DIGEST} "
                           "annotation, and this cluster requires a Preflight verdict",
                    [], "untagged")
        return True, "", [], "untagged"

    def policy(setting, why, reason):
        if setting == "allow":
            return True, "", [f"preflight: {why}; allowed by policy"], reason
        return False, f"preflight: {why}; denied by policy", [], reason

    try:
        kw = {"job_id": value} if annotation == ANNOTATION_JOB else {"digest": value}
        report = preflight.verdict(server=args.server, timeout=args.timeout, **kw)
    except preflight.PreflightError as e:
        if e.code == "NOT_FOUND":
            return policy(args.on_missing, f"no stored verdict for {annotation}={value}", "missing")
        if e.code == "INVALID_ARGUMENT":
            return False, f"preflight: invalid {annotation} '{value}': {e.message}", [], "invalid"
        return policy(args.on_unavailable, f"the Preflight service did not answer ({e.code})",
                      "unavailable")
    if report.verdict in ("PASS", "WARN"):
        warnings = [f"preflight {report.verdict}: {f.code}: {f.message}"[:500]
                    for f in report.findings if f.severity == "WARN"][:3]
        return True, "", warnings, report.verdict.lower()
    top = [f"{f.code}: {f.message}" for f in report.findings
           if f.severity in ("FAIL", "ERROR")][:3]
    return (False, f"preflight verdict {report.verdict} for {annotation}={value}: "
                   + "; ".join(top), [], report.verdict.lower())


def make_handler(args, metrics):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):  # The API server retries; keep logs short.
            sys.stderr.write("preflight-gate: " + (fmt % a) + "\n")

        def send(self, code, body, ctype="application/json"):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/metrics":
                self.send(200, metrics.render(), "text/plain; version=0.0.4")
            elif self.path == "/healthz":
                self.send(200, "ok\n", "text/plain")
            else:
                self.send(404, "not found\n", "text/plain")

        def do_POST(self):
            start = time.perf_counter()
            try:
                length = int(self.headers.get("Content-Length", "0"))
                review = json.loads(self.rfile.read(length) or b"null")
                if not isinstance(review, dict) or review.get("kind") != "AdmissionReview" \
                        or not isinstance(review.get("request"), dict) \
                        or not review["request"].get("uid"):
                    raise ValueError("expected an AdmissionReview with request.uid")
            except (ValueError, json.JSONDecodeError) as e:
                metrics.record("error", "malformed", time.perf_counter() - start)
                self.send(400, json.dumps({"error": f"malformed AdmissionReview: {e}"}))
                return
            allowed, message, warnings, reason = decide(review, args)
            response = {"uid": review["request"]["uid"], "allowed": allowed}
            if not allowed:
                response["status"] = {"code": 403, "reason": "Forbidden", "message": message}
            if warnings:
                response["warnings"] = warnings
            metrics.record("allow" if allowed else "deny", reason, time.perf_counter() - start)
            self.send(200, json.dumps({"apiVersion": review.get("apiVersion",
                                                                "admission.k8s.io/v1"),
                                       "kind": "AdmissionReview", "response": response}))

    return Handler


def main(argv=None):
    ap = argparse.ArgumentParser(prog="preflight-gate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True,
                    help="Preflight server(s): HOST:PORT, H1:P1,H2:P2 or dns:///NAME:PORT")
    ap.add_argument("--listen", default="0.0.0.0:8443", help="HOST:PORT; port 0 picks one")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per verdict lookup")
    ap.add_argument("--on-missing", choices=["deny", "allow"], default="deny")
    ap.add_argument("--on-unavailable", choices=["deny", "allow"], default="allow")
    ap.add_argument("--require-annotation", action="store_true")
    args = ap.parse_args(argv)
    try:
        preflight.parse_server(args.server)  # Syntax only: a bad value is a start-up error.
    except ValueError as e:
        ap.error(str(e))
    host, port = args.listen.rsplit(":", 1)
    metrics = Metrics()
    httpd = http.server.ThreadingHTTPServer((host, int(port)), make_handler(args, metrics))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    print(f"preflight-gate listening on port {httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
