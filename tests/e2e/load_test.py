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

from e2e_common import start_server, stop


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("zoo")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--distinct", type=int, default=60)
    args = ap.parse_args()
    store = tempfile.mkdtemp(prefix="preflight-load-")
    server, addr = start_server(args.build, store, "--queue_size", "64")
    z = args.zoo
    cases = [f"{z}/mlp.model.pt,{z}/mlp.batch.pt,PASS",
             f"{z}/loss_flat.model.pt,{z}/loss_flat.batch.pt,FAIL",
             f"{z}/regression.model.pt,{z}/regression.batch.pt,PASS,mse",
             f"{z}/data_non_finite.model.pt,{z}/data_non_finite.batch.pt,FAIL"]
    cmd = [f"{args.build}/tools/bench/preflight_load", "--server", addr,
           "--clients", str(args.clients), "--requests", str(args.requests),
           "--distinct", str(args.distinct)]
    for c in cases:
        cmd += ["--case", c]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    finally:
        stop(server)
    print(p.stdout.strip(), p.stderr.strip())
    result = json.loads(p.stdout)
    ok = p.returncode == 0 and result["ok"] == args.requests and result["mismatches"] == 0
    print(f"{'ok  ' if ok else 'FAIL'} {args.requests} checks from {args.clients} clients: "
          f"every client got its own verdict ({result['cache_hits']} cache hits), "
          f"p50 {result['p50_seconds']:.3f}s p95 {result['p95_seconds']:.3f}s, "
          f"{result['throughput_per_second']:.1f} checks/s")
    print(f"{1 if ok else 0} passed, {0 if ok else 1} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
