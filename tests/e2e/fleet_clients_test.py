#!/usr/bin/env python3
"""End-to-end: clients spread load over several servers (issue 16). Two real
preflight-servers sharing nothing (own stores, own zygotes, port 0), and the
real clients pointed at both with one `--server` list:

- the thin CLI's lookups and checks, and the Python client's lookups, reach
  both servers (counted by each server's own /metrics), and one Python
  channel alternates its calls between them (round_robin, not pick_first);
- with one dead address in the list, the CLI's check, verdict and the
  Python client's check and verdict still succeed, every time;
- dns:///localhost:PORT reaches the server; every address dead is exit 5
  UNAVAILABLE; a malformed list is exit 2 naming the problem.

The servers share no store, so every check here is small enough to travel
inline (a check and its own upload may otherwise reach different servers;
the fleet store of issue 16 is what makes that work).

Usage: fleet_clients_test.py BUILD_DIR ZOO_DIR
"""
import os
import re
import sys
import tempfile
import urllib.request

from e2e_common import Results, Server, Zoo, cli_path, free_port, run_cli

BUILD, ZOO = os.path.abspath(sys.argv[1]), Zoo(sys.argv[2])
THIN = cli_path(BUILD, thin=True)
sys.path.insert(0, os.path.join(BUILD, "python"))
R = Results()
expect = R.expect
TRIES = 40  # Each client draws the list's order anew: both missed in 40 fair draws, p = 2^-39.


def rpc_count(server, method, code=None):
    """preflight_rpc_requests_total of one server for `method` (and `code`)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()
    total = 0.0
    for labels, value in re.findall(r"^preflight_rpc_requests_total\{([^}]*)\} (\S+)$", text,
                                    re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if got.get("method") == method and (code is None or got.get("code") == code):
            total += float(value)
    return total


def until_both(servers, method, call):
    """Calls `call()` until each server counted a `method` call (at most
    TRIES times); the per-server counts gained."""
    before = [rpc_count(s, method) for s in servers]
    for _ in range(TRIES):
        call()
        gained = [rpc_count(s, method) - b for s, b in zip(servers, before)]
        if all(g > 0 for g in gained):
            break
    return gained


def main():
    tmp = tempfile.mkdtemp(prefix="preflight-fleet-clients-")
    a = Server(BUILD, f"{tmp}/a", "--job_slots", "1", metrics=True)
    b = Server(BUILD, f"{tmp}/b", "--job_slots", "1", metrics=True)
    both = f"{a.addr},{b.addr}"
    dead = f"127.0.0.1:{free_port()}"
    mlp = ZOO["mlp"]
    try:
        gained = until_both([a, b], "GetVerdict", lambda: run_cli(
            THIN, "verdict", "--server", both, "--job-id", "fleet/none", timeout=60))
        expect(f"thin CLI lookups over '{both}' reach both servers (gained {gained})",
               all(g > 0 for g in gained), gained)

        seed = iter(range(1000))
        outcomes = []

        def check():
            p = run_cli(THIN, "check", "--server", both, "--model", mlp["model"], "--batch",
                        mlp["batch"], *mlp["flags"], "--seed", str(next(seed)), timeout=300)
            outcomes.append(p.returncode)

        gained = until_both([a, b], "Check", check)
        expect(f"thin CLI checks over the list reach both servers (gained {gained}), all PASS",
               all(g > 0 for g in gained) and set(outcomes) == {0}, (gained, outcomes))

        import preflight

        gained = until_both([a, b], "GetVerdict", lambda: _py_lookup(preflight, both))
        expect(f"Python client lookups over the list reach both servers (gained {gained})",
               all(g > 0 for g in gained), gained)

        # One channel of the Python client (Remote.channel, as check() and
        # verdict() build it), many calls: round_robin (not just
        # the shuffled order) alternates them; pick_first would stay on one.
        from preflight import _client
        from preflight.v1 import preflight_pb2, preflight_pb2_grpc

        with _client.Remote(both).channel() as channel:
            stub = preflight_pb2_grpc.PreflightStub(channel)

            def one_call():
                try:
                    stub.GetVerdict(preflight_pb2.GetVerdictRequest(job_id="fleet/none"),
                                    timeout=10)
                except _client.grpc.RpcError as e:
                    if e.code().name != "NOT_FOUND":
                        raise

            before = [rpc_count(s, "GetVerdict") for s in (a, b)]
            for _ in range(500):
                one_call()
                gained = [rpc_count(s, "GetVerdict") - x for s, x in zip((a, b), before)]
                if all(g > 0 for g in gained):
                    break
        expect(f"one Python channel alternates its calls over both servers (gained {gained})",
               all(g > 0 for g in gained), gained)

        # One dead address: round_robin skips it; every call is answered.
        for server in (f"{dead},{a.addr}", f"{a.addr},{dead}"):
            codes = [run_cli(THIN, "check", "--server", server, "--model", mlp["model"],
                             "--batch", mlp["batch"], *mlp["flags"], "--job-id", "fleet/pass",
                             timeout=300).returncode for _ in range(3)]
            verdicts = [run_cli(THIN, "verdict", "--server", server, "--job-id", "fleet/pass",
                                timeout=60).returncode for _ in range(5)]
            expect(f"--server {server} (one dead): 3 checks PASS, 5 lookups found",
                   codes == [0] * 3 and verdicts == [0] * 5, (codes, verdicts))
        import torch

        mlp_batch = torch.load(mlp["batch"])
        report = preflight.check(mlp["model"], mlp_batch, server=f"{dead},{a.addr}",
                                 job_id="fleet/py")
        stored = preflight.verdict(job_id="fleet/py", server=f"{a.addr},{dead}")
        expect("Python client with a dead address: check PASS, its verdict read back",
               report.verdict == "PASS" and stored.verdict == "PASS"
               and stored.request_digest == report.request_digest, (report, stored))

        p = run_cli(THIN, "verdict", "--server", f"dns:///localhost:{a.port}", "--job-id",
                    "fleet/pass", timeout=60)
        expect("dns:///localhost:PORT finds the verdict", p.returncode == 0, p.stdout + p.stderr)

        p = run_cli(THIN, "verdict", "--server", f"{dead},127.0.0.1:{free_port()}", "--job-id",
                    "fleet/pass", "--timeout", "5", timeout=60)
        expect("every address dead: exit 5, UNAVAILABLE",
               p.returncode == 5 and "UNAVAILABLE" in p.stderr, p.stderr)
        for bad, message in [(f"{a.addr},,{b.addr}", "--server: empty address in the list"),
                             ("http://127.0.0.1:1", "--server: unsupported scheme 'http'"),
                             (f"{a.addr},127.0.0.1", "'127.0.0.1' has no port")]:
            p = run_cli(THIN, "verdict", "--server", bad, "--job-id", "j", timeout=60)
            expect(f"--server '{bad}': exit 2 naming the problem",
                   p.returncode == 2 and message in p.stderr, p.stderr)
        try:
            preflight.verdict(job_id="j", server=f"{a.addr},")
            expect("Python client: a bad server= raises ValueError", False)
        except ValueError as e:
            expect("Python client: a bad server= raises ValueError naming the problem",
                   "server: empty address in the list" in str(e), e)
    finally:
        a.stop()
        b.stop()
    return R.finish()


def _py_lookup(preflight, server):
    try:
        preflight.verdict(job_id="fleet/none", server=server)
    except preflight.PreflightError as e:
        if e.code != "NOT_FOUND":
            raise


if __name__ == "__main__":
    sys.exit(main())
