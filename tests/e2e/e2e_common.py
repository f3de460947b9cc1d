"""Helpers shared by the end-to-end scripts in tests/e2e (imported as a
sibling module: each script's own directory is on sys.path)."""
import json
import signal
import socket
import subprocess


class Results:
    """Prints one line per expectation and the closing 'N passed, N failed'."""

    def __init__(self):
        self.passed = 0
        self.failures = []

    def expect(self, name, cond, detail=""):
        print(f"{'ok  ' if cond else 'FAIL'} {name}")
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


def free_port():
    """A loopback port the kernel just handed out (for programs that cannot
    report a port they picked themselves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(build, store, *extra):
    """Starts preflight-server on 127.0.0.1:0 (metrics off unless given in
    `extra`); returns (process, "127.0.0.1:PORT")."""
    args = [f"{build}/service/preflight-server", "--address", "127.0.0.1:0", "--store", store]
    if not any(a.startswith("--metrics_address") for a in extra):
        args += ["--metrics_address", ""]
    p = subprocess.Popen(args + list(extra), stdout=subprocess.PIPE, text=True)
    for line in p.stdout:  # "... listening on port N" is the last start-up line.
        if "listening on port" in line:
            return p, f"127.0.0.1:{line.split()[-1]}"
    p.kill()
    raise SystemExit("preflight-server did not start")


def stop(p, timeout=60):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=timeout)


def cli_check(cli, addr, model, batch, *flags, timeout=600):
    """`preflight check --json --server ADDR`: (process, response dict or None)."""
    p = subprocess.run([cli, "check", "--model", model, "--batch", batch, "--json",
                        "--server", addr, *flags], capture_output=True, text=True,
                       timeout=timeout)
    try:
        return p, json.loads(p.stdout)
    except json.JSONDecodeError:
        return p, None


def zoo_case(zoo, name):
    with open(f"{zoo}/manifest.json") as f:
        return next(c for c in json.load(f) if c["name"] == name)
