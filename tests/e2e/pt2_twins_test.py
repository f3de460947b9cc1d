#!/usr/bin/env python3
"""End-to-end: the zoo's `.pt2` twins get what their TorchScript originals get.

tools/zoo/make_zoo.py writes, for every case torch.export can capture, a twin
OUT/<case>.model.pt2 (the same module and weights through torch.export.export
+ torch.export.save); the manifest says which cases have one and why the rest
do not. Here, through the real `preflight check` CLI:

- locally, every twin against its TorchScript original, run side by side
  with the case's flags: the same verdict (the manifest's), the same set of
  finding codes, the same exit code, and the report names the format that
  ran (`model.format`: EXPORTED_PROGRAM for the twin);
- a few twins through a real server (sandboxed zygote), which must agree
  with their originals' local runs, and every hostile (service-only) twin
  against its original through the same server;
- what the fixture wrote: twins hold the original's weights, every case
  without a twin says why, and exporting prints no warning.

Usage: pt2_twins_test.py BUILD_DIR ZOO_DIR [--only NAME ...] [--jobs N]
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import warnings

from e2e_common import ROOT, Results, Server, Zoo, check_case, cli_check, cli_path

EXIT_FOR = {"PASS": 0, "WARN": 0, "FAIL": 1, "ERROR": 3}
# Through the server: the reference MLP, BatchNorm (buffers mutated in place
# by the program), dropout, the custom-loss contract with a sign error, and a
# batch fault.
SERVER_CASES = ["mlp", "resnet", "transformer", "loss_diverged", "class_out_of_range"]
# Twins run twice: the same report bytes apart from timing (as zoo_test.py
# asks of TorchScript reports).
REPRODUCIBLE_CASES = ["mlp", "transformer"]
# Twins whose weights are compared with the original's, tensor by tensor.
WEIGHT_CASES = ["mlp", "resnet", "lstm", "own_loss", "param_nan_at_load"]


def outcome(report):
    """(verdict, sorted finding codes, model format) of a report (or Nones)."""
    if report is None:
        return None, None, None
    return (report.get("verdict"), sorted({f["code"] for f in report.get("findings", [])}),
            report.get("model", {}).get("format"))


def run_pair(cli, case):
    """The original and its twin, with the case's flags: two (process, report)."""
    original = check_case(cli, case)
    twin = cli_check(cli, case["pt2"], case["batch"], *case["flags"])
    return original, twin


def compare(R, case, original, twin, where="local"):
    (po, ro), (pt, rt) = original, twin
    vo, co, fo = outcome(ro)
    vt, ct, ft = outcome(rt)
    name = case["name"]
    R.expect(f"{name}: original gives the manifest's verdict {case['verdict']} ({vo})",
             vo == case["verdict"], po.stderr[-400:])
    R.expect(f"{name} [{where}]: twin verdict {vt} == original {vo}", vt == vo and vt is not None,
             (pt.returncode, pt.stderr[-600:],
              [(f["code"], f["message"][:300]) for f in (rt or {}).get("findings", [])]))
    R.expect(f"{name} [{where}]: twin codes == original codes", ct == co,
             f"twin {ct}, original {co}")
    R.expect(f"{name} [{where}]: twin exit {pt.returncode} == {EXIT_FOR[case['verdict']]}",
             pt.returncode == EXIT_FOR[case["verdict"]], pt.stderr[-400:])
    if fo == "TORCHSCRIPT":  # The original loaded; so must the twin, as a program.
        R.expect(f"{name} [{where}]: twin ran as EXPORTED_PROGRAM ({ft})",
                 ft == "EXPORTED_PROGRAM")


def strip_timing(report):
    return json.dumps({k: v for k, v in report.items() if k != "timing"}, sort_keys=True)


