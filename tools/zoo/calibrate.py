#!/usr/bin/env python3
"""Prints, for every zoo case, the measurements the engine's thresholds are
compared with, so thresholds can be checked against real architectures.

Columns: init/expect (init CE loss / ln C), rms1/rmsL (first/last gradient
RMS at step 0), gnorm_grow (peak/initial global gradient norm), dead (largest
dead-unit share), steps; for a curve that did not converge: gcoll (final /
initial global gradient norm), g/p (final gradient norm / parameter norm),
tail (relative movement over the last 20% of steps, plateaus only), mem
(share of samples memorised, -1 unmeasurable), werr (regression: the worst
sample's RMS error / the targets' spread); for UNSTABLE_CONVERGENCE the
peak/initial |loss| (peak); for exploding forwards out/scale (output RMS
at init over max(1, input RMS, regression-target RMS)) and g0/p (global
gradient norm at step 0 over the parameter norm); and each experiment's
outcome, improvement factor and steps.

Usage: calibrate.py PREFLIGHT_BINARY ZOO_DIR
"""
import json
import math
import subprocess
import sys
import warnings

import torch

warnings.filterwarnings("ignore")  # TorchScript deprecation notices.

CURVE_CODES = {"LOSS_PLATEAU", "LOSS_NOISY", "LOSS_OSCILLATING", "LOSS_RISING", "LOSS_DIVERGED",
               "LOSS_FLAT", "CONVERGED_TO_FLOOR", "UNSTABLE_CONVERGENCE"}


def evidence(finding):
    out = {}
    for e in finding.get("evidence", []):
        out[e["name"]] = e.get("number", e.get("text"))
    return out


def rms(t):
    return float(t.detach().double().pow(2).mean().sqrt())


def scales(case, report):
    """(out/scale, g0/p) as activation_policy.h defines them, or (None, None)."""
    try:  # Broken artifacts and batches (the ERROR cases) have no scale.
        m = torch.jit.load(case["model"])
        b = torch.load(case["batch"], weights_only=False)
        inputs, targets = (b["inputs"], b["targets"]) if isinstance(b, dict) else b
        inputs = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    except Exception:
        return None, None
    floats = [t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()]
    n = sum(t.numel() for t in floats)
    in_rms = math.sqrt(sum(float(t.double().pow(2).sum()) for t in floats) / n) if n else 0
    loss = report["config"].get("loss", "cross_entropy")
    # Only regression targets (and a model's own loss) give the output a scale.
    regression = loss not in ("cross_entropy", "nll", "bce_with_logits", "bce")
    tg_rms = rms(targets) if regression and isinstance(targets, torch.Tensor) and \
        targets.is_floating_point() else 0
    ratio = None
    try:
        m.train(report["config"].get("trainMode", True))
        torch.manual_seed(int(report["config"].get("seed", 0)))
        with torch.no_grad():
            out = m(*inputs)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and \
                bool(torch.isfinite(out).all()):
            ratio = rms(out) / max(1.0, in_rms, tg_rms)
    except Exception:
        pass
    pnorm = math.sqrt(sum(float(p.detach().double().pow(2).sum())
                          for p in m.parameters() if p.requires_grad))
    g = [float(p.get("gradNormFirst", 0)) for p in report.get("parameters", [])]
    g0 = math.sqrt(sum(x * x for x in g if x > 0)) if g else None
    return ratio, (g0 / pnorm if g0 is not None and pnorm > 0 else None)


def fmt(v):
    return "-" if v is None else f"{float(v):.3g}"


def main():
    binary, zoo = sys.argv[1], sys.argv[2]
    cases = json.load(open(f"{zoo}/manifest.json"))
    print(f"{'case':<28} {'verdict':<7} {'init/expect':>11} {'rms1/rmsL':>10} "
          f"{'gnorm_grow':>10} {'dead':>5} {'steps':>5} {'gcoll':>8} {'g/p':>8} {'tail':>7} "
          f"{'mem':>5} {'werr':>6} {'peak':>8} {'out/scale':>9} {'g0/p':>8}  experiments")
    for c in cases:
        if c.get("service_only"):
            continue
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
        ev = {}
        for f in r.get("findings", []):
            if f["code"] in CURVE_CODES:
                ev = evidence(f)
        tail = ev.get("tail_move")
        out_ratio, g0p = scales(c, r)
        exps = " ".join(
            f"{e['name']}:{e.get('outcome', '?')[:4]}x{e.get('improvementFactor', 0):.3g}"
            f"@{e.get('stepsRun', 0)}{'(early)' if e.get('stoppedEarly') else ''}"
            for e in r.get("experiments", []))
        print(f"{c['name']:<28} {r['verdict']:<7} {ratio:>11} "
              f"{gf.get('firstLastGradRmsRatio', 0):>10.3g} {gf.get('gradNormGrowth', 0):>10.3g} "
              f"{gf.get('maxDeadUnitShare', 0):>5.2f} {r.get('stepsRun', 0):>5} "
              f"{fmt(ev.get('grad_norm_collapse')):>8} {fmt(ev.get('grad_to_param_norm')):>8} "
              f"{fmt(tail):>7} {fmt(ev.get('memorised_share')):>5} "
              f"{fmt(ev.get('worst_sample_error_to_spread')):>6} {fmt(ev.get('peak_ratio')):>8} "
              f"{fmt(out_ratio):>9} {fmt(g0p):>8}  "
              f"{exps}")


if __name__ == "__main__":
    main()
