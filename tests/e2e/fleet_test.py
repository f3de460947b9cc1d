#!/usr/bin/env python3
"""End-to-end fleet: three real preflight-server replicas sharing one real
PostgreSQL (a throwaway cluster from tests/store/pg_cluster.sh), driven with
the real CLI and the generated gRPC stubs.

1. The replicas start at once on an empty database (the schema is created
   once, under its advisory lock).
2. A check through A is answered by GetVerdict on B and C.
3. An artifact uploaded to A is checkable by its sha256 on B; the CLI
   pointed at all three (--server A,B,C) checks a model that travels by
   Upload, and every lookup through the list finds its verdict.
4. The same request sent to all three at once runs once: one check in the
   replicas' metrics, three equal answers.
5. kill -9 of the replica holding a lease mid-check: another replica runs
   the check once the lease expires; every answer is the right verdict.
6. PostgreSQL stopped while the replicas run: checks and lookups fail
   UNAVAILABLE naming the store; after it restarts, without restarting any
   replica, every stored verdict is still there and checks run again.

Usage: fleet_test.py BUILD_DIR ZOO_DIR
"""
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

from e2e_common import ROOT, Results, Server, Zoo, check_case, cli_path, run_cli, spawn_check, wait_for

BUILD, ZOO = sys.argv[1], Zoo(sys.argv[2])
CLI = cli_path(BUILD)
PG = os.path.join(ROOT, "tests", "store", "pg_cluster.sh")
LEASE_TTL = 3  # Seconds: short, so a takeover happens within the test's time.
R = Results()
expect = R.expect

sys.path.insert(0, os.path.join(os.path.abspath(BUILD), "python"))
import grpc  # noqa: E402
from preflight.v1 import preflight_pb2, preflight_pb2_grpc  # noqa: E402


