#!/usr/bin/env python3
"""End-to-end: the Slurm submit gate (client/gates/slurm/job_submit.lua) in a
real one-node Slurm (munged, slurmctld, slurmd from Debian's slurm-wlm)
against a real preflight-server. Starts and stops everything it runs.

  - a job tagged with a PASS verdict is admitted and runs (sbatch and srun);
  - one tagged FAIL is refused, the findings visible on sbatch's stderr;
  - PREFLIGHT_DIGEST in a batch job's environment is honoured;
  - unknown id and server down follow the configured policies;
  - untagged jobs pass unless require_tag is set;
  - the TaskProlog (client/gates/slurm/preflight_prolog.sh) attests at each
    task's start: a PASS-tagged job whose PREFLIGHT_MODEL is the checked
    model runs; one whose model file differs by one byte is refused at start
    (sbatch and srun), both sha256 digests in the job's output; a tagged job
    without PREFLIGHT_MODEL runs unattested, and is refused with
    attest_require; no verdict and server down at start follow
    attest_on_missing and attest_on_unavailable.

Skipped, with a message, only where Slurm is not installed.
Usage: slurm_test.py BUILD_DIR ZOO_DIR
"""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from e2e_common import (ROOT, Results, Server, Zoo, cli_path, free_port, store_verdicts,
                        wait_for)

BUILD, ZOO = os.path.abspath(sys.argv[1]), Zoo(sys.argv[2])
R = Results()
expect = R.expect


def kill_stepds(marker):
    """Job step daemons outlive slurmd; end the ones of this test's cluster
    (recognised by its SLURM_CONF in their environment), and no others."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(b"slurmstepd"):
                    continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


def main():
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged", "mungekey")
               if not shutil.which(b)]
    if missing:
        print(f"skipped: Slurm is not installed ({', '.join(missing)} missing); "
              "tools/setup.sh installs slurm-wlm and munge")
        print("0 passed, 0 failed")
        return 0
    tmp = tempfile.mkdtemp(prefix="preflight-slurm-")
    procs = []
    server = Server(BUILD, f"{tmp}/store")
    addr = server.addr
    try:
        # Stored verdicts: train/pass (PASS) and train/fail (FAIL).
        digests = store_verdicts(cli_path(BUILD), addr, ZOO,
                                 {"train/pass": "mlp", "train/fail": "loss_flat"})

        conf_dir = f"{tmp}/etc"
        os.makedirs(conf_dir)
        for d in ("state", "spool", "log", "munge", "out"):
            os.makedirs(f"{tmp}/{d}")
        shutil.copy(f"{ROOT}/client/gates/slurm/job_submit.lua", conf_dir)
        shutil.copy(f"{ROOT}/client/gates/slurm/preflight_prolog.sh", conf_dir)

        def gate(**kw):
            settings = {"server": addr, "cli": cli_path(BUILD, thin=True), "timeout": "10", "on_missing": "reject",
                        "on_unavailable": "admit", "require_tag": "no"}
            settings.update(kw)
            with open(f"{conf_dir}/preflight_gate.conf", "w") as f:
                f.writelines(f"{k} = {v}\n" for k, v in settings.items())

        gate()
        sock = f"{tmp}/munge/munge.sock"
        key = f"{tmp}/munge/munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True,
                       capture_output=True)
        os.chmod(key, 0o600)
        ctld_port, slurmd_port = free_port(), free_port()
        with open(f"{conf_dir}/slurm.conf", "w") as f:
            f.write(f"""ClusterName=preflighttest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/log/slurmctld.log
