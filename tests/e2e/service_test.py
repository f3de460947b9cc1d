#!/usr/bin/env python3
"""End-to-end: the real preflight-server (with its sandboxed zygote) driven by
the real `preflight` CLI on loopback.

  1. the whole zoo, hostile models included, through the server: the same
     verdicts and codes as locally, and the server stays up throughout;
  2. nothing is written outside the store (the hostile write target is absent);
  3. a repeated request is a cache hit; `preflight verdict` serves it by job
     id and by digest with the gate exit codes (0/1/4);
  4. large artifacts go through Upload;
  5. SIGTERM drains and exits 0; a restart on the same store keeps every
     verdict; kill -9 during a burst of checks loses no committed verdict.

Usage: service_test.py BUILD_DIR ZOO_DIR
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile

from e2e_common import (Results, Server, Zoo, check_case, children, cli_path, run_cli,
                        spawn_check, wait_for)

BUILD, ZOO = sys.argv[1], Zoo(sys.argv[2])
CLI = cli_path(BUILD)
SERVER = os.path.join(BUILD, "service/preflight-server")
HERE = os.path.dirname(os.path.abspath(__file__))
R = Results()
expect = R.expect


def cli(*args):
    return run_cli(CLI, *args)


def check(addr, c, *extra):
    return check_case(CLI, c, *extra, server=addr)


def main():
    h = run_cli(SERVER, "--help", timeout=60)
    expect("preflight-server --help exits 0 and lists the dashed flags",
           h.returncode == 0 and "--job-slots" in h.stdout and "--metrics-address" in h.stdout, h)
    h = run_cli(SERVER, "--job-slots=0x", timeout=60)
    expect("a bad flag value is a start-up error naming the flag",
           h.returncode != 0 and "job_slots" in h.stderr, h)
    store = tempfile.mkdtemp(prefix="preflight-store-")
    server = Server(BUILD, store, metrics=True)
    addr = server.addr
    try:
        # 1-2. The zoo through the server.
        hostile_target = "/tmp/preflight-hostile-write"
        if os.path.exists(hostile_target):
            os.unlink(hostile_target)
        p = subprocess.run([sys.executable, os.path.join(HERE, "zoo_test.py"), CLI, ZOO.path,
                            "--server", addr, "--determinism-cases"],
                           capture_output=True, text=True, timeout=1800)
        print(p.stdout)
        expect("zoo through the server: same verdicts and codes", p.returncode == 0, p.stdout[-2000:])
        expect("server survived every hostile model", server.alive())
        expect("hostile write left no file", not os.path.exists(hostile_target))

        # 3. Cache and the verdict gate.
        mlp, bad = ZOO["mlp"], ZOO["loss_flat"]
        p1, r1 = check(addr, mlp, "--job-id", "train/mlp-1")
        p2, r2 = check(addr, mlp, "--job-id", "train/mlp-2")
        expect("first check PASS", r1 and r1["report"]["verdict"] == "PASS", p1.stderr)
        expect("repeat is a cache hit with the same digest",
               r2 and r2["cached"] and r2["requestDigest"] == r1["requestDigest"], r2)
        _, rb = check(addr, bad, "--job-id", "train/flat-1")
        v = cli("verdict", "--server", addr, "--job-id", "train/mlp-2")
        expect("verdict by job id: PASS exits 0", v.returncode == 0 and "PASS" in v.stdout, v)
        v = cli("verdict", "--server", addr, "--job-id", "train/mlp-1")
        expect("two job ids bound to one digest: the first still reads back",
               v.returncode == 0 and r1 and r1["requestDigest"] in v.stdout, v)
        # A job id rebound from a FAIL to a fixed model: the gate reads the
        # latest binding, and the verdict shows what it was rebound from.
        _, rf = check(addr, bad, "--job-id", "train/rebind")
        _, rp = check(addr, mlp, "--job-id", "train/rebind")
        v = cli("verdict", "--server", addr, "--job-id", "train/rebind")
        expect("rebound job id reads the latest binding (PASS, exit 0) and shows the FAIL it "
               "was rebound from",
               v.returncode == 0 and rf and "rebound" in v.stdout and
               f"FAIL  digest {rf['requestDigest']}" in v.stdout, v)
        v = cli("verdict", "--server", addr, "--job-id", "train/rebind", "--json")
        b = json.loads(v.stdout).get("bindings", []) if v.returncode == 0 else []
        expect("the binding history is in the response, oldest first",
               rf and rp and [x.get("requestDigest") for x in b] ==
               [rf["requestDigest"], rp["requestDigest"]] and
               [x.get("verdict") for x in b] == ["FAIL", "PASS"], b)
        v = cli("verdict", "--server", addr, "--job-id", "train/flat-1")
        expect("verdict by job id: FAIL exits 1 with findings",
               v.returncode == 1 and "LOSS_FLAT" in v.stdout, v)
        # Verdicts bound to the artifact: the report names the model and batch
        # digests, and `preflight attest` holds a job's files to them.
        sha = lambda path: hashlib.sha256(open(path, "rb").read()).hexdigest()  # noqa: E731
        expect("the report carries the model's and the batch's sha256",
               r1 and r1["report"].get("modelSha256") == sha(mlp["model"]) and
               r1["report"].get("batchSha256") == sha(mlp["batch"]), r1 and r1["report"].keys())
        for thin in (False, True):
            a = run_cli(cli_path(BUILD, thin=thin), "attest", "--server", addr, "--job-id",
                        "train/mlp-1", "--model", mlp["model"], "--batch", mlp["batch"])
            expect(f"attest ({'thin' if thin else 'full'} CLI): the checked model exits 0",
                   a.returncode == 0 and "attested" in a.stdout, a)
        a = cli("attest", "--server", addr, "--job-id", "train/mlp-1", "--model", bad["model"])
        expect("attest: another model file is refused naming both digests (exit 1)",
               a.returncode == 1 and sha(bad["model"]) in a.stderr and
               sha(mlp["model"]) in a.stderr, a)
        a = cli("attest", "--server", addr, "--job-id", "train/flat-1", "--model", bad["model"])
        expect("attest: the checked model of a FAIL verdict is refused (exit 1)",
               a.returncode == 1 and "verdict is FAIL" in a.stderr, a)
        a = cli("attest", "--server", addr, "--job-id", "never-submitted", "--model", mlp["model"])
        expect("attest: no verdict exits 4", a.returncode == 4, a)
        v = cli("verdict", "--server", addr, "--digest", r1["requestDigest"], "--json")
        expect("verdict by digest", v.returncode == 0 and json.loads(v.stdout)["report"]["verdict"] == "PASS", v)
        v = cli("verdict", "--server", addr, "--job-id", "never-submitted")
        expect("unknown job id exits 4", v.returncode == 4 and "NOT_FOUND" in v.stderr, v)
        v = cli("verdict", "--server", addr, "--digest", "0" * 64)
        expect("unknown digest exits 4", v.returncode == 4, v)
        v = cli("verdict", "--server", addr, "--digest", "xyz")
        expect("malformed digest is INVALID_ARGUMENT naming the field, exit 2",
               v.returncode == 2 and "request_digest" in v.stderr, v)

        # 4. Upload path: a model over the 4 MiB inline threshold.
        with tempfile.TemporaryDirectory() as d:
            import torch  # noqa: PLC0415  (only this step needs it)
            big = torch.nn.Sequential(torch.nn.Linear(784, 2048), torch.nn.ReLU(),
                                      torch.nn.Linear(2048, 10))
            torch.manual_seed(0)
            torch.jit.script(big).save(f"{d}/big.pt")
            size = os.path.getsize(f"{d}/big.pt")
            p, r = check(addr, {"model": f"{d}/big.pt", "batch": mlp["batch"], "flags": []})
            # Over the threshold, or this would not test Upload at all.
            expect(f"{size >> 20} MiB model via Upload checks PASS",
                   size > 4 << 20 and r is not None and r["report"]["verdict"] == "PASS",
                   (size, p.stderr))

        # 4b. A dead zygote: the in-flight check gets an ERROR report, not a
        # hang, and the next check runs on a restarted zygote.
        zygote = [int(pid) for pid in subprocess.run(
            ["pgrep", "-P", str(server.pid), "-f", "preflight-worker"],
            capture_output=True, text=True).stdout.split()]
        expect("zygote is a child of the server", len(zygote) == 1, zygote)
        loop = ZOO["hostile_infinite_loop"]
        hung = spawn_check(CLI, loop["model"], loop["batch"], "--timeout", "60", "--seed", "99",
                           server=addr)
        # Kill it while the check runs: once the zygote has forked its job.
        expect("the hung check's job started",
               bool(zygote) and wait_for(lambda: children(zygote[0]), 60), zygote)
        if zygote:
            os.kill(zygote[0], signal.SIGKILL)
        out, _ = hung.communicate(timeout=60)
        try:
            codes = [f["code"] for f in json.loads(out)["report"]["findings"]]
        except (json.JSONDecodeError, KeyError):
            codes = []
        expect("in-flight check on a killed zygote is ERROR/WORKER_CRASHED",
               hung.returncode == 3 and "WORKER_CRASHED" in codes, out[-500:])
        p, r = check(addr, ZOO["cnn"])
        expect("next check runs on the restarted zygote",
               r is not None and r["report"]["verdict"] == "PASS", p.stderr)

        # 5a. SIGTERM: drain, exit 0; restart keeps verdicts.
        expect("SIGTERM exits 0", server.stop() == 0)
        server = server.restart()
        addr = server.addr
        v = cli("verdict", "--server", addr, "--job-id", "train/flat-1")
        expect("restart keeps verdicts", v.returncode == 1 and "LOSS_FLAT" in v.stdout, v)
        v = cli("verdict", "--server", addr, "--job-id", "train/rebind")
        expect("restart keeps the binding history",
               v.returncode == 0 and "rebound" in v.stdout and "FAIL" in v.stdout, v)

        # 5b. kill -9 during a burst: every verdict a client saw stays stored.
        procs = []
        for i in range(12):
            c = ZOO[["mlp", "cnn", "lstm", "regression"][i % 4]]
            procs.append((f"burst-{i}", spawn_check(CLI, c["model"], c["batch"], *c["flags"],
                                                    "--job-id", f"burst-{i}", "--seed", str(i),
                                                    server=addr)))
        # Kill once some checks were answered and others are still running.
        wait_for(lambda: sum(p.poll() is not None for _, p in procs) >= 4, 120)
        in_flight = sum(p.poll() is None for _, p in procs)
        server.kill()
        answered = [job for job, p in procs if p.wait(timeout=120) == 0]
        expect(f"kill -9 hit with {in_flight} checks in flight and {len(answered)} answered",
               in_flight > 0 and len(answered) >= 4, (in_flight, answered))
        server = server.restart()
        addr = server.addr
        lost = [j for j in answered
                if cli("verdict", "--server", addr, "--job-id", j).returncode != 0]
        expect(f"kill -9: {len(answered)} answered checks all still stored", not lost, lost)
        p, r = check(addr, mlp)
        expect("store usable after kill -9", r is not None and r["report"]["verdict"] == "PASS", p)
    finally:
        server.stop()

    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
