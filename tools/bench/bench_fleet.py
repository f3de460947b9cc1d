#!/usr/bin/env python3
"""Fleet benchmark (issue 16): replicas sharing one PostgreSQL, and the
latency a PostgreSQL store operation adds over SQLite.

1. Store operations: build/tools/bench/preflight_store_bench (Google
   Benchmark) runs the server's store calls on both backends, the SQLite
   directory store and a throwaway PostgreSQL on loopback
   (tests/store/pg_cluster.sh, default durability: fsync on).
2. Replicas: 1, 2 and 3 real preflight-server replicas on one PostgreSQL
   with the same total job slots (6: 6, 3+3, 2+2+2), plus one replica on
   SQLite for reference; concurrent gRPC clients spread over the replicas
   round-robin send distinct reference-case checks (every one a cache miss).
   Reports checks/s and p95 latency, and each as a ratio to one replica.

Writes its section of BENCHMARKS.md between the `fleet` markers (bench.py
keeps it when it rewrites the rest).

Usage: bench_fleet.py BUILD_DIR [--quick] [--out BENCHMARKS.md]
"""
import argparse
import concurrent.futures
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from e2e_common import Server, Zoo  # noqa: E402

PG = os.path.join(ROOT, "tests", "store", "pg_cluster.sh")
BEGIN, END = "<!-- fleet:begin -->", "<!-- fleet:end -->"
TOTAL_SLOTS = 6
OPS = ["put", "bind", "get_by_digest", "get_by_job_id", "blob_put", "blob_get", "claim"]


def pg(*args):
    return subprocess.run([PG, *args], check=True, capture_output=True, text=True).stdout.strip()


def store_ops(build, url, quick):
    binary = os.path.join(build, "tools", "bench", "preflight_store_bench")
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, PREFLIGHT_BENCH_PG_URL=url, PREFLIGHT_BENCH_SQLITE_DIR=f"{d}/store")
        out = subprocess.run(
            [binary, "--benchmark_format=json", f"--benchmark_min_time={0.05 if quick else 0.5}",
             f"--benchmark_repetitions={1 if quick else 5}",
             "--benchmark_report_aggregates_only=true"],
            env=env, check=True, capture_output=True, text=True).stdout
    times = {}
    for b in json.loads(out)["benchmarks"]:
        name = b.get("run_name", b["name"])
        if b.get("aggregate_name", "median") != "median":
            continue
        op, backend = name.split("/")[:2]
        unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
        times[(op, backend)] = b["real_time"] * unit
    return times


def run_load(addrs, model, batch, n_requests, clients, seed_base):
    import grpc  # noqa: PLC0415
    from preflight.v1 import preflight_pb2, preflight_pb2_grpc  # noqa: PLC0415
    stubs = [preflight_pb2_grpc.PreflightStub(grpc.insecure_channel(a)) for a in addrs]

    def one(i):
        req = preflight_pb2.CheckRequest(model=preflight_pb2.Artifact(inline=model),
                                         batch=preflight_pb2.Artifact(inline=batch))
        req.config.seed = seed_base + i
        t = time.monotonic()
        r = stubs[i % len(stubs)].Check(req, timeout=600)
        return time.monotonic() - t, r.report.verdict, r.cached

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(n_requests)))
    wall = time.monotonic() - start
    lat = sorted(r[0] for r in results)
    bad = [r for r in results if r[1] != 1 or r[2]]
    if bad:
        raise SystemExit(f"bench_fleet: {len(bad)} answers were not fresh PASS verdicts")
    return n_requests / wall, lat[max(0, int(round(0.95 * len(lat))) - 1)]


