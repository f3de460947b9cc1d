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

from e2e_common import Results, free_port, zoo_case

BUILD, ZOO = sys.argv[1], sys.argv[2]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MON = os.path.join(ROOT, "k8s", "monitoring")
CLI = os.path.join(BUILD, "client/preflight")
R = Results()
expect = R.expect


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def query(prom, expr):
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.loads(get(url))


def case(name):
    return zoo_case(ZOO, name)


def main():
    if not shutil.which("prometheus") or not shutil.which("promtool"):
        expect("prometheus and promtool are installed (tools/setup.sh installs them)", False)
        return R.finish()
    tmp = tempfile.mkdtemp(prefix="preflight-metrics-")
    server = subprocess.Popen([f"{BUILD}/service/preflight-server", "--address", "127.0.0.1:0",
                               "--metrics_address", "127.0.0.1:0", "--store", f"{tmp}/store",
                               "--max_upload_mb", "1"],
                              stdout=subprocess.PIPE, text=True)
    metrics_port = addr = None
    for line in server.stdout:
        if "metrics on port" in line:
            metrics_port = int(line.split()[-1])
        if "listening on port" in line:
            addr = f"127.0.0.1:{line.split()[-1]}"
            break
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
        deadline = time.time() + 60
        up = False
        while time.time() < deadline and not up:
            try:
                r = query(prom_addr, 'up{job="preflight"}')
                up = any(v["value"][1] == "1" for v in r["data"]["result"])
            except OSError:
                pass
            time.sleep(0.5)
        expect("Prometheus scrapes the server (up == 1)", up)

        scrape = get(f"http://127.0.0.1:{metrics_port}/metrics")
        lint = subprocess.run(["promtool", "check", "metrics"], input=scrape,
                              capture_output=True, text=True)
        expect("promtool check metrics is clean on a real scrape",
               lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr)

        # Real traffic: PASS, FAIL, timeout, sandbox violation, cache hit, NOT_FOUND.
        for name, extra in [("mlp", []), ("loss_flat", []), ("hostile_infinite_loop", []),
                            ("hostile_read_file", []), ("mlp", []), ("regression", [])]:
            c = case(name)
            subprocess.run([CLI, "check", "--model", c["model"], "--batch", c["batch"],
                            *c["flags"], *extra, "--server", addr], capture_output=True,
                           timeout=300)
        subprocess.run([CLI, "verdict", "--server", addr, "--job-id", "nope"],
                       capture_output=True, timeout=60)
        # A server-side refusal: a 5 MiB artifact goes through Upload, over
        # this server's 1 MiB limit -> RESOURCE_EXHAUSTED.
        with open(f"{tmp}/big.pt", "wb") as f:
            f.write(os.urandom(5 << 20))
        p = subprocess.run([CLI, "check", "--model", f"{tmp}/big.pt", "--batch",
                            case("mlp")["batch"], "--server", addr],
                           capture_output=True, text=True, timeout=120)
        expect("an upload over the limit is RESOURCE_EXHAUSTED",
               p.returncode == 5 and "RESOURCE_EXHAUSTED" in p.stderr, p.stderr)
        time.sleep(4)  # Several scrapes after the traffic.

        with open(f"{MON}/grafana-dashboard.json") as f:
            dash = json.load(f)
        for panel in dash["panels"]:
            for t in panel["targets"]:
                r = query(prom_addr, t["expr"])
                ok = r.get("status") == "success" and len(r["data"]["result"]) > 0
                expect(f"dashboard '{panel['title']}' [{t['refId']}] returns data", ok,
                       f"{t['expr']} -> {r}")

        with open(f"{MON}/alerts.yml") as f:
            alerts = f.read()
        exprs = re.findall(r"- alert: (\w+)\n\s+(?:#[^\n]*\n\s+)?expr: (\|\n(?:\s{10,}.*\n)+|.*\n)",
                           alerts)
        expect("found all 6 alert expressions", len(exprs) == 6, [a for a, _ in exprs])
        for alert, expr in exprs:
            expr = expr.lstrip("|").strip()
            watched = re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.]+", "", expr)
            r = query(prom_addr, watched)
            ok = r.get("status") == "success" and len(r["data"]["result"]) > 0
            expect(f"alert {alert}: watched series return data", ok, f"{watched} -> {r}")

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
        server.send_signal(signal.SIGTERM)
        prom.wait(timeout=60)
        server.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)

    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
