#!/usr/bin/env python3
"""End-to-end (issue 15): a SIGSTOPped zygote is found by the server's
heartbeat, through a real server and the real CLI.

While a check runs (the zoo's infinite loop, so it cannot finish on its own),
the zygote is SIGSTOPped. Within the heartbeat timeout (plus start-up slack)
the check comes back as a verdict, ERROR / WORKER_CRASHED, whose message says
the worker stopped answering; the stopped zygote and its job are killed
(nothing runs on after a SIGCONT); the health service says NOT_SERVING until
the replacement zygote is up, then SERVING; the restart is counted in
preflight_zygote_restarts_total, and the next check PASSes.

Before the heartbeat, the check held its slot for timeout + 30 s and then
ended INTERNAL_ERROR, with health SERVING throughout.

Usage: zygote_liveness_test.py BUILD_DIR ZOO_DIR
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from e2e_common import (Results, Server, Zoo, check_case, children, cli_path, health_check,
                        spawn_check, wait_for)

BUILD, ZOO = sys.argv[1], Zoo(sys.argv[2])
CLI = cli_path(BUILD)
R = Results()
expect = R.expect

HEARTBEAT_SECONDS = 2
# Found within the timeout plus one ping interval; the rest is the CLI's and
# the server's own latency on a loaded machine.
FOUND_WITHIN_SECONDS = HEARTBEAT_SECONDS + 10
SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"


def gone(pid):
    """No such process, or a zombie nobody reaped yet: it runs no more."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def zygotes(server):
    return [int(pid) for pid in subprocess.run(
        ["pgrep", "-P", str(server.pid), "-f", "preflight-worker"],
        capture_output=True, text=True).stdout.split()]


def restarts(metrics_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        m = re.search(r"^preflight_zygote_restarts_total(?:\{[^}]*\})? (\S+)$", r.read().decode(),
                      re.M)
    return float(m.group(1)) if m else None


def main():
    store = tempfile.mkdtemp(prefix="preflight-liveness-")
    with Server(BUILD, store, "--worker-heartbeat-timeout", str(HEARTBEAT_SECONDS),
                metrics=True) as server:
        addr = server.addr
        expect("health SERVING at start", health_check(addr) == SERVING)
        # An idle zygote answers its pings: several timeouts pass, no restart.
        first = zygotes(server)
        time.sleep(3 * HEARTBEAT_SECONDS)
        expect("an idle, live zygote is kept", zygotes(server) == first and len(first) == 1,
               (first, zygotes(server)))
        expect("no restart counted yet", restarts(server.metrics_port) == 0)

        loop = ZOO["hostile_infinite_loop"]
        hung = spawn_check(CLI, loop["model"], loop["batch"], "--timeout", "60", "--seed", "7",
                           server=addr)
        zygote = first[0] if first else -1
        started = wait_for(lambda: children(zygote), 120)
        expect("the hung check's job started", bool(started), first)
        jobs = children(zygote)

        seen = []  # Health answers while the zygote is stopped and replaced.
        watching = threading.Event()
        watching.set()

        def watch():
            while watching.is_set():
                seen.append(health_check(addr))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        os.kill(zygote, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            out, err = hung.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            hung.kill()
            out, err = hung.communicate()
        waited = time.monotonic() - stopped
        print(f"stopped zygote: the check answered {waited:.1f} s after SIGSTOP")
        try:
            findings = json.loads(out)["report"]["findings"]
        except (json.JSONDecodeError, KeyError, TypeError):
            findings = []
        codes = [f.get("code") for f in findings]
        expect(f"the check is answered within {FOUND_WITHIN_SECONDS} s of SIGSTOP "
               f"({waited:.1f} s)", waited < FOUND_WITHIN_SECONDS)
        expect("its verdict is ERROR / WORKER_CRASHED (a verdict, exit 3, not an RPC error)",
               hung.returncode == 3 and "WORKER_CRASHED" in codes, (hung.returncode, out[-500:],
                                                                     err[-500:]))
        expect("the message says the worker stopped answering",
               any("stopped answering" in f.get("message", "") for f in findings), findings)
        expect("the stopped zygote was killed", wait_for(lambda: gone(zygote), 10), zygote)
        expect("its job was killed with it", jobs and wait_for(lambda: all(map(gone, jobs)), 10),
               jobs)
        serving_again = wait_for(lambda: seen and seen[-1] == SERVING and NOT_SERVING in seen, 120)
        watching.clear()
        watcher.join()
        expect("health went NOT_SERVING while no zygote was up", NOT_SERVING in seen,
               sorted(set(map(repr, seen))))
        expect("health is SERVING again once the replacement is up", serving_again,
               seen[-5:])
        after = zygotes(server)
        expect("a new zygote replaced it", len(after) == 1 and after != first, (first, after))
        expect("the restart is counted", restarts(server.metrics_port) == 1,
               restarts(server.metrics_port))
        p, r = check_case(CLI, ZOO["mlp"], server=addr)
        expect("the next check PASSes on the new zygote",
               r is not None and r["report"]["verdict"] == "PASS", p.stderr[-500:])
        expect("health SERVING after", health_check(addr) == SERVING)
    sys.exit(R.finish())


if __name__ == "__main__":
    main()