def replicas(build, url_for, zoo, quick):
    mlp = zoo["mlp"]
    with open(mlp["model"], "rb") as f:
        model = f.read()
    with open(mlp["batch"], "rb") as f:
        batch = f.read()
    n_requests = 12 if quick else 60
    configs = [("postgres", 1), ("postgres", 2), ("postgres", 3), ("sqlite", 1)]
    rows = []
    for k, (backend, n) in enumerate(configs):
        store = url_for(backend, k)
        slots = str(TOTAL_SLOTS // n)
        servers = [Server(build, store, "--job_slots", slots) for _ in range(n)]
        try:
            # Warm-up: every zygote has forked once and the schema is in cache.
            run_load([s.addr for s in servers], model, batch, n, n, 10_000_000 * (k + 1))
            rate, p95 = run_load([s.addr for s in servers], model, batch, n_requests,
                                 TOTAL_SLOTS, 1000 * (k + 1))
        finally:
            for s in servers:
                s.stop()
        rows.append((backend, n, slots, rate, p95))
        print(f"bench_fleet: {backend} x{n} ({slots} slots each): {rate:.2f} checks/s, "
              f"p95 {p95:.3f} s", file=sys.stderr)
    return rows, n_requests


def write(out, section):
    text = open(out).read() if os.path.exists(out) else "# Benchmarks\n"
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(out, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    sys.path.insert(0, os.path.join(build, "python"))
    zoo_dir = os.path.join(build, "zoo")
    if not os.path.exists(os.path.join(zoo_dir, "manifest.json")):
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "zoo", "make_zoo.py"),
                        zoo_dir], check=True, stdout=subprocess.DEVNULL)
    zoo = Zoo(zoo_dir)
    started = time.time()
    cluster = pg("create")
    tmp = tempfile.mkdtemp(prefix="preflight-bench-fleet-")
    try:
        with open(os.path.join(cluster, "url")) as f:
            url = f.read().strip()
        ops = store_ops(build, url, args.quick)
        base = url.rsplit("/", 1)[0]

        def url_for(backend, k):
            if backend == "sqlite":
                return f"{tmp}/store-{k}"
            subprocess.run(["psql", f"{base}/postgres", "-qc", f"CREATE DATABASE fleet{k}"],
                           check=True, capture_output=True)
            return f"{base}/fleet{k}"

        rows, n_requests = replicas(build, url_for, zoo, args.quick)
    finally:
        pg("destroy", cluster)
    one = rows[0]
    L = ["## Fleet: replicas on one PostgreSQL (issue 16)", "",
         f"Written by `tools/bench/bench_fleet.py` on {time.strftime('%Y-%m-%d')}"
         f"{' (--quick: not for quoting)' if args.quick else ''}, {time.time() - started:.0f} s. "
         f"Machine: {platform.machine()}, {os.cpu_count()} cores; PostgreSQL 15 on loopback "
         "(a throwaway cluster, default durability: fsync on).", "",
         f"Replicas: {n_requests} distinct reference-case checks (`mlp`, every one a cache "
         f"miss), {TOTAL_SLOTS} concurrent gRPC clients spread round-robin over the replicas, "
         f"the same {TOTAL_SLOTS} job slots in total. Ratios are to one replica on PostgreSQL.",
         "",
         "| store | replicas | job slots each | checks/s | ratio | p95 latency (s) | ratio |",
         "|---|---|---|---|---|---|---|"]
    for backend, n, slots, rate, p95 in rows:
        L.append(f"| {backend} | {n} | {slots} | {rate:.2f} | {rate / one[3]:.2f} | {p95:.3f} | "
                 f"{p95 / one[4]:.2f} |")
    L += ["", f"This machine has {os.cpu_count()} cores: every replica's jobs share them, so "
          "more replicas cannot add throughput here; the ratios show what the fleet machinery "
          "(leases, shared store, more zygotes) costs, not the scaling a fleet of nodes gets "
          "(each replica there brings its own cores). Every figure here depends on this "
          "machine's load and disk: commits are fsyncs, and on a shared machine they vary "
          "several-fold between runs; compare the rows of one run, not with other sections.",
          "",
          "Store operations (median over repetitions of Google Benchmark's mean per call, "
          "one thread; `blob_put` a new 256 KiB artifact, `blob_get` a 4 MiB artifact opened "
          "for a job, `claim` a claim plus its release):", "",
          "| operation | SQLite (ms) | PostgreSQL (ms) | added by PostgreSQL (ms) |",
          "|---|---|---|---|"]
    for op in OPS:
        s, p = ops.get((op, "sqlite")), ops.get((op, "postgres"))
        if s is None or p is None:
            continue
        L.append(f"| {op} | {s * 1e3:.3f} | {p * 1e3:.3f} | {(p - s) * 1e3:+.3f} |")
    L += ["", "SQLite has no leases (one process uses it): its `claim` is the no-op of "
          "`SingleReplicaLeases`, which the server does not even call."]
    section = "\n".join(L)
    write(args.out, section)
    print(section)
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
