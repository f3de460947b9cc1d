#!/usr/bin/env python3
"""End-to-end: issue 4's hostile-model list, each a real TorchScript file sent
to the real server, whose job children run in the real sandbox.

  infinite loop, segfault, abort, 512 GiB allocation, fork bomb (native fork
  and TorchScript's torch.jit.fork), read of a file outside the inputs, write
  of a file (and torch.save, whose refused open raises nothing), network
  socket, exec, killing the zygote, io_uring, a data.pkl nested 5e6 deep;
  and, against the store itself, reading another submitter's model blob and
  planting a file among the blobs.

For each: the exact finding (and the signal behind it), the server still up,
and a healthy check (a fresh seed, so not a cache hit) passing right after.
Finally: nothing written outside the store, and SIGTERM exits 0.

The loop, segfault, allocation, fork flood, read and write models are pure
TorchScript (tools/zoo/make_zoo.py). Socket, fork, exec and abort cannot be
written in TorchScript (no operator does them), so those models call test-only
ops compiled into BUILD/tests/preflight-worker-hostile, which stand in for a
model that reached native code (tests/worker/hostile_ops.cc).

Usage: hostile_test.py BUILD_DIR ZOO_DIR HOSTILE_WORKER
"""
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings

from e2e_common import Results, Server, Zoo, children, cli_check, cli_path

BUILD, ZOO, WORKER = sys.argv[1], Zoo(sys.argv[2]), sys.argv[3]
CLI = cli_path(BUILD)
R = Results()
expect = R.expect

SIGSEGV, SIGABRT, SIGSYS = int(signal.SIGSEGV), int(signal.SIGABRT), int(signal.SIGSYS)
# Files the hostile models try to create; none may exist afterwards.
WRITE_TARGETS = ["/tmp/preflight-hostile-write", "/tmp/preflight-hostile-exec",
                 "/tmp/preflight-hostile-save"]


