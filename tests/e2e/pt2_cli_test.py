#!/usr/bin/env python3
"""End-to-end: .pt2 programs through the real CLI, locally.

A healthy exported MLP PASSes, an MLP that ignores its input FAILs, the
own-loss sign error FAILs with the negated-loss experiment confirming it, and
a refused file operator is ERROR/ARTIFACT_UNSUPPORTED with exit 3. The
programs come from the pt2_fixtures fixture (made by the pinned torch).

Usage: pt2_cli_test.py PREFLIGHT_BIN FIXTURE_DIR
"""
import json
import os
import sys

from e2e_common import Results, run_cli

BIN, FIXTURES = sys.argv[1], sys.argv[2]


def check(model, batch):
    p = run_cli(BIN, "check", "--model", os.path.join(FIXTURES, model), "--batch",
                os.path.join(FIXTURES, batch), "--json", timeout=300)
    try:
        report = json.loads(p.stdout)
    except ValueError:
        report = {}
    return p, report


def codes(report):
    return [f.get("code") for f in report.get("findings", [])]


def main():
    results = Results()
    expect = results.expect

    p, r = check("mlp.pt2", "mlp.batch.pt")
    expect("healthy .pt2 MLP is PASS, exit 0, format EXPORTED_PROGRAM",
           p.returncode == 0 and r.get("verdict") == "PASS"
           and r.get("model", {}).get("format") == "EXPORTED_PROGRAM", p)

    p, r = check("ignores_input.pt2", "mlp.batch.pt")
    expect(".pt2 MLP ignoring its input is FAIL/OUTPUT_IGNORES_INPUT, exit 1",
           p.returncode == 1 and r.get("verdict") == "FAIL"
           and "OUTPUT_IGNORES_INPUT" in codes(r), p)

    p, r = check("sign_error.pt2", "own_loss.batch.pt")
    confirmed = [e for e in r.get("experiments", [])
                 if e.get("name") == "negated_loss" and e.get("outcome") == "CONFIRMED"]
    expect(".pt2 own-loss sign error is FAIL with negated_loss CONFIRMED, exit 1",
           p.returncode == 1 and r.get("verdict") == "FAIL" and confirmed, p)

    p, r = check("file_op.pt2", "mlp.batch.pt")
    expect(".pt2 with aten::from_file is ERROR/ARTIFACT_UNSUPPORTED, exit 3",
           p.returncode == 3 and codes(r) == ["ARTIFACT_UNSUPPORTED"]
           and "aten::from_file" in p.stdout, p)
    return results.finish()


if __name__ == "__main__":
    sys.exit(main())