def check_manifest(R, zoo):
    for case in zoo.cases:
        if case["pt2"]:
            R.expect(f"{case['name']}: twin file exists", os.path.isfile(case["pt2"]))
        else:
            R.expect(f"{case['name']}: no twin, and the manifest says why",
                     bool(case.get("pt2_reason")), case)
    # The exporter must be able to capture the healthy architectures.
    for name in ("mlp", "cnn", "resnet", "lstm", "transformer", "own_loss", "multi_input"):
        R.expect(f"{name} has a twin", bool(zoo[name]["pt2"]), zoo[name].get("pt2_reason"))


def check_weights(R, zoo):
    """Each twin holds its original's parameters and buffers, bit for bit (the
    custom-loss program nests the model as `model.`)."""
    import torch  # noqa: PLC0415  (slow import, only needed here)

    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`torch\.jit\.\w+` is deprecated")
    for name in WEIGHT_CASES:
        case = zoo[name]
        ts = torch.jit.load(case["model"])
        want = dict(ts.named_parameters()) | dict(ts.named_buffers())
        program = torch.export.load(case["pt2"])
        got = {k.removeprefix("model."): v for k, v in program.state_dict.items()}
        same = set(got) == set(want) and all(
            got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
            and got[k].detach().numpy().tobytes() == want[k].detach().numpy().tobytes()
            for k in want)  # Bytes: NaN == NaN (the planted-NaN case).
        R.expect(f"{name}: twin weights == original's ({len(want)} tensors)", same,
                 f"twin {sorted(got)}, original {sorted(want)}")


def check_export_is_quiet(R):
    """make_zoo.py on a few cases, into a scratch directory: stderr holds its
    one summary line and nothing else (no FutureWarning, no UserWarning, no
    logged traceback from a failed capture)."""
    with tempfile.TemporaryDirectory(prefix="preflight-zoo-quiet-") as out:
        p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "zoo", "make_zoo.py"),
                            out, "--only", "mlp", "lstm", "own_loss", "forward_error"],
                           capture_output=True, text=True, timeout=600)
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        R.expect("make_zoo exports without a warning or log line",
                 p.returncode == 0 and len(lines) == 1 and lines[0].startswith("wrote 4 cases")
                 and "(3 with a .pt2 twin)" in lines[0], p.stderr[-1500:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("zoo")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    zoo = Zoo(args.zoo)
    cli = cli_path(args.build)
    R = Results()

    check_manifest(R, zoo)
    check_weights(R, zoo)
    check_export_is_quiet(R)

    cases = [c for c in zoo.select(args.only) if c["pt2"]]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        local = dict(zip([c["name"] for c in cases],
                         pool.map(lambda c: run_pair(cli, c), cases)))
    for case in cases:
        compare(R, case, *local[case["name"]])
    for case in (c for c in cases if c["name"] in REPRODUCIBLE_CASES):
        again = cli_check(cli, case["pt2"], case["batch"], *case["flags"])[1]
        first = local[case["name"]][1][1]
        R.expect(f"{case['name']}: twin report reproducible (timing aside)",
                 first is not None and again is not None
                 and strip_timing(first) == strip_timing(again))

    # Through the server: the chosen few (their originals' local runs above
    # are the reference) and every hostile twin, which only the sandbox
    # contains, against its original through the same server.
    remote = [c for c in cases if c["name"] in SERVER_CASES]
    hostile = [c for c in zoo.select(args.only, service=True) if c["service_only"] and c["pt2"]]
    if remote or hostile:
        with tempfile.TemporaryDirectory(prefix="preflight-pt2-twins-") as store:
            with Server(args.build, store) as server:
                def through(model, case):
                    p, response = cli_check(cli, model, case["batch"], *case["flags"],
                                            server=server.addr)
                    return p, (response or {}).get("report")

                for case in remote:
                    compare(R, case, local[case["name"]][0], through(case["pt2"], case),
                            where="server")
                for case in hostile:
                    compare(R, case, through(case["model"], case), through(case["pt2"], case),
                            where="server")
                R.expect("server still up after the twins", server.alive())
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
