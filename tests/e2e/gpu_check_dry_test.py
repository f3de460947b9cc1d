#!/usr/bin/env python3
"""End-to-end: tools/gpu-check.sh in dry mode (issue 17), as CI runs it on a
machine without a GPU.

Runs the real script against a built tree (setup and build skipped: ctest runs
after the build) and asserts that
  * it exits 0, and the results say it is a dry run with no GPU measurement;
  * every CUDA row is SKIPPED with a reason, none PASS or FAIL, and the rows
    cover every local zoo case, the service, timing, determinism, sandbox and
    the GPU memory hog (so nothing a GPU run checks can be silently dropped);
  * the CPU side really ran: its rows all PASS, including a job through a
    real preflight-server with its sandbox line;
  * with no /dev/nvidiactl the script goes dry by itself, naming that reason;
  * an unknown argument is a usage error (exit 2).

Usage: gpu_check_dry_test.py SOURCE_DIR BUILD_DIR
"""
import importlib.util
import json
import os
import subprocess
import sys

SRC, BUILD = sys.argv[1], sys.argv[2]
SCRIPT = os.path.join(SRC, "tools/gpu-check.sh")
passed, failures = 0, []


def expect(name, cond, detail=""):
    global passed
    print(f"{'ok  ' if cond else 'FAIL'} {name}")
    if cond:
        passed += 1
    else:
        failures.append(f"{name}: {str(detail)[-1500:]}")
    return cond


def zoo_cases():
    spec = importlib.util.spec_from_file_location("make_zoo", f"{SRC}/tools/zoo/make_zoo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # Registers the cases; builds nothing.
    return mod.CASES


def main():
    out = os.path.join(BUILD, "gpu-check-test", "BENCHMARKS-gpu.dry.md")
    if os.path.exists(out):
        os.remove(out)
    auto = not os.path.exists("/dev/nvidiactl")  # CI: no GPU, so no --dry needed.
    cmd = [SCRIPT, "--no-setup", "--no-build", "--build-dir", BUILD, "--out", out,
           "--budget", "240"] + ([] if auto else ["--dry"])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=270)
    expect("dry run exits 0", p.returncode == 0, p.stderr)
    json_path = out.rsplit(".", 1)[0] + ".json"
    if not expect("results written (markdown + JSON)",
                  os.path.exists(out) and os.path.exists(json_path), p.stderr):
        return
    with open(json_path) as f:
        res = json.load(f)
    with open(out) as f:
        text = f.read()

    expect("mode is dry, no GPU result measured",
           res["mode"] == "dry" and res["gpu_measured"] is False, res["mode"])
    expect("markdown says it is a dry run with no GPU result",
           "DRY RUN: no GPU result was measured" in text, text[:400])
    if auto:
        expect("without /dev/nvidiactl it goes dry by itself, naming why",
               "/dev/nvidiactl absent" in res["dry_reason"]
               and "--dry" not in res["dry_reason"], res["dry_reason"])

    rows = res["cuda_cases"]
    not_skipped = [r["id"] for r in rows if r["status"] != "SKIPPED"]
    expect("every CUDA row is SKIPPED", not not_skipped, not_skipped)
    no_reason = [r["id"] for r in rows if not r["reason"].strip()]
    expect("every skipped CUDA row has a reason", not no_reason, no_reason)
    ids = {r["id"] for r in rows}
    local = [c["name"] for c in zoo_cases() if not c["service_only"]]
    want = ({f"cuda-local/{n}" for n in local} | {f"cuda-server/{n}" for n in local}
            | {f"cuda-timing/{n}" for n in ("mlp", "resnet18", "transformer")}
            | {f"cuda-determinism/cross-process/{n}" for n in ("mlp", "resnet18", "transformer")}
            | {"cuda-determinism/replay", "cuda-sandbox/line", "cuda-sandbox/zygote-cuda-free",
               "cuda-hostile/gpu_memory_hog", "cuda-hostile/server-survives",
               "cuda-local/gpu_upsample_atomics", "cuda-server/gpu_upsample_atomics"})
    expect(f"CUDA rows cover every zoo case and check ({len(want)} expected)",
           want <= ids, sorted(want - ids))
    expect("no CUDA id listed twice", len(ids) == len(rows))
    table = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith("cuda-"):
            table[cells[0]] = cells
    bad_md = [i for i in ids if i not in table or table[i][2] != "SKIPPED" or not table[i][3]]
    expect("markdown shows every CUDA row SKIPPED with its reason", not bad_md, bad_md[:5])
    expect("markdown has no CUDA row marked PASS",
           not [i for i, c in table.items() if "PASS" in c[2]])

    cpu = res["cpu_cases"]
    cpu_bad = [f"{r['id']}: {r['detail']}" for r in cpu if r["status"] != "PASS"]
    expect("the CPU side ran and every CPU row PASSes", cpu and not cpu_bad, cpu_bad)
    cpu_ids = {r["id"] for r in cpu}
    expect("CPU rows include local cases, timing and a job through the server",
           {"cpu-local/mlp", "cpu-local/nondeterministic", "cpu-local/gpu_memory_hog",
            "cpu-timing/mlp", "cpu-server/mlp"} <= cpu_ids, sorted(cpu_ids))
    expect("the CPU server job reports its sandbox",
           "rlimits" in res["sandbox"].get("cpu", ""), res["sandbox"])

    u = subprocess.run([SCRIPT, "--no-such-flag"], capture_output=True, text=True, timeout=30)
    expect("an unknown argument is a usage error (exit 2)", u.returncode == 2, u.stderr)


if __name__ == "__main__":
    main()
    print(f"{passed} passed, {len(failures)} failed")
    for f in failures:
        print(" -", f)
    sys.exit(1 if failures else 0)