def pg(*args):
    p = subprocess.run([PG, *args], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise SystemExit(f"pg_cluster.sh {' '.join(args)}: {p.stdout}{p.stderr}")
    return p.stdout.strip()


def scrape(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                timeout=10) as r:
        return r.read().decode()


def metric(server, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in scrape(server).splitlines():
        if line.startswith("#") or not (line.startswith(name + "{") or
                                        line.startswith(name + " ")):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def checks_run(servers):
    return sum(metric(s, "preflight_checks_total") for s in servers)


def verdict_json(server, *key):
    """`preflight verdict --json` through `server` (a Server, or a --server string)."""
    addr = server if isinstance(server, str) else server.addr
    v = run_cli(CLI, "verdict", "--server", addr, *key, "--json", timeout=60)
    try:
        return v, json.loads(v.stdout)
    except json.JSONDecodeError:
        return v, None


def report_of(response):
    return json.dumps(response["report"], sort_keys=True) if response else None


def main():
    cluster = pg("create")
    with open(os.path.join(cluster, "url")) as f:
        url = f.read().strip()
    store_name = f"store {url}"
    servers = []
    try:
        # 1. Three replicas start at once on the empty database.
        flags = ("--lease_ttl", str(LEASE_TTL), "--job_slots", "1")
        started, errors = [None] * 3, []

        def start(i):
            try:
                started[i] = Server(BUILD, url, *flags, metrics=True)
            except SystemExit as e:
                errors.append(str(e))

        threads = [threading.Thread(target=start, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        servers = [s for s in started if s]
        if not expect("three replicas start at once on one empty PostgreSQL",
                      len(servers) == 3, errors):
            return R.finish()
        a, b, c = servers
        schema = subprocess.run(["psql", url, "-tAc", "SELECT count(*) FROM schema_version"],
                                capture_output=True, text=True)
        expect("the schema was migrated once (one schema_version row per migration, 2)",
               schema.stdout.strip() == "2", schema)

        # 2. Checked through A, answered by B and C.
        mlp = ZOO["mlp"]
        p, r = check_case(CLI, mlp, "--job-id", "fleet/mlp", server=a.addr, timeout=300)
        expect("check via A: mlp PASS", r is not None and r["report"]["verdict"] == "PASS", p)
        digest = r["requestDigest"] if r else ""
        for name, s in (("B", b), ("C", c)):
            v, got = verdict_json(s, "--job-id", "fleet/mlp")
            expect(f"GetVerdict on {name} by job id: A's verdict",
                   got is not None and got.get("requestDigest") == digest and
                   got["report"] == r["report"], v)
            v, got = verdict_json(s, "--digest", digest)
            expect(f"GetVerdict on {name} by digest", v.returncode == 0 and got is not None, v)
        p, again = check_case(CLI, mlp, server=c.addr, timeout=300)
        expect("the same check on C is a cache hit with A's report",
               again is not None and again.get("cached") is True and
               again["report"] == r["report"], p)

        # 3. Uploaded to A, checked by sha256 on B.
        def upload(server, path):
            with open(path, "rb") as f:
                data = f.read()
            stub = preflight_pb2_grpc.PreflightStub(grpc.insecure_channel(server.addr))
            return stub.Upload(iter([preflight_pb2.UploadRequest(chunk=data,
                                                                 expected_size=len(data))]),
                               timeout=60)

        up_model, up_batch = upload(a, mlp["model"]), upload(a, mlp["batch"])
        stub_b = preflight_pb2_grpc.PreflightStub(grpc.insecure_channel(b.addr))
        req = preflight_pb2.CheckRequest(
            model=preflight_pb2.Artifact(sha256=up_model.sha256),
            batch=preflight_pb2.Artifact(sha256=up_batch.sha256), job_id="fleet/uploaded")
        req.config.seed = 3
        try:
            resp = stub_b.Check(req, timeout=300)
            expect("uploaded to A, checked by sha256 on B: PASS",
                   resp.report.verdict == 1 and resp.report.model_sha256 == up_model.sha256,
                   resp.report)
        except grpc.RpcError as e:
            expect("uploaded to A, checked by sha256 on B: PASS", False, e)

        # 3b. The real CLI pointed at the whole fleet: a 43 MiB model travels by
        # Upload, and the upload and the check are separate calls that may reach
        # different replicas; only a shared blob store makes that work.
        fleet = ",".join(s.addr for s in servers)
        big = ZOO["resnet18"]
        p, r = check_case(CLI, big, "--job-id", "fleet/resnet", server=fleet, timeout=300)
        expect("the CLI with --server A,B,C: a 43 MiB model via Upload checks "
               f"{big['verdict']}", r is not None and r["report"]["verdict"] == big["verdict"] and
               os.path.getsize(big["model"]) > 4 << 20, p.stderr)
        answers = [verdict_json(fleet, "--job-id", "fleet/resnet")[1]
                   for _ in range(3)]
        expect("verdict lookups through --server A,B,C all find it",
               all(x and x["report"]["verdict"] == big["verdict"] for x in answers), answers)

        # 4. The same new request to all three at once: one run, three equal answers.
        before = checks_run(servers)
        procs = [spawn_check(CLI, mlp["model"], mlp["batch"], *mlp["flags"], "--seed", "11",
                             server=s.addr) for s in servers]
        outs = [p.communicate(timeout=300) for p in procs]
        answers = []
        for out, _ in outs:
            try:
                answers.append(json.loads(out))
            except json.JSONDecodeError:
                answers.append(None)
        expect("three replicas at once: three PASS answers",
               all(x and x["report"]["verdict"] == "PASS" for x in answers),
               [e for _, e in outs])
        expect("three replicas at once: equal answers (digest and report)",
               all(x for x in answers) and len({x["requestDigest"] for x in answers}) == 1 and
               len({report_of(x) for x in answers}) == 1, answers)
        expect("three replicas at once: the check ran once (sum of preflight_checks_total)",
               checks_run(servers) - before == 1, checks_run(servers) - before)
        expect("three replicas at once: two answers came from the one run (cached)",
               sum(1 for x in answers if x and x.get("cached")) == 2, answers)

        # 5. kill -9 of the lease holder mid-check. worker_timeout's model
        # never returns: the check ends at its --timeout with WORKER_TIMEOUT.
        slow = ZOO["worker_timeout"]
        slow_flags = ("--timeout", "6", "--seed", "21")
        before_bc = checks_run([b, c])
        on_a = spawn_check(CLI, slow["model"], slow["batch"], *slow_flags, server=a.addr)
        expect("the slow check runs on A (a busy job slot)",
               wait_for(lambda: metric(a, "preflight_job_slots", state="busy") == 1, 60))
        waiting = [spawn_check(CLI, slow["model"], slow["batch"], *slow_flags, server=s.addr)
                   for s in (b, c)]
        time.sleep(1.0)  # B and C now wait on A's lease (nothing to poll for: they must not run).
        expect("while A holds the lease, B and C run nothing",
               checks_run([b, c]) == before_bc and
               metric(b, "preflight_job_slots", state="busy") == 0 and
               metric(c, "preflight_job_slots", state="busy") == 0)
        a.kill()
        killed_at = time.monotonic()
        # A renewed its lease every TTL/3, so at least 2/3 of the TTL was
        # left when it died: nobody may start the check before that.
        restarted = wait_for(lambda: any(metric(s, "preflight_job_slots", state="busy") == 1
                                         for s in (b, c)), 60)
        took = time.monotonic() - killed_at
        a_out, a_err = on_a.communicate(timeout=60)
        outs = [p.communicate(timeout=120) for p in waiting]
        answers = []
        for out, _ in outs:
            try:
                answers.append(json.loads(out))
            except json.JSONDecodeError:
                answers.append(None)
        expect("after A died, B and C both answer ERROR / WORKER_TIMEOUT (the right verdict)",
               all(x and x["report"]["verdict"] == slow["verdict"] and
                   "WORKER_TIMEOUT" in [f["code"] for f in x["report"]["findings"]]
                   for x in answers), [e for _, e in outs])
        expect(f"the takeover started once A's lease expired ({took:.1f} s after the kill; "
               f"TTL {LEASE_TTL} s)",
               restarted and 2 * LEASE_TTL / 3 - 0.3 <= took <= LEASE_TTL + 5, took)
        expect("one of B and C took the lease over (preflight_lease_takeovers_total)",
               metric(b, "preflight_lease_takeovers_total") +
               metric(c, "preflight_lease_takeovers_total") == 1)
        expect("the check ran once more, not twice", checks_run([b, c]) - before_bc == 1,
               checks_run([b, c]) - before_bc)
        a_answer = None
        try:
            a_answer = json.loads(a_out)
        except json.JSONDecodeError:
            pass
        expect("A's own client got an error or the right verdict, never a wrong one",
               (a_answer is None and on_a.returncode == 5) or
               (a_answer and a_answer["report"]["verdict"] == slow["verdict"]),
               (on_a.returncode, a_err))

        # 6. PostgreSQL stopped under the running replicas, then restarted.
        pg("stop", cluster)
        p, _ = check_case(CLI, mlp, "--seed", "12", server=b.addr, timeout=120)
        expect("database down: a check fails UNAVAILABLE naming the store (exit 5)",
               p.returncode == 5 and "UNAVAILABLE" in p.stderr and store_name in p.stderr,
               p.stderr)
        v, _ = verdict_json(c, "--job-id", "fleet/mlp")
        expect("database down: GetVerdict fails UNAVAILABLE naming the store (exit 5)",
               v.returncode == 5 and "UNAVAILABLE" in v.stderr and store_name in v.stderr, v)
        expect("database down: the replicas keep running", b.alive() and c.alive())
        pg("start", cluster)
        for name, s in (("B", b), ("C", c)):
            v, got = verdict_json(s, "--job-id", "fleet/mlp")
            expect(f"database back: {name} still has the verdict stored before (no restart)",
                   got is not None and got.get("requestDigest") == digest, v)
        v, got = verdict_json(c, "--job-id", "fleet/uploaded")
        expect("database back: the uploaded artifact's verdict is there",
               got is not None and got["report"]["verdict"] == "PASS", v)
        p, r = check_case(CLI, mlp, "--seed", "12", server=b.addr, timeout=300)
        expect("database back: a new check runs on B", r is not None and
               r["report"]["verdict"] == "PASS" and not r.get("cached"), p)
        expect("database back: B and C are the same processes",
               b.alive() and c.alive())
    finally:
        for s in servers:
            if s.alive():
                s.stop()
        pg("destroy", cluster)
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
