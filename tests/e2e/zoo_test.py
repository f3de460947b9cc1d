#!/usr/bin/env python3
"""End-to-end: every zoo case through the real `preflight check` CLI.

Asserts, per case, the exact verdict, that every expected finding code is
present, the exit code that goes with the verdict, and for healthy cases that
nothing beyond INFO was found. Also checks that two runs of the same case give
byte-identical JSON apart from timing fields.

With --server, every case (including the hostile, service-only ones) goes
through a running Preflight server and must give the same verdict and codes.

Usage: zoo_test.py PREFLIGHT_BINARY ZOO_DIR [--only NAME ...] [--jobs N] [--server ADDR]
"""
import argparse
import concurrent.futures
import json
import sys

from e2e_common import Zoo, check_case

EXIT_FOR = {"PASS": 0, "WARN": 0, "FAIL": 1, "ERROR": 3}


SERVER = None  # HOST:PORT when the cases go through a Preflight server.


def run(binary, case):
    p, report = check_case(binary, case, server=SERVER)
    if SERVER and report is not None:
        report = report.get("report")
    return p, report


def assess(binary, case):
    """(problems with the case's outcome, its report or None)."""
    problems = []
    p, report = run(binary, case)
    if report is None:
        return [f"no JSON report (exit {p.returncode}): {p.stderr.strip()[:300]}"], None
    verdict = report.get("verdict")
    codes = [f["code"] for f in report.get("findings", [])]
    if verdict != case["verdict"]:
        problems.append(f"verdict {verdict}, expected {case['verdict']}")
    for code in case["codes"]:  # "A|B": either one (a race between two budgets).
        if not any(alt in codes for alt in code.split("|")):
            problems.append(f"missing {code}")
    for code, text in case.get("hints", {}).items():  # The cause the hint must name.
        hints = [f.get("hint", "") for f in report.get("findings", []) if f["code"] == code]
        if not any(text in h for h in hints):
            problems.append(f"{code} hint lacks {text!r}: {hints}")
    if p.returncode != EXIT_FOR[case["verdict"]]:
        problems.append(f"exit code {p.returncode}, expected {EXIT_FOR[case['verdict']]}")
    if case["verdict"] == "PASS":
        loud = [f["code"] for f in report["findings"] if f["severity"] != "INFO"]
        if loud:
            problems.append(f"healthy model has non-INFO findings {loud}")
    for f in report.get("findings", []):
        if not f.get("message") or not f.get("hint"):
            problems.append(f"{f['code']} lacks a message or hint")
    return problems, report


def strip_timing(report):
    report = dict(report)
    report.pop("timing", None)
    return json.dumps(report, sort_keys=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("zoo")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--determinism-cases", nargs="*", default=["mlp", "transformer", "loss_plateau_low_lr"])
    ap.add_argument("--server", help="run every case through this Preflight server")
    args = ap.parse_args()
    global SERVER
    SERVER = args.server
    # Hostile models are only contained by the service's sandbox.
    cases = Zoo(args.zoo).select(args.only, service=bool(args.server))

    failures = 0
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda c: (c, *assess(args.binary, c)), cases))
    for case, problems, report in results:
        codes = ",".join(f["code"] for f in report["findings"]) if report else "-"
        status = "ok  " if not problems else "FAIL"
        verdict = report["verdict"] if report else "-"
        secs = report.get("timing", {}).get("workerSeconds", 0) if report else 0
        print(f"{status} {case['name']:<28} {verdict:<6} {secs:6.2f}s {codes}")
        for p in problems:
            print(f"       - {p}")
        failures += bool(problems)

    # Determinism of whole reports: same inputs, same bytes (timing aside).
    total = len(cases)
    for name in args.determinism_cases:
        if args.only and name not in args.only:
            continue  # Left out on purpose; a name the zoo lost is a failure.
        total += 1
        case = next((c for c in cases if c["name"] == name), None)
        a = b = None
        if case is not None:
            _, a = run(args.binary, case)
            _, b = run(args.binary, case)
        same = a is not None and b is not None and strip_timing(a) == strip_timing(b)
        print(f"{'ok  ' if same else 'FAIL'} reproducible report: {name}"
              + ("" if case else " (no such zoo case)"))
        failures += not same

    print(f"{total - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
