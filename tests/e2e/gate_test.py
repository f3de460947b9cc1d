#!/usr/bin/env python3
"""End-to-end: the admission webhook (client/gates/k8s/preflight_gate.py) over
TLS with certificates made here by openssl, against a real preflight-server
holding PASS and FAIL verdicts. Real AdmissionReview v1 JSON for a Job, a Pod
and a PyTorchJob: allow, deny with findings, missing annotation, unknown id,
service down under both policies, malformed review.

Usage: gate_test.py BUILD_DIR ZOO_DIR
"""
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from e2e_common import ROOT, Results, Server, Zoo, cli_path, free_port, store_verdicts

BUILD, ZOO = os.path.abspath(sys.argv[1]), Zoo(sys.argv[2])
GATE = f"{ROOT}/client/gates/k8s/preflight_gate.py"
R = Results()
expect = R.expect


def make_certs(d):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=preflight-test-ca", "-keyout", f"{d}/ca.key",
                    "-out", f"{d}/ca.crt"], check=True, capture_output=True)
    with open(f"{d}/ext.cnf", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:preflight-gate.preflight.svc\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj",
                    "/CN=preflight-gate.preflight.svc", "-keyout", f"{d}/tls.key",
                    "-out", f"{d}/tls.csr"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", f"{d}/tls.csr", "-CA", f"{d}/ca.crt",
                    "-CAkey", f"{d}/ca.key", "-CAcreateserial", "-days", "1",
                    "-extfile", f"{d}/ext.cnf", "-out", f"{d}/tls.crt"],
                   check=True, capture_output=True)


def start_gate(d, server, *extra):
    env = dict(os.environ, PYTHONPATH=f"{BUILD}/python")
    p = subprocess.Popen([sys.executable, GATE, "--server", server, "--listen", "127.0.0.1:0",
                          "--cert", f"{d}/tls.crt", "--key", f"{d}/tls.key", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = p.stdout.readline()
    return p, int(line.split()[-1])


def review(kind, annotations=None, template_annotations=None, uid="u-1"):
    obj = {"apiVersion": "batch/v1", "kind": kind, "metadata": {"name": "train-1"}}
    if annotations:
        obj["metadata"]["annotations"] = annotations
    if template_annotations is not None:
        if kind == "PyTorchJob":
            obj["spec"] = {"pytorchReplicaSpecs": {"Master": {"template": {"metadata": {
                "annotations": template_annotations}}}}}
        else:
            obj["spec"] = {"template": {"metadata": {"annotations": template_annotations}}}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": {"group": "batch", "version": "v1", "kind": kind},
                        "operation": "CREATE", "object": obj}}


def post(port, ca, body):
    ctx = ssl.create_default_context(cafile=ca)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"https://127.0.0.1:{port}/validate", data=data,
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.loads(r.read()), time.perf_counter() - t
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), time.perf_counter() - t


def reviews(port, ca):
    """The gate's own count of its decisions: {(decision, reason): n}. An
    allowed review does not say on its face whether the gate looked the
    verdict up (reason "pass") or found no annotation ("untagged")."""
    text = urllib.request.urlopen(
        urllib.request.Request(f"https://127.0.0.1:{port}/metrics"),
        context=ssl.create_default_context(cafile=ca), timeout=10).read().decode()
    return {(d, r): float(n) for d, r, n in re.findall(
        r'preflight_gate_reviews_total\{decision="(\w+)",reason="(\w+)"\} (\S+)', text)}


