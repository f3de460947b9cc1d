#!/usr/bin/env python3
"""Generates the Kubernetes monitoring objects in k8s/monitoring/ from two
sources of truth: the panel list below (the Grafana dashboard) and
k8s/monitoring/alerts.yml (the alerting rules).

Writes grafana-dashboard.json, grafana-dashboard-configmap.yaml (for
Grafana's dashboard sidecar), prometheus-rule.yaml (PrometheusRule for the
Prometheus Operator) and servicemonitor.yaml.

Usage: gen_monitoring.py [--check]   (--check: fail if the files are stale)
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "k8s", "monitoring")

# (title, unit, [(PromQL, legend)]). Windows are plain [5m]/[1h] so every
# expression can be sent to Prometheus as is (tests/e2e/metrics_test.py does).
# The service panels sum over every replica scraped; the "Fleet" panels
# break the same numbers down per replica (`instance`, plus `pod` where the
# ServiceMonitor adds it) and show the shared store and its leases.
PANELS = [
    ("Request rate by method", "reqps",
     [('sum by (method) (rate(preflight_rpc_requests_total[5m]))', "{{method}}")]),
    ("Errors by method and code", "reqps",
     [('sum by (method, code) (rate(preflight_rpc_requests_total{code!="OK"}[5m]))',
       "{{method}} {{code}}")]),
    ("Time to verdict by phase (p50 / p95 / p99)", "s",
     [(f'histogram_quantile({q}, sum by (le, phase) '
       f'(rate(preflight_check_duration_seconds_bucket[5m])))', f"p{int(q * 100)} {{{{phase}}}}")
      for q in (0.5, 0.95, 0.99)]),
    ("RPC latency p95 by method", "s",
     [('histogram_quantile(0.95, sum by (le, method) '
       '(rate(preflight_rpc_duration_seconds_bucket[5m])))', "{{method}}")]),
    ("Queue depth and job slots", "short",
     [("sum(preflight_queue_depth)", "queued"),
      ("sum by (state) (preflight_job_slots)", "slots {{state}}")]),
    ("Verdict mix (last hour)", "short",
     [("sum by (verdict) (increase(preflight_checks_total[1h]))", "{{verdict}}")]),
    ("Top finding codes (last hour)", "short",
     [("topk(10, sum by (code) (increase(preflight_findings_total[1h])))", "{{code}}")]),
    ("Worker exits by reason (last hour)", "short",
     [("sum by (reason) (increase(preflight_worker_exits_total[1h]))", "{{reason}}"),
      ("sum(increase(preflight_zygote_restarts_total[1h]))", "zygote restarts")]),
    ("Cache hit ratio", "percentunit",
     [('sum(rate(preflight_cache_requests_total{result="hit"}[5m])) / '
       'sum(rate(preflight_cache_requests_total[5m]))', "hit ratio")]),
    ("Upload throughput", "Bps",
     [("sum(rate(preflight_upload_bytes_total[5m]))", "bytes/s")]),
    ("Build", "short",
     [("preflight_build_info", "{{version}} torch {{torch_version}} {{device}}")]),
    ("Fleet: replicas up", "short",
     [('sum(up{job="preflight"})', "up"), ('count(up{job="preflight"})', "scraped")]),
    ("Fleet: check rate by replica", "reqps",
     [('sum(rate(preflight_rpc_requests_total{method="Check"}[5m]))', "fleet"),
      ('sum by (instance, pod) (rate(preflight_rpc_requests_total{method="Check"}[5m]))',
       "{{pod}} {{instance}}")]),
    ("Fleet: busy job slots by replica", "short",
     [('sum(preflight_job_slots{state="busy"})', "fleet busy"),
      ("sum(preflight_job_slots)", "fleet slots"),
      ('sum by (instance, pod) (preflight_job_slots{state="busy"})', "{{pod}} {{instance}}")]),
    ("Fleet: queue depth by replica", "short",
     [("sum(preflight_queue_depth)", "fleet"),
      ("sum by (instance, pod) (preflight_queue_depth)", "{{pod}} {{instance}}")]),
    ("Fleet: busy-slot ratio (autoscaler input)", "percentunit",
     [('sum(preflight_job_slots{state="busy"}) / sum(preflight_job_slots)', "fleet"),
      ("preflight:job_slots_busy:ratio", "{{pod}}")]),
    ("Fleet: lease takeovers (last hour)", "short",
     [("sum(increase(preflight_lease_takeovers_total[1h]))", "fleet"),
      ("sum by (instance, pod) (increase(preflight_lease_takeovers_total[1h]))",
       "{{pod}} {{instance}}")]),
    ("Store latency by operation (p50 / p95 / p99)", "s",
     [(f"histogram_quantile({q}, sum by (le, op) "
       f"(rate(preflight_store_operation_seconds_bucket[5m])))", f"p{int(q * 100)} {{{{op}}}}")
      for q in (0.5, 0.95, 0.99)]),
    ("Store operations by operation", "ops",
     [("sum by (op) (rate(preflight_store_operation_seconds_count[5m]))", "{{op}}")]),
    ("Store latency p95 by replica", "s",
     [("histogram_quantile(0.95, sum by (le, instance, pod) "
       "(rate(preflight_store_operation_seconds_bucket[5m])))", "{{pod}} {{instance}}")]),
]


def dashboard():
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
                        for j, (expr, legend) in enumerate(targets)],
        })
    return {
        "uid": "preflight-overview",
        "title": "Preflight",
        "tags": ["preflight"],
        "timezone": "utc",
        "schemaVersion": 38,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus",
            "label": "Prometheus"}]},
        "panels": panels,
    }


def indent(text, n):
    pad = " " * n
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


def render():
    dash = json.dumps(dashboard(), indent=2) + "\n"
    with open(os.path.join(OUT, "alerts.yml")) as f:
        rules = f.read()
    groups = rules[rules.index("groups:"):]
    header = "# Generated by tools/gen_monitoring.py; edit the sources, not this file.\n"
    configmap = (header +
                 "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: preflight-dashboard\n"
                 "  labels:\n    grafana_dashboard: \"1\"\n    app.kubernetes.io/name: preflight\n"
                 "data:\n  preflight.json: |\n" + indent(dash, 4))
    rule = (header +
            "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n"
            "  name: preflight\n  labels:\n    app.kubernetes.io/name: preflight\n"
            "spec:\n" + indent(groups, 2))
    monitor = (header +
               "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n"
               "  name: preflight\n  labels:\n    app.kubernetes.io/name: preflight\nspec:\n"
               "  selector:\n    matchLabels:\n      app.kubernetes.io/name: preflight\n"
               "  endpoints:\n    - port: metrics\n      path: /metrics\n      interval: 30s\n")
    return {"grafana-dashboard.json": dash, "grafana-dashboard-configmap.yaml": configmap,
            "prometheus-rule.yaml": rule, "servicemonitor.yaml": monitor}


def main():
    check = "--check" in sys.argv
    stale = []
    for name, content in render().items():
        path = os.path.join(OUT, name)
        if check:
            try:
                with open(path) as f:
                    if f.read() != content:
                        stale.append(name)
            except FileNotFoundError:
                stale.append(name)
        else:
            with open(path, "w") as f:
                f.write(content)
    if stale:
        print(f"stale (run tools/gen_monitoring.py): {', '.join(stale)}")
        print("0 passed, 1 failed")
        return 1
    if check:
        print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
