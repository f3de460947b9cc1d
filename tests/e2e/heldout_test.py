#!/usr/bin/env python3
"""End-to-end: the held-out structural faults (tools/zoo/heldout.py) through
the real `preflight check` CLI.

Prints per case the verdict, the finding codes and whether the report's
FAIL hint ends "inconclusive" (the curve finding's hint when no experiment
and no probe named a cause), then the inconclusive share of the FAIL reports
per held-out batch. Asserts that no held-out fault gets PASS (each is a real
fault) except the cases the set marks as known misses (printed with their
reason), and that every case gives a JSON report; with --max-inconclusive S,
also that each batch's inconclusive share is at most S.

Usage: heldout_test.py PREFLIGHT_BINARY HELDOUT_DIR [--only NAME ...] [--jobs N]
                       [--max-inconclusive S]
"""
import argparse
import concurrent.futures
import sys

from e2e_common import Zoo, check_case


def inconclusive(report):
    """Whether a FAIL-or-worse finding's hint says it is inconclusive."""
    return any("inconclusive" in f.get("hint", "").lower()
               for f in report.get("findings", []) if f.get("severity") in ("FAIL", "ERROR"))


def hint_kind(report):
    """How the loudest finding's hint ends up: its first words ("Verified",
    "Partly verified", "Not confirmed", "Measured", "Inconclusive", ...)."""
    rank = {"ERROR": 3, "FAIL": 2, "WARN": 1}
    loud = sorted((f for f in report.get("findings", []) if f.get("severity") in rank),
                  key=lambda f: -rank[f["severity"]])
    if not loud:
        return "-"
    hint = loud[0].get("hint", "")
    for kind in ("Verified", "Partly verified", "Not confirmed", "Measured", "Inconclusive"):
        if hint.startswith(kind):
            return kind
    return "canonical"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("heldout")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--max-inconclusive", type=float)
    args = ap.parse_args()
    cases = Zoo(args.heldout).select(args.only)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda c: (c, *check_case(args.binary, c)), cases))

    failures = 0
    per_batch = {}  # batch -> [FAIL reports, inconclusive ones]
    for case, p, report in results:
        if report is None:
            print(f"FAIL {case['name']:<30} no JSON report (exit {p.returncode}): "
                  f"{p.stderr.strip()[-300:]}")
            failures += 1
            continue
        verdict = report.get("verdict")
        codes = ",".join(f["code"] for f in report.get("findings", []))
        inc = inconclusive(report)
        miss = case.get("known_miss")
        ok = verdict != "PASS" or bool(miss)
        if verdict == "FAIL":
            counts = per_batch.setdefault(case.get("heldout_batch", 1), [0, 0])
            counts[0] += 1
            counts[1] += inc
        print(f"{'ok  ' if ok else 'FAIL'} b{case.get('heldout_batch', 1)} {case['name']:<30} "
              f"{verdict:<5} {'INCONCLUSIVE' if inc else 'named       '} {hint_kind(report):<16} "
              f"{codes}")
        if verdict == "PASS" and miss:
            print(f"       known miss: {miss}")
        failures += not ok
    for b, (fails, inc) in sorted(per_batch.items()):
        share = inc / fails if fails else 0
        bound_ok = args.max_inconclusive is None or share <= args.max_inconclusive
        print(f"{'ok  ' if bound_ok else 'FAIL'} batch {b}: {inc} of {fails} FAIL reports "
              f"inconclusive ({share:.0%})")
        failures += not bound_ok
    print(f"{len(results) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