def main():
    d = tempfile.mkdtemp(prefix="preflight-gate-")
    make_certs(d)
    ca = f"{d}/ca.crt"
    server = Server(BUILD, f"{d}/store")
    addr = server.addr
    gates = []
    try:
        digests = store_verdicts(cli_path(BUILD), addr, ZOO,
                                 {"train/pass": "mlp", "train/fail": "loss_flat"})

        gate, port = start_gate(d, addr)
        gates.append(gate)
        code, r, secs = post(port, ca, review("Job", {"preflight.dev/job-id": "train/pass"}))
        expect("PASS Job is allowed, over verified TLS",
               code == 200 and r["response"]["allowed"] and r["response"]["uid"] == "u-1"
               and reviews(port, ca).get(("allow", "pass")) == 1, (r, reviews(port, ca)))
        expect(f"answered in {secs * 1000:.0f} ms (well within a 10 s webhook timeout)", secs < 5)
        code, r, _ = post(port, ca, review("Pod", {"preflight.dev/job-id": "train/fail"}))
        resp = r.get("response", {})
        expect("FAIL Pod is denied with its top findings as the message",
               code == 200 and not resp.get("allowed")
               and resp.get("status", {}).get("code") == 403
               and "LOSS_FLAT" in resp.get("status", {}).get("message", ""), r)
        code, r, _ = post(port, ca, review("PyTorchJob", template_annotations={
            "preflight.dev/digest": digests["train/fail"]}))
        expect("PyTorchJob with the digest on its replica template is denied",
               not r["response"]["allowed"]
               and "LOSS_FLAT" in r["response"].get("status", {}).get("message", ""), r)
        code, r, _ = post(port, ca, review("Job", template_annotations={
            "preflight.dev/job-id": "train/pass"}))
        expect("Job with the annotation on its pod template is allowed",
               r["response"]["allowed"] and reviews(port, ca).get(("allow", "pass")) == 2,
               (r, reviews(port, ca)))
        code, r, _ = post(port, ca, review("Job"))
        expect("missing annotation is allowed untouched",
               r["response"]["allowed"] and reviews(port, ca).get(("allow", "untagged")) == 1,
               (r, reviews(port, ca)))
        code, r, _ = post(port, ca, review("Job", {"preflight.dev/job-id": "train/unknown"}))
        expect("unknown id is denied (default on-missing=deny)",
               not r["response"]["allowed"]
               and "no stored verdict" in r["response"]["status"]["message"], r)
        code, r, _ = post(port, ca, b"{not json")
        expect("malformed review is HTTP 400", code == 400 and "malformed" in r.get("error", ""), r)
        code, r, _ = post(port, ca, {"kind": "AdmissionReview", "request": {}})
        expect("review without request.uid is HTTP 400", code == 400, r)
        expect("the gate exports its own metrics",
               reviews(port, ca).get(("deny", "fail")) == 2, reviews(port, ca))

        strict, sport = start_gate(d, addr, "--require-annotation", "--on-missing", "allow")
        gates.append(strict)
        code, r, _ = post(sport, ca, review("Job"))
        expect("--require-annotation denies untagged objects", not r["response"]["allowed"], r)
        code, r, _ = post(sport, ca, review("Job", {"preflight.dev/job-id": "train/unknown"}))
        expect("on-missing=allow admits an unknown id with a warning",
               r["response"]["allowed"] and r["response"].get("warnings"), r)

        # A list of servers with one dead address (a fleet replica gone):
        # round_robin skips it, every lookup is answered by the live one.
        listed, lport = start_gate(d, f"127.0.0.1:{free_port()},{addr}")
        gates.append(listed)
        answers = [post(lport, ca, review("Job", {"preflight.dev/job-id": "train/pass"}))[1]
                   for _ in range(4)]
        expect("--server DEAD,LIVE: every lookup answered, PASS allowed",
               all(a["response"]["allowed"] for a in answers)
               and reviews(lport, ca).get(("allow", "pass")) == 4, (answers, reviews(lport, ca)))
        bad = subprocess.run([sys.executable, GATE, "--server", f"{addr},", "--cert",
                              f"{d}/tls.crt", "--key", f"{d}/tls.key"], capture_output=True,
                             text=True, timeout=60, env=dict(os.environ,
                                                             PYTHONPATH=f"{BUILD}/python"))
        expect("a bad --server is a start-up error naming the problem",
               bad.returncode == 2 and "server: empty address in the list" in bad.stderr,
               bad.stderr)

        # The service goes down: both policies.
        server.stop()
        code, r, secs = post(port, ca, review("Job", {"preflight.dev/job-id": "train/pass"}))
        expect("service down, on-unavailable=allow (default): allowed with a warning",
               r["response"]["allowed"] and "did not answer" in r["response"]["warnings"][0], r)
        deny, dport = start_gate(d, addr, "--on-unavailable", "deny")
        gates.append(deny)
        code, r, secs = post(dport, ca, review("Job", {"preflight.dev/job-id": "train/pass"}))
        expect("service down, on-unavailable=deny: denied",
               not r["response"]["allowed"]
               and "did not answer" in r["response"]["status"]["message"], r)
        expect(f"service-down answer in {secs:.1f} s (bounded by --timeout)", secs < 5)
    finally:
        for g in gates:
            g.send_signal(signal.SIGTERM)
            g.wait(timeout=30)
        server.stop()
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
