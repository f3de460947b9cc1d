#!/usr/bin/env python3
"""Time-to-verdict of failing checks: the differential diagnosis with its
follow-up experiments one after another (--parallel-experiments 1, what every
check did before issue 13) and trained at once (--parallel-experiments 0: one
run per --threads CPUs the check may use).

For each zoo case whose curve fails and starts experiments, runs the real
`preflight check` CLI both ways, alternating, and reports the median wall
time of the whole check (process start to verdict), the diagnosis phase,
the experiments' summed own time and how many ran at once. It also demands
that both ways give the same report apart from its timing: parallelism is
a speed knob, never a change of verdict, and this is where a race would show.

Writes its table into BENCHMARKS.md between <!-- diagnosis:begin/end -->
(bench.py keeps that block when it rewrites the file).

Usage: bench_diagnosis.py BUILD_DIR ZOO_DIR [--quick] [--reps N] [--out FILE]
  --quick: one case, one repetition, the report comparison only (CI).
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from e2e_common import Zoo, check_args, cli_path  # noqa: E402

# Failing (or warning) cases whose diagnosis runs two or more experiments.
CASES = ["loss_plateau_weight_decay", "loss_plateau_low_lr", "loss_oscillating", "loss_rising",
         "slow_linear", "exploding_activations"]
QUICK_CASES = ["loss_plateau_low_lr"]
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")


def check(cli, case, parallel):
    """(wall seconds, report) of one local check."""
    args = check_args(case["model"], case["batch"], *case["flags"], "--parallel-experiments",
                      str(parallel))
    t = time.perf_counter()
    p = subprocess.run([cli, *args], capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - t
    try:
        report = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"{case['name']}: no JSON report (exit {p.returncode}): "
                         f"{p.stderr[-800:]}")
    return wall, report


def without_timing(report):
    """The report as canonical JSON without what may differ: its timing and
    the echoed parallel_experiments setting."""
    r = dict(report)
    r.pop("timing", None)
    r["config"] = {k: v for k, v in r.get("config", {}).items() if k != "parallelExperiments"}
    return json.dumps(r, sort_keys=True)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("build")
    ap.add_argument("zoo")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=BENCHMARKS_MD)
    args = ap.parse_args()
    cli = cli_path(args.build)
    zoo = Zoo(args.zoo)
    names = QUICK_CASES if args.quick else CASES
    reps = 1 if args.quick else args.reps
    rows, failures = [], 0
    for name in names:
        case = zoo[name]
        seq, par = [], []
        for _ in range(reps):
            seq.append(check(cli, case, 1))
            par.append(check(cli, case, 0))
        a, b = seq[0][1], par[0][1]
        same = without_timing(a) == without_timing(b)
        if not same:
            failures += 1
            print(f"FAIL {name}: the report with parallel experiments differs from the "
                  "sequential one", file=sys.stderr)
        experiments = len(a.get("experiments", []))
        if experiments < 2:
            failures += 1
            print(f"FAIL {name}: expected a diagnosis with >= 2 experiments, got "
                  f"{experiments}", file=sys.stderr)
        tb = b.get("timing", {})
        rows.append(dict(
            name=name, verdict=a.get("verdict"), experiments=experiments,
            parallelism=tb.get("diagnosisParallelism", 0),
            wall_seq=med([w for w, _ in seq]), wall_par=med([w for w, _ in par]),
            diag_seq=med([r["timing"].get("diagnosisSeconds", 0) for _, r in seq]),
            diag_par=med([r["timing"].get("diagnosisSeconds", 0) for _, r in par]),
            serial_par=med([r["timing"].get("diagnosisSerialSeconds", 0) for _, r in par]),
            same=same))
        r = rows[-1]
        print(f"{name}: {r['verdict']}, {experiments} experiments, {r['parallelism']} at once: "
              f"check {r['wall_seq']:.2f}s -> {r['wall_par']:.2f}s, diagnosis "
              f"{r['diag_seq']:.2f}s -> {r['diag_par']:.2f}s, same report: {same}",
              file=sys.stderr)
    if args.quick:
        print(f"{len(rows) - failures} passed, {failures} failed")
        return 1 if failures else 0

    cpus = len(os.sched_getaffinity(0))
    L = ["<!-- diagnosis:begin -->",
         "## Time to verdict of a failing check: experiments one after another vs at once "
         "(issue 13)",
         "",
         f"`tools/bench/bench_diagnosis.py`, {datetime.date.today()}, {cpus} CPUs, "
         f"`--threads 1`, median of {reps} alternating runs of the real CLI per setting. "
         "*before*: `--parallel-experiments 1` (every check before this change); *after*: the "
         "default `0` (one experiment per `--threads` CPUs). \"runs' own time\" is the "
         "experiments' wall times summed in the parallel run (`timing.diagnosisSerialSeconds`): "
         "above the sequential diagnosis when runs slow each other down. Both settings gave the "
         "same report apart from timing in every case (checked by the script).",
         "",
         "| case | verdict | experiments | at once | check before (s) | check after (s) | "
         "after/before | diagnosis before (s) | diagnosis after (s) | runs' own time (s) |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["wall_par"] / r["wall_seq"] if r["wall_seq"] else float("nan")
        L.append(f"| {r['name']} | {r['verdict']} | {r['experiments']} | {r['parallelism']} | "
                 f"{r['wall_seq']:.2f} | {r['wall_par']:.2f} | {ratio:.2f}x | "
                 f"{r['diag_seq']:.2f} | {r['diag_par']:.2f} | {r['serial_par']:.2f} |")
    L.append("<!-- diagnosis:end -->")
    block = "\n".join(L)
    text = open(args.out).read() if os.path.exists(args.out) else ""
    begin, end = "<!-- diagnosis:begin -->", "<!-- diagnosis:end -->"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(block)
    print(f"{len(rows) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
