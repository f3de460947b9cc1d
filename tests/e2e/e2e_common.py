"""Helpers shared by the end-to-end scripts in tests/e2e (imported as a
sibling module: each script's own directory is on sys.path).

    R = Results()
    zoo = Zoo(ZOO_DIR)                       # the manifest, read once
    with Server(BUILD, store) as server:     # 127.0.0.1:0, port read back
        p, response = check_case(cli_path(BUILD), zoo["mlp"], server=server.addr)
        R.expect("mlp PASS", response["report"]["verdict"] == "PASS", p.stderr)
    sys.exit(R.finish())

The zoo is built once per build tree by the ctest fixture `e2e_zoo_setup`
(tools/zoo/make_zoo.py BUILD/zoo); scripts take its directory as an argument.
"""
import json
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PORT = re.compile(r"\b(listening|metrics) on port (\d+)\b")


class Results:
    """Prints one line per expectation and the closing 'N passed, N failed'."""

    def __init__(self):
        self.passed = 0
        self.failures = []

    def expect(self, name, cond, detail=""):
        print(f"{'ok  ' if cond else 'FAIL'} {name}", flush=True)
        if cond:
            self.passed += 1
        else:
            self.failures.append(f"{name}: {str(detail)[-1500:]}")
        return cond

    def finish(self):
        print(f"{self.passed} passed, {len(self.failures)} failed")
        for f in self.failures:
            print(" -", f)
        return 1 if self.failures else 0


def cli_path(build, thin=False):
    """The `preflight` CLI of a build tree (`preflight-thin`: without LibTorch)."""
    return os.path.join(os.path.abspath(build), "client",
                        "preflight-thin" if thin else "preflight")


def free_port():
    """A loopback port the kernel just handed out, for programs that cannot
    bind port 0 and report what they got (Prometheus, Slurm). Our own server
    binds 127.0.0.1:0 itself: see Server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real preflight-server on 127.0.0.1:0 with its zygote worker, serving
    `store`; the port is the one the server reports back. `metrics=True`
    serves /metrics on another port 0 (`metrics_port`), otherwise metrics
    are off. `worker` replaces the zygote binary. Its stderr goes where the
    test's goes. As a context manager, it is stopped (SIGTERM) on exit."""

    START_SECONDS = 180  # Starting the zygote loads LibTorch: seconds on a busy machine.

    def __init__(self, build, store, *flags, worker=None, metrics=False):
        self.build, self.store = os.path.abspath(build), store
        self.flags, self.worker, self.metrics = flags, worker, metrics
        args = [os.path.join(self.build, "service", "preflight-server"),
                "--address", "127.0.0.1:0", "--store", store,
                "--metrics_address", "127.0.0.1:0" if metrics else ""]
        if worker:
            args += ["--worker", worker]
        self.proc = subprocess.Popen(args + list(flags), stdout=subprocess.PIPE, text=True)
        self.port = self.metrics_port = None
        lines = queue.Queue()
        threading.Thread(target=self._read_stdout, args=(lines,), daemon=True).start()
        while self.port is None:
            try:
                line = lines.get(timeout=self.START_SECONDS)
            except queue.Empty:
                line = None
            if line is None:  # Exited, or never got as far as listening.
                self.kill()
                raise SystemExit(f"preflight-server did not start (exit {self.proc.returncode}; "
                                 "its stderr is above)")
            for what, port in _PORT.findall(line):
                if what == "metrics":
                    self.metrics_port = int(port)
                else:  # The last start-up line.
                    self.port = int(port)
        if metrics and self.metrics_port is None:
            self.kill()
            raise SystemExit("preflight-server did not report its metrics port")
        self.addr = f"127.0.0.1:{self.port}"
        self.pid = self.proc.pid

    def _read_stdout(self, lines):
        # Keeps reading after start-up so the pipe can never fill up.
        for line in self.proc.stdout:
            lines.put(line)
        lines.put(None)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=60):
        """SIGTERM (drain), then the exit status; kills it if it hangs."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self):
        """SIGKILL: no drain, as a crash or an OOM kill would end it."""
        if self.alive():
            self.proc.kill()
        return self.proc.wait()

    def restart(self):
        """A new server on the same store, with the same flags."""
        return Server(self.build, self.store, *self.flags, worker=self.worker,
                      metrics=self.metrics)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def run_cli(cli, *args, timeout=600):
    return subprocess.run([cli, *args], capture_output=True, text=True, timeout=timeout)


def health_check(addr):
    """grpc.health.v1.Health/Check over plaintext: the raw response bytes
    (08 01 SERVING, 08 02 NOT_SERVING), or None when the call fails."""
    import grpc

    with grpc.insecure_channel(addr) as channel:
        call = channel.unary_unary("/grpc.health.v1.Health/Check",
                                   request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        try:
            return call(b"", timeout=10)
        except grpc.RpcError:
            return None


def check_args(model, batch, *flags, server=None):
    """`preflight check --json` arguments (through `server` when given)."""
    return (["check", "--model", model, "--batch", batch, "--json", *flags]
            + (["--server", server] if server else []))


def cli_check(cli, model, batch, *flags, server=None, timeout=600):
    """`preflight check --json [--server ADDR]`: (process, JSON or None). The
    JSON is the report locally and the CheckResponse through a server."""
    p = run_cli(cli, *check_args(model, batch, *flags, server=server), timeout=timeout)
    try:
        return p, json.loads(p.stdout)
    except json.JSONDecodeError:
        return p, None


def check_case(cli, case, *flags, server=None, timeout=600):
    """A zoo case with its manifest flags (then `flags`) through cli_check."""
    return cli_check(cli, case["model"], case["batch"], *case["flags"], *flags, server=server,
                     timeout=timeout)


def spawn_check(cli, model, batch, *flags, server=None):
    """cli_check without waiting: the Popen (stdout/stderr piped, text)."""
    return subprocess.Popen([cli, *check_args(model, batch, *flags, server=server)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def store_verdicts(cli, server, zoo, jobs):
    """Checks zoo cases under job ids ({job id: case name}) so that a gate
    has verdicts to look up; returns {job id: request digest}."""
    digests = {}
    for job, name in jobs.items():
        p, response = check_case(cli, zoo[name], "--job-id", job, server=server, timeout=300)
        if not response:
            raise SystemExit(f"storing {job}: exit {p.returncode}: {p.stderr[-500:]}")
        digests[job] = response["requestDigest"]
    return digests


def children(pid):
    """The pids of a process's children (none once it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def wait_for(cond, timeout):
    """Polls `cond` until it holds or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while not (ok := cond()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return ok


class Zoo:
    """The zoo's manifest.json (tools/zoo/make_zoo.py), read once: cases by
    name with their model, batch, flags, expected verdict and codes."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        with open(os.path.join(self.path, "manifest.json")) as f:
            self.cases = json.load(f)
        self._by_name = {c["name"]: c for c in self.cases}

    def __getitem__(self, name):
        try:
            return self._by_name[name]
        except KeyError:
            raise SystemExit(f"zoo case '{name}' is not in {self.path}/manifest.json "
                             "(build the zoo with tools/zoo/make_zoo.py)") from None

    def select(self, only=None, service=False):
        """Cases in manifest order: those named in `only` (all when None);
        service-only (hostile) cases only when `service` is true."""
        return [c for c in self.cases if (not only or c["name"] in only)
                and (service or not c.get("service_only"))]
