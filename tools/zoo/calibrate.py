#!/usr/bin/env python3
"""Prints, for every zoo case, the measurements the engine's thresholds are
compared with, so thresholds can be checked against real architectures.

Usage: calibrate.py PREFLIGHT_BINARY ZOO_DIR
"""
import json
import math
import subprocess
import sys


def main():
    binary, zoo = sys.argv[1], sys.argv[2]
    cases = json.load(open(f"{zoo}/manifest.json"))
    print(f"{'case':<26} {'verdict':<7} {'init/expect':>11} {'rms1/rmsL':>10} "
          f"{'gnorm_grow':>10} {'dead':>5} {'steps':>5}")
    for c in cases:
        p = subprocess.run([binary, "check", "--model", c["model"], "--batch", c["batch"],
                            "--json", *c["flags"]], capture_output=True, text=True)
        try:
            r = json.loads(p.stdout)
        except json.JSONDecodeError:
            continue
        gf = r.get("gradientFlow", {})
        curve = r.get("lossCurve", [])
        out = r.get("model", {}).get("outputShape", [])
        ratio = "-"
        if curve and r["config"]["loss"] == "cross_entropy" and len(out) >= 2:
            ratio = f"{float(curve[0]) / math.log(int(out[1])):.2f}"
        print(f"{c['name']:<26} {r['verdict']:<7} {ratio:>11} "
              f"{gf.get('firstLastGradRmsRatio', 0):>10.3g} {gf.get('gradNormGrowth', 0):>10.3g} "
              f"{gf.get('maxDeadUnitShare', 0):>5.2f} {r.get('stepsRun', 0):>5}")


if __name__ == "__main__":
    main()
