#!/usr/bin/env python3
"""End-to-end metrics: the real preflight-server scraped by a real Prometheus
(Debian's package) on loopback.

Sends real checks (PASS, FAIL, timeout, sandbox violation, cache hit, a
NOT_FOUND lookup), lets Prometheus scrape, then asks its HTTP API for every
query in the Grafana dashboard and for every alert expression (with its
threshold comparisons removed, so the query must return the series the alert
watches) and asserts each returns data. Also lints a real scrape with
`promtool check metrics`.

Usage: metrics_test.py BUILD_DIR ZOO_DIR
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from e2e_common import ROOT, Results, Server, Zoo, cli_path, free_port, run_cli, wait_for

BUILD, ZOO = sys.argv[1], Zoo(sys.argv[2])
# Fleet-store metrics (issue 16) the dashboard and alerts watch. A server
# that does not export them yet (a build without the lease/store metrics)
# skips their queries, by name, with a note; one that exports them must
# return data like every other query.
FLEET_STORE_METRICS = ("preflight_lease_takeovers_total", "preflight_store_operation_seconds")
MON = os.path.join(ROOT, "k8s", "monitoring")
CLI = cli_path(BUILD)
R = Results()
expect = R.expect


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def query(prom, expr):
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.loads(get(url))


def samples(prom, expr):
    """[(time, value)] of an instant query; none while Prometheus is not up yet."""
    try:
        return [v["value"] for v in query(prom, expr)["data"]["result"]]
    except OSError:
        return []


def main():
    if not shutil.which("prometheus") or not shutil.which("promtool"):
        expect("prometheus and promtool are installed (tools/setup.sh installs them)", False)
        return R.finish()
    tmp = tempfile.mkdtemp(prefix="preflight-metrics-")
    server = Server(BUILD, f"{tmp}/store", "--max_upload_mb", "1", metrics=True)
    addr, metrics_port = server.addr, server.metrics_port
    prom_addr = f"127.0.0.1:{free_port()}"
    with open(f"{tmp}/prometheus.yml", "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {MON}/alerts.yml
scrape_configs:
  - job_name: preflight
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
""")
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp}/prometheus.yml",
                             f"--storage.tsdb.path={tmp}/tsdb", f"--web.listen-address={prom_addr}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        expect("Prometheus scrapes the server (up == 1)",
               wait_for(lambda: any(v[1] == "1" for v in samples(prom_addr, 'up{job="preflight"}')),
                        60))

        scrape = get(f"http://127.0.0.1:{metrics_port}/metrics")
        lint = subprocess.run(["promtool", "check", "metrics"], input=scrape,
                              capture_output=True, text=True)
        expect("promtool check metrics is clean on a real scrape",
               lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr)

        # Real traffic: PASS, FAIL, timeout, sandbox violation, cache hit, NOT_FOUND.
        for name, extra in [("mlp", []), ("loss_flat", []), ("hostile_infinite_loop", []),
                            ("hostile_read_file", []), ("mlp", []), ("regression", [])]:
            c = ZOO[name]
            run_cli(CLI, "check", "--model", c["model"], "--batch", c["batch"], *c["flags"],
                    *extra, "--server", addr, timeout=300)
        run_cli(CLI, "verdict", "--server", addr, "--job-id", "nope", timeout=60)
        # A server-side refusal: a 5 MiB artifact goes through Upload, over
        # this server's 1 MiB limit -> RESOURCE_EXHAUSTED.
        with open(f"{tmp}/big.pt", "wb") as f:
            f.write(os.urandom(5 << 20))
        p = run_cli(CLI, "check", "--model", f"{tmp}/big.pt", "--batch", ZOO["mlp"]["batch"],
                    "--server", addr, timeout=120)
        expect("an upload over the limit is RESOURCE_EXHAUSTED",
               p.returncode == 5 and "RESOURCE_EXHAUSTED" in p.stderr, p.stderr)
        # Several scrapes (and rule evaluations) after the traffic.
        after = time.time() + 4
        wait_for(lambda: any(float(v[1]) >= after for v in samples(
            prom_addr, 'timestamp(up{job="preflight"})')), 60)

        def unexported(expr):
            return [m for m in FLEET_STORE_METRICS if m in expr and f"\n{m}" not in scrape]

        with open(f"{MON}/grafana-dashboard.json") as f:
            dash = json.load(f)
        for panel in dash["panels"]:
            for t in panel["targets"]:
                if unexported(t["expr"]):
                    print(f"skip dashboard '{panel['title']}' [{t['refId']}]: this server does "
                          f"not export {', '.join(unexported(t['expr']))}")
                    continue
                r = query(prom_addr, t["expr"])
                ok = r.get("status") == "success" and len(r["data"]["result"]) > 0
                expect(f"dashboard '{panel['title']}' [{t['refId']}] returns data", ok,
                       f"{t['expr']} -> {r}")

        with open(f"{MON}/alerts.yml") as f:
            alerts = f.read()
        exprs = re.findall(r"- alert: (\w+)\n\s+(?:#[^\n]*\n\s+)?expr: (\|\n(?:\s{10,}.*\n)+|.*\n)",
                           alerts)
        expect("found all 8 alert expressions", len(exprs) == 8, [a for a, _ in exprs])
        for alert, expr in exprs:
            expr = expr.lstrip("|").strip()
            if unexported(expr):
                print(f"skip alert {alert}: this server does not export "
                      f"{', '.join(unexported(expr))}")
                continue
            watched = re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.]+", "", expr)
            r = query(prom_addr, watched)
            ok = r.get("status") == "success" and len(r["data"]["result"]) > 0
            expect(f"alert {alert}: watched series return data", ok, f"{watched} -> {r}")

        r = query(prom_addr, "preflight:job_slots_busy:ratio")
        expect("the autoscaler's recording rule gives the busy-slot ratio",
               r["data"]["result"] and 0 <= float(r["data"]["result"][0]["value"][1]) <= 1, r)

        r = query(prom_addr, 'preflight_worker_exits_total{reason="timeout"}')
        timeouts = max((float(v["value"][1]) for v in r["data"]["result"]), default=0)
        expect("the timeout was counted", timeouts >= 1, r)
        r = query(prom_addr, 'preflight_worker_exits_total{reason="sandbox"}')
        expect("the sandbox violation was counted",
               max((float(v["value"][1]) for v in r["data"]["result"]), default=0) >= 1, r)
        r = query(prom_addr, 'preflight_cache_requests_total{result="hit"}')
        expect("the cache hit was counted",
               max((float(v["value"][1]) for v in r["data"]["result"]), default=0) >= 1, r)
        r = query(prom_addr, 'ALERTS{alertname="PreflightSandboxViolations"}')
        expect("the sandbox-violation alert fires on the real server",
               len(r["data"]["result"]) > 0, r)
    finally:
        prom.send_signal(signal.SIGTERM)
        server.stop()
        prom.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)

    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
