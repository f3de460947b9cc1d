#!/usr/bin/env python3
"""Prints the structural probes' measurements (checks/structure.cc) for every
case of a manifest (the zoo's or the held-out set's), for the README's
Thresholds table: the CLI's PREFLIGHT_DEBUG_PROBES line per case, with the
case's expected verdict. The probes measure the initial model, so the run is
cut short (--steps 30 --no-diagnose --determinism-steps 0); `blocked` (from
the main run's gradients) is then measured over those 30 steps only.

Usage: probe_calibrate.py PREFLIGHT_BINARY MANIFEST_DIR [--only NAME ...]
"""
import argparse
import concurrent.futures
import json
import os
import subprocess


def probe(binary, c):
    env = dict(os.environ, PREFLIGHT_DEBUG_PROBES="1")
    p = subprocess.run([binary, "check", "--model", c["model"], "--batch", c["batch"], "--json",
                        *c["flags"], "--steps", "30", "--no-diagnose", "--determinism-steps",
                        "0"], capture_output=True, text=True, env=env, timeout=600)
    line = next((l for l in p.stderr.splitlines() if l.startswith("probes:")), "no probe line")
    return line


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("dir")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    with open(os.path.join(args.dir, "manifest.json")) as f:
        cases = [c for c in json.load(f) if not c.get("service_only")
                 and (not args.only or c["name"] in args.only)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        lines = list(pool.map(lambda c: probe(args.binary, c), cases))
    for c, line in zip(cases, lines):
        print(f"{c['name']:<32} {c['verdict']:<6} {line}")


if __name__ == "__main__":
    main()