SlurmdLogFile={tmp}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
JobSubmitPlugins=lua
TaskProlog={conf_dir}/preflight_prolog.sh
MpiDefault=none
ReturnToService=2
NodeName=localhost CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        env = dict(os.environ, SLURM_CONF=f"{conf_dir}/slurm.conf")
        procs.append(subprocess.Popen(
            ["munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}",
             f"--pid-file={tmp}/munge/munged.pid", f"--log-file={tmp}/log/munged.log",
             f"--seed-file={tmp}/munge/munge.seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: os.path.exists(sock), 10)
        procs.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["slurmd", "-D", "-N", "localhost"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ready = wait_for(lambda: subprocess.run(
            ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
            text=True).stdout.strip() in ("idle", "mix", "alloc"), 30)
        logs = ""
        if not ready:
            for name in ("slurmctld.log", "slurmd.log", "munged.log"):
                try:
                    with open(f"{tmp}/log/{name}") as f:
                        logs += f"--- {name}\n" + f.read()[-1500:]
                except OSError:
                    pass
        expect("one-node Slurm is up", ready, logs)
        if not ready:
            raise RuntimeError("slurm did not start")

        def admitted(tag):
            """How often the gate logged that it looked `tag` up and admitted
            the job (an untagged job is admitted too, without that line)."""
            with open(f"{tmp}/log/slurmctld.log") as f:
                return f.read().count(f"preflight: {tag} admitted")

        def sbatch(*args, **kw):
            return subprocess.run(["sbatch", f"--output={tmp}/out/%j.out", *args], env=env,
                                  capture_output=True, text=True, timeout=120, **kw)

        p = sbatch("--comment=preflight:train/pass", "--wrap", "echo ran-pass")
        expect("PASS-tagged batch job is admitted",
               p.returncode == 0 and "Submitted" in p.stdout and admitted("train/pass") == 1, p.stderr)
        job = p.stdout.split()[-1] if p.returncode == 0 else ""
        def ran(out=f"{tmp}/out/{job}.out"):
            if not (job and os.path.exists(out)):
                return False
            with open(out) as f:
                return "ran-pass" in f.read()

        expect("the admitted job runs", wait_for(ran, 30))

        p = sbatch("--comment=preflight:train/fail", "--wrap", "echo should-not-run")
        expect("FAIL-tagged batch job is refused with its findings on stderr",
               p.returncode != 0 and "LOSS_FLAT" in p.stderr and "FAIL" in p.stderr, p.stderr)

        p = subprocess.run(["srun", "--comment=preflight:train/pass", "echo", "srun-pass"],
                           env=env, capture_output=True, text=True, timeout=120)
        expect("srun with a PASS tag runs",
               p.returncode == 0 and "srun-pass" in p.stdout and admitted("train/pass") == 2,
               p.stderr)
        p = subprocess.run(["srun", "--comment=preflight:train/fail", "echo", "x"], env=env,
                           capture_output=True, text=True, timeout=120)
        expect("srun with a FAIL tag is refused with findings",
               p.returncode != 0 and "LOSS_FLAT" in p.stderr, p.stderr)

        # The TaskProlog: the job proves at start that it runs the checked model.
        mlp = ZOO["mlp"]
        def sha(path):
            with open(path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        tampered = f"{tmp}/tampered.model.pt"
        with open(mlp["model"], "rb") as f:
            data = bytearray(f.read())
        data[len(data) // 2] ^= 0x01
        with open(tampered, "wb") as f:
            f.write(data)
        checked_sha, tampered_sha = sha(mlp["model"]), sha(tampered)

        def finished(job_id):
            """Waits until the job has left the queue; its final JobState."""
            def state():
                out = subprocess.run(["scontrol", "show", "job", job_id], env=env,
                                     capture_output=True, text=True).stdout
                st = out.split("JobState=")[1].split()[0] if "JobState=" in out else ""
                return st if st in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") else None
            return wait_for(state, 60)

        def output(job_id):
            try:
                with open(f"{tmp}/out/{job_id}.out") as f:
                    return f.read()
            except OSError:
                return ""

        out = output(job)
        expect("a tagged job without PREFLIGHT_MODEL runs unattested, with a note",
               "ran-pass" in out and "names no PREFLIGHT_MODEL" in out, out)

        p = sbatch("--comment=preflight:train/pass",
                   f"--export=ALL,PREFLIGHT_MODEL={mlp['model']},PREFLIGHT_BATCH={mlp['batch']}",
                   "--wrap", "echo ran-attested")
        aj = p.stdout.split()[-1] if p.returncode == 0 else ""
        st, out = (finished(aj), output(aj)) if aj else (None, p.stderr)
        expect("the checked model (and batch) attested: the job runs",
               st == "COMPLETED" and "ran-attested" in out and "attested: job train/pass" in out
               and checked_sha in out, f"{st}: {out}")

        # A fleet list with a dead replica first (server = DEAD,LIVE): the
        # submit gate and the task prolog, both through preflight-thin, get
        # the verdict from the live one.
        gate(server=f"127.0.0.1:{free_port()},{addr}")
        p = sbatch("--comment=preflight:train/pass",
                   f"--export=ALL,PREFLIGHT_MODEL={mlp['model']}", "--wrap", "echo ran-listed")
        lj = p.stdout.split()[-1] if p.returncode == 0 else ""
        st, out = (finished(lj), output(lj)) if lj else (None, p.stderr)
        expect("server = DEAD,LIVE: admitted, attested at start, the job runs",
               st == "COMPLETED" and "ran-listed" in out and "attested: job train/pass" in out,
               f"{st}: {out}")
        gate()

        p = sbatch("--comment=preflight:train/pass", f"--export=ALL,PREFLIGHT_MODEL={tampered}",
                   "--wrap", "echo ran-tampered")
        tj = p.stdout.split()[-1] if p.returncode == 0 else ""
        st, out = (finished(tj), output(tj)) if tj else (None, p.stderr)
        expect("a changed model file is refused at start, both digests in the job's output",
               st == "FAILED" and "ran-tampered" not in out and checked_sha in out
               and tampered_sha in out and "refused" in out, f"{st}: {out}")

        p = subprocess.run(["srun", "--comment=preflight:train/pass",
                            f"--export=ALL,PREFLIGHT_MODEL={tampered}", "echo", "srun-tampered"],
                           env=env, capture_output=True, text=True, timeout=120)
        expect("srun with a changed model file is refused, both digests on its stdout",
               p.returncode != 0 and "srun-tampered" not in p.stdout and checked_sha in p.stdout
               and tampered_sha in p.stdout, p.stdout + p.stderr)

        p = subprocess.run(["srun", f"--export=ALL,PREFLIGHT_JOB_ID=train/pass,"
                            f"PREFLIGHT_MODEL={mlp['model']}", "echo", "srun-env-attested"],
                           env=env, capture_output=True, text=True, timeout=120)
        expect("PREFLIGHT_JOB_ID in the environment attests an untagged srun",
               p.returncode == 0 and "srun-env-attested" in p.stdout
               and "attested: job train/pass" in p.stdout, p.stdout + p.stderr)

        gate(attest_require="yes")
        p = sbatch("--comment=preflight:train/pass", "--wrap", "echo ran-unattested")
        uj = p.stdout.split()[-1] if p.returncode == 0 else ""
        st, out = (finished(uj), output(uj)) if uj else (None, p.stderr)
        expect("attest_require=yes: a tagged job without PREFLIGHT_MODEL is refused at start",
               st == "FAILED" and "ran-unattested" not in out
               and "requires attested jobs" in out, f"{st}: {out}")
        gate()

        p = sbatch(f"--export=ALL,PREFLIGHT_DIGEST={digests['train/fail']}", "--wrap", "true")
        expect("PREFLIGHT_DIGEST in the environment is gated (FAIL refused)",
               p.returncode != 0 and "LOSS_FLAT" in p.stderr, p.stderr)
        p = sbatch(f"--export=ALL,PREFLIGHT_DIGEST={digests['train/pass']}", "--wrap", "true")
        expect("PREFLIGHT_DIGEST of a PASS verdict is admitted",
               p.returncode == 0 and admitted(digests["train/pass"]) == 1, p.stderr)

        p = sbatch("--comment=preflight:train/unknown", "--wrap", "true")
        expect("unknown id, on_missing=reject: refused with a message",
               p.returncode != 0 and "no Preflight verdict" in p.stderr, p.stderr)
        gate(on_missing="admit")
        p = sbatch("--comment=preflight:train/unknown", "--wrap", "true")
        expect("unknown id, on_missing=admit: admitted", p.returncode == 0, p.stderr)
        p = sbatch("--comment=preflight:train/unknown", f"--export=ALL,PREFLIGHT_MODEL={tampered}",
                   "--wrap", "echo ran-unknown")
        kj = p.stdout.split()[-1] if p.returncode == 0 else ""
        st, out = (finished(kj), output(kj)) if kj else (None, p.stderr)
        expect("no verdict at start, attest_on_missing=reject (default): refused at start",
               st == "FAILED" and "ran-unknown" not in out and "no Preflight verdict stored" in out,
               f"{st}: {out}")

        p = sbatch("--wrap", "true")
        expect("untagged job passes untouched", p.returncode == 0, p.stderr)
        gate(require_tag="yes")
        p = sbatch("--wrap", "true")
        expect("require_tag=yes refuses untagged jobs",
               p.returncode != 0 and "requires a Preflight verdict" in p.stderr, p.stderr)

        server.stop()
        gate(on_unavailable="admit")
        p = sbatch("--comment=preflight:train/pass", "--wrap", "true")
        expect("server down, on_unavailable=admit: admitted with a message",
               p.returncode == 0 and "did not answer" in p.stderr, p.stderr)
        p = sbatch("--comment=preflight:train/pass", f"--export=ALL,PREFLIGHT_MODEL={tampered}",
                   "--wrap", "echo ran-down")
        dj = p.stdout.split()[-1] if p.returncode == 0 else ""
        st, out = (finished(dj), output(dj)) if dj else (None, p.stderr)
        expect("server down at start, attest_on_unavailable=admit (default): runs with a message",
               st == "COMPLETED" and "ran-down" in out and "did not answer" in out, f"{st}: {out}")
        gate(on_unavailable="admit", attest_on_unavailable="reject")
        p = sbatch("--comment=preflight:train/pass", f"--export=ALL,PREFLIGHT_MODEL={tampered}",
                   "--wrap", "echo ran-down")
        dj = p.stdout.split()[-1] if p.returncode == 0 else ""
        st, out = (finished(dj), output(dj)) if dj else (None, p.stderr)
        expect("server down at start, attest_on_unavailable=reject: refused at start",
               st == "FAILED" and "ran-down" not in out and "did not answer" in out, f"{st}: {out}")
        gate(on_unavailable="reject")
        p = sbatch("--comment=preflight:train/pass", "--wrap", "true")
        expect("server down, on_unavailable=reject: refused",
               p.returncode != 0 and "did not answer" in p.stderr, p.stderr)
    except RuntimeError:
        pass
    finally:
        server.stop()
        subprocess.run(["scancel", "--full", "-u", "root"], capture_output=True,
                       env=dict(os.environ, SLURM_CONF=f"{tmp}/etc/slurm.conf"))
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        kill_stepds(f"SLURM_CONF={tmp}/etc/slurm.conf")
        shutil.rmtree(tmp, ignore_errors=True)
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
