#!/usr/bin/env python3
"""Offline validation of k8s/: yamllint, then every object of the base
kustomization and of the rendered GPU variant against the real Kubernetes
schemas (kubernetes-validate --strict). Objects of CRDs (cert-manager,
Prometheus Operator) have no bundled schema: they are checked for the fields
their controllers require.

Usage: k8s_test.py
"""
import copy
import os
import subprocess
import sys
import tempfile

import yaml

from e2e_common import Results

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(ROOT, "k8s")
R = Results()
expect = R.expect


def load_kustomization(d):
    with open(os.path.join(d, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    docs = []
    for r in k.get("resources", []):
        path = os.path.normpath(os.path.join(d, r))
        if os.path.isdir(path):
            docs += load_kustomization(path)
        else:
            with open(path) as f:
                docs += [x for x in yaml.safe_load_all(f) if x]
    for p in k.get("patches", []):
        target = p["target"]
        for doc in docs:
            if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]:
                apply_json_patch(doc, yaml.safe_load(p["patch"]))
    return docs


def apply_json_patch(doc, ops):
    for op in ops:
        assert op["op"] == "add", op
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = doc
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[parts[-1]] = copy.deepcopy(op["value"])


def validate(docs, label):
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, doc in enumerate(docs):
            if "." in doc["apiVersion"].split("/")[0] and not doc["apiVersion"].startswith(
                    ("apps/", "batch/", "policy/", "networking.k8s.io/",
                     "admissionregistration.k8s.io/", "rbac.authorization.k8s.io/")):
                continue  # CRD objects: checked below.
            path = os.path.join(d, f"{i}-{doc['kind']}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(doc, f)
            paths.append(path)
        p = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
                            *paths], capture_output=True, text=True)
        expect(f"{label}: {len(paths)} objects valid against the Kubernetes schemas",
               bool(paths) and p.returncode == 0, p.stdout + p.stderr)


def main():
    p = subprocess.run([sys.executable, "-m", "yamllint", "-c", os.path.join(K8S, ".yamllint"),
                        K8S], capture_output=True, text=True)
    expect("yamllint is clean on k8s/", p.returncode == 0, p.stdout + p.stderr)

    base = load_kustomization(os.path.join(K8S, "base"))
    validate(base, "base")
    gpu = load_kustomization(os.path.join(K8S, "gpu"))
    validate(gpu, "gpu variant")
    sts = next(d for d in gpu if d["kind"] == "StatefulSet")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    expect("gpu variant requests nvidia.com/gpu",
           c["resources"]["limits"].get("nvidia.com/gpu") == 1, c["resources"])

    sc = c["securityContext"]
    pod_sc = sts["spec"]["template"]["spec"]["securityContext"]
    expect("server runs non-root, read-only root fs, all capabilities dropped, "
           "no privilege escalation, RuntimeDefault seccomp",
           pod_sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
           and sc["capabilities"]["drop"] == ["ALL"] and sc["allowPrivilegeEscalation"] is False
           and pod_sc["seccompProfile"]["type"] == "RuntimeDefault", sc)
    expect("native gRPC liveness/readiness probes",
           "grpc" in c["livenessProbe"] and "grpc" in c["readinessProbe"], c)
    args = c["args"]
    health = next((a.split(":")[-1] for a in args if a.startswith("--health-address=")), None)
    expect("the server turns TLS, tokens and signing on; probes use the plaintext health port",
           any(a.startswith("--tls-cert=") for a in args)
           and any(a.startswith("--tls-key=") for a in args)
           and any(a.startswith("--tokens=") for a in args)
           and any(a.startswith("--signing-key=") for a in args)
           and health is not None
           and all(str(c[p]["grpc"]["port"]) == health
                   for p in ("startupProbe", "readinessProbe", "livenessProbe")), args)
    gate = next(d for d in base if d["kind"] == "Deployment"
                and d["metadata"]["name"] == "preflight-gate")
    gargs = gate["spec"]["template"]["spec"]["containers"][0]["args"]
    expect("the admission gate reads with a token, trusts the server's CA, verifies signatures",
           all(any(a.startswith(f) for a in gargs)
               for f in ("--token-file=", "--tls-ca=", "--verify-key=")), gargs)

    kinds = {d["kind"] for d in base}
    for kind in ("Namespace", "StatefulSet", "Service", "NetworkPolicy", "PodDisruptionBudget",
                 "ValidatingWebhookConfiguration", "ServiceMonitor", "PrometheusRule",
                 "Certificate", "ConfigMap"):
        expect(f"base has a {kind}", kind in kinds)
    cert = next(d for d in base if d["kind"] == "Certificate")
    expect("a Certificate for the server's TLS port",
           any(d["kind"] == "Certificate" and d["spec"]["secretName"] == "preflight-server-tls"
               for d in base))
    expect("Certificate names its secret, DNS name and issuer",
           cert["spec"]["secretName"] and cert["spec"]["dnsNames"] and cert["spec"]["issuerRef"])
    rule = next(d for d in base if d["kind"] == "PrometheusRule")
    expect("PrometheusRule carries the 6 alerts",
           len(rule["spec"]["groups"][0]["rules"]) == 6, rule["spec"])
    hook = next(d for d in base if d["kind"] == "ValidatingWebhookConfiguration")["webhooks"][0]
    expect("webhook: v1 reviews, bounded timeout, failure policy, namespace selector",
           hook["admissionReviewVersions"] == ["v1"] and hook["timeoutSeconds"] <= 10
           and hook["failurePolicy"] in ("Ignore", "Fail") and hook["namespaceSelector"], hook)

    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