def make_native_models(out_dir):
    """Scripts one tiny model per test-only op. The ops' schemas are declared
    here (no kernels: scripting needs only the schema); the hostile worker
    registers the same schemas with the real implementations."""
    import torch  # noqa: PLC0415  (slow import, only needed here)
    warnings.filterwarnings("ignore")
    lib = torch.library.Library("preflight_hostile", "DEF")
    models = {}
    for op in ("inet_socket", "fork_bomb", "exec_shell", "abort", "kill_zygote", "io_uring"):
        lib.define(f"{op}(Tensor x) -> Tensor")
        fn = getattr(torch.ops.preflight_hostile, op)

        class Native(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(4, 3)

            def forward(self, x):
                return self.fc(fn(x))

        torch.manual_seed(0)
        path = os.path.join(out_dir, f"native_{op}.model.pt")
        torch.jit.script(Native()).save(path)
        models[op] = path
    return models


def make_store_models(out_dir, store, victim_sha):
    """Models aimed at the server's own store: read another submitter's
    model blob, and plant a file among the blobs."""
    import torch  # noqa: PLC0415

    class FromFile(torch.nn.Module):
        path: str
        shared: bool

        def __init__(self, path, shared):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.path = path
            self.shared = shared

        def forward(self, x):
            t = torch.from_file(self.path, shared=self.shared, size=16, dtype=torch.uint8)
            return self.fc(x) + t.float().sum() * 0

    models = {}
    for name, path, shared in (("read_other_blob", f"{store}/blobs/{victim_sha}", False),
                               ("plant_blob", f"{store}/blobs/{'e' * 64}", True)):
        torch.manual_seed(0)
        models[name] = os.path.join(out_dir, f"store_{name}.model.pt")
        torch.jit.script(FromFile(path, shared)).save(models[name])
    return models


def make_deep_pickle_model(out_dir, source):
    """The zoo's model with its data.pkl replaced by None wrapped in 5e6
    1-tuples (5 MB): LibTorch's recursive unpickler would overflow the job's
    stack; the loader's archive pass (model_archive_guard.h) refuses it."""
    import zipfile  # noqa: PLC0415
    path = os.path.join(out_dir, "deep_pickle.model.pt")
    with zipfile.ZipFile(source) as z, zipfile.ZipFile(path, "w") as out:
        for info in z.infolist():
            data = z.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = b"\x80\x02N" + b"\x85" * 5_000_000 + b"."
            out.writestr(info, data)
    return path


def check(addr, model, batch, *flags):
    p, response = cli_check(CLI, model, batch, *flags, server=addr)
    return p, response, (response or {}).get("report")


def threads_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    except (OSError, StopIteration):
        return 0


class JobWatcher:
    """Samples the zygote's job children while a check runs: the most
    processes alive at once and the most threads any one of them had."""

    def __init__(self, server_pid):
        self.server_pid = server_pid
        self.max_jobs = 0
        self.max_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for zygote in children(self.server_pid):
                jobs = children(zygote)
                self.max_jobs = max(self.max_jobs, len(jobs))
                for j in jobs:
                    self.max_threads = max(self.max_threads, threads_of(j))
                    self.max_jobs = max(self.max_jobs, len(jobs) + len(children(j)))
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main():
    for t in WRITE_TARGETS:
        if os.path.exists(t):
            os.unlink(t)
    work = tempfile.mkdtemp(prefix="preflight-hostile-")
    native = make_native_models(work)
    store = os.path.join(work, "store")
    mlp = ZOO["mlp"]
    with open(mlp["model"], "rb") as f:
        victim_sha = hashlib.sha256(f.read()).hexdigest()  # Stored by the baseline check.
    on_store = make_store_models(work, store, victim_sha)
    batch = ZOO["hostile_read_file"]["batch"]  # 4 samples x 4 features, 3 classes.
    tmp_before = set(os.listdir("/tmp"))

    def zoo(name):
        c = ZOO[name]
        return c["model"], c["batch"], c["flags"]

    # name, (model, batch, flags), expected code, expected signal (or None).
    cases = [
        ("infinite loop", zoo("hostile_infinite_loop"), "WORKER_TIMEOUT", None),
        ("segfault (100000 nested parentheses)", zoo("hostile_segfault"), "WORKER_CRASHED",
         SIGSEGV),
        ("abort (native)", (native["abort"], batch, []), "WORKER_CRASHED", SIGABRT),
        ("512 GiB allocation", zoo("hostile_allocation"), "WORKER_OOM", None),
        ("fork bomb (native fork)", (native["fork_bomb"], batch, []), "SANDBOX_VIOLATION", SIGSYS),
        # Queues ~0.6 GB of tasks a second here: the deadline or, on a faster
        # machine, the address-space limit ends it.
        ("fork flood (torch.jit.fork)", zoo("hostile_fork_flood"), "WORKER_TIMEOUT|WORKER_OOM",
         None),
        ("read /etc/passwd", zoo("hostile_read_file"), "SANDBOX_VIOLATION", None),
        ("write a file", zoo("hostile_write_file"), "SANDBOX_VIOLATION", None),
        ("model pickle nested 5e6 deep", (make_deep_pickle_model(work, mlp["model"]), batch, []),
         "ARTIFACT_INVALID", None),
        # std::fstream ignores the refused open: nothing raises, and the
        # check would PASS but for the recorded write.
        ("torch.save to /tmp", zoo("hostile_torch_save"), "SANDBOX_VIOLATION", None),
        ("network socket", (native["inet_socket"], batch, []), "SANDBOX_VIOLATION", SIGSYS),
        ("exec a shell", (native["exec_shell"], batch, []), "SANDBOX_VIOLATION", SIGSYS),
        ("kill the zygote (and every other job)", (native["kill_zygote"], batch, []),
         "SANDBOX_VIOLATION", SIGSYS),
        ("io_uring (syscalls seccomp cannot see)", (native["io_uring"], batch, []),
         "SANDBOX_VIOLATION", SIGSYS),
        # Tenant isolation: the store holds every submitter's artifacts.
        ("read another submitter's model blob", (on_store["read_other_blob"], batch, []),
         "SANDBOX_VIOLATION", None),
        ("plant a file in the store", (on_store["plant_blob"], batch, []),
         "SANDBOX_VIOLATION", None),
    ]

    # Dashed flag spellings, as documented, on purpose.
    server = Server(BUILD, store, "--job-slots", "1", "--queue-size", "4", worker=WORKER)
    addr = server.addr
    try:
        zygote = children(server.pid)
        # A healthy baseline first; it also stores the blob the store models aim at.
        _, _, baseline = check(addr, mlp["model"], mlp["batch"])
        expect("baseline check PASS", baseline is not None and baseline["verdict"] == "PASS")
        expect("the victim blob exists (the store attempts are real)",
               os.path.exists(f"{store}/blobs/{victim_sha}"))
        for seed, (name, (model, b, flags), code, sig) in enumerate(cases, start=1):
            with JobWatcher(server.pid) as watch:
                p, _, report = check(addr, model, b, *flags)
            findings = report["findings"] if report else []
            got = [(f["code"], next((e["number"] for e in f.get("evidence", [])
                                     if e["name"] == "signal"), None)) for f in findings]
            ok = (report is not None and report["verdict"] == "ERROR" and p.returncode == 3
                  and any(c in code.split("|") and (sig is None or s == sig) for c, s in got))
            want = code + (f" (signal {sig})" if sig else "")
            expect(f"{name}: ERROR with {want}", ok, (p.returncode, got, p.stderr[-400:]))
            if name.startswith("fork"):
                # Exactly 1: the watcher saw the job itself (so it was
                # watching) and nothing the job forked.
                expect(f"{name}: no process beyond the job itself "
                       f"(saw {watch.max_jobs})", watch.max_jobs == 1, watch.max_jobs)
            if name.startswith("fork flood"):
                # However many tasks it forks, the job's threads stay bounded
                # by its fixed pools.
                expect(f"{name}: job threads bounded (max {watch.max_threads})",
                       0 < watch.max_threads <= 32, watch.max_threads)
            expect(f"{name}: server still up", server.alive())
            hp, response, healthy = check(addr, mlp["model"], mlp["batch"], "--seed", str(seed))
            expect(f"{name}: a healthy check right after is PASS",
                   healthy is not None and healthy["verdict"] == "PASS"
                   and not response.get("cached"), hp.stderr[-400:])
            sandbox = (healthy or {}).get("environment", {}).get("sandbox", "")
            expect(f"{name}: the report names the sandbox it ran in",
                   "seccomp" in sandbox and "rlimits" in sandbox
                   and ("landlock v" in sandbox or "no landlock" in sandbox), sandbox)

        expect(f"the zygote survived every hostile model (pid {zygote})",
               len(zygote) == 1 and children(server.pid) == zygote, children(server.pid))
        for t in WRITE_TARGETS + [f"{store}/blobs/{'e' * 64}"]:
            expect(f"nothing written: {t} absent", not os.path.exists(t))
        new_tmp = sorted(set(os.listdir("/tmp")) - tmp_before - {os.path.basename(work)})
        expect("nothing new in /tmp besides the test's own directory", not new_tmp, new_tmp)

        expect("SIGTERM exits 0", server.stop() == 0)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
