#!/usr/bin/env python3
"""Bounded load test on loopback: 200 checks from 16 concurrent gRPC clients
against a real preflight-server, mixing cache misses (60 distinct requests
over PASS and FAIL models) and hits. Fails unless every client got exactly
its own verdict with no RPC errors. Prints latency percentiles and
throughput (reported in the README; never asserted: machines are shared).

Usage: load_test.py BUILD_DIR ZOO_DIR [--requests N] [--clients N]
"""
import argparse
import json
import subprocess
import sys
import tempfile

from e2e_common import Results, Server, Zoo


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("zoo")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--distinct", type=int, default=60)
    args = ap.parse_args()
    zoo = Zoo(args.zoo)
    store = tempfile.mkdtemp(prefix="preflight-load-")
    server = Server(args.build, store, "--queue_size", "64")
    cases = []  # MODEL,BATCH,VERDICT[,LOSS]: the manifest's expectations and --loss.
    for name in ("mlp", "loss_flat", "regression", "data_non_finite"):
        c, flags = zoo[name], zoo[name]["flags"]
        loss = [flags[flags.index("--loss") + 1]] if "--loss" in flags else []
        cases.append(",".join([c["model"], c["batch"], c["verdict"], *loss]))
    cmd = [f"{args.build}/tools/bench/preflight_load", "--server", server.addr,
           "--clients", str(args.clients), "--requests", str(args.requests),
           "--distinct", str(args.distinct)]
    for c in cases:
        cmd += ["--case", c]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    finally:
        server.stop()
    print(p.stdout.strip(), p.stderr.strip())
    result = json.loads(p.stdout)
    R = Results()
    R.expect(f"{args.requests} checks from {args.clients} clients: "
             f"every client got its own verdict ({result['cache_hits']} cache hits), "
             f"p50 {result['p50_seconds']:.3f}s p95 {result['p95_seconds']:.3f}s, "
             f"{result['throughput_per_second']:.1f} checks/s",
             p.returncode == 0 and result["ok"] == args.requests and result["mismatches"] == 0,
             result)
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
