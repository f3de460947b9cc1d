"""The Python client against a real preflight-server on loopback.

Run with PYTHONPATH=BUILD/python and PREFLIGHT_BUILD=BUILD (ctest sets both).
"""
import os
import signal
import subprocess
import tempfile
import warnings

import pytest
import torch
import torch.nn as nn

import preflight

BUILD = os.environ.get("PREFLIGHT_BUILD", "build")


@pytest.fixture(scope="module")
def server():
    store = tempfile.mkdtemp(prefix="preflight-pytest-")
    p = subprocess.Popen([f"{BUILD}/service/preflight-server", "--address", "127.0.0.1:0",
                          "--metrics_address", "", "--store", store],
                         stdout=subprocess.PIPE, text=True)
    addr = None
    for line in p.stdout:
        if "listening on port" in line:
            addr = f"127.0.0.1:{line.split()[-1]}"
            break
    assert addr, "server did not start"
    yield addr
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)


def batch(n=16, d=20, classes=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def mlp(d=20, classes=5):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, classes))


def test_healthy_model_passes_and_verdict_is_stored(server):
    report = preflight.check(mlp(), batch(), loss="cross_entropy", server=server,
                             job_id="py/healthy-1")
    assert report.verdict == "PASS", str(report)
    assert report.ok
    assert report.conversion == "scripted"
    assert [f.code for f in report.findings] == ["OVERFIT_CONVERGED"]
    assert len(report.request_digest) == 64
    assert "Preflight PASS" in str(report)
    stored = preflight.verdict(job_id="py/healthy-1", server=server)
    assert stored.verdict == "PASS"
    assert stored.request_digest == report.request_digest


class Quantised(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return torch.round(self.net(x) * 4) / 4


def test_fault_model_fails_with_its_code(server):
    report = preflight.check(Quantised(), batch(), server=server)
    assert report.verdict == "FAIL"
    assert not report.ok
    assert "LOSS_FLAT" in [f.code for f in report.findings]


class Unscriptable(nn.Module):
    """*args in forward cannot be scripted; tracing with the batch works."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, *xs):
        return self.net(xs[0])


def test_unscriptable_module_is_traced(server):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = preflight.check(Unscriptable(), batch(), server=server)
    assert report.conversion == "traced"
    assert any("traced with the batch" in str(w.message) for w in caught)
    assert report.verdict == "PASS", str(report)


def test_bad_batches(server):
    x, y = batch()
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor"):
        preflight.check(mlp(), ("image.png", y), server=server)
    with pytest.raises(TypeError, match="needs keys 'inputs' and 'targets'"):
        preflight.check(mlp(), {"x": x, "y": y}, server=server)
    # Well-formed but inconsistent: the service answers with an ERROR verdict.
    report = preflight.check(mlp(), (x, y[:5]), server=server)
    assert report.verdict == "ERROR"
    assert [f.code for f in report.findings] == ["DATA_INVALID"]
    assert "targets have batch size 5" in report.findings[0].message


def test_invalid_request_names_the_field(server):
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check(mlp(), batch(), server=server, lr=-1.0)
    assert e.value.code == "INVALID_ARGUMENT"
    assert "config.lr" in e.value.message


def test_unknown_job_is_not_found(server):
    with pytest.raises(preflight.PreflightError) as e:
        preflight.verdict(job_id="py/never", server=server)
    assert e.value.code == "NOT_FOUND"


def test_server_unreachable():
    with socket_free_port() as port:
        pass
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check(mlp(), batch(), server=f"127.0.0.1:{port}", timeout=5)
    assert e.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_console_script_mirrors_the_cli(server, tmp_path):
    model = torch.jit.script(mlp())
    model.save(str(tmp_path / "m.pt"))
    x, y = batch()
    torch.save({"inputs": x, "targets": y}, tmp_path / "b.pt")
    env = dict(os.environ)
    p = subprocess.run(["python3", "-m", "preflight", "check", "--server", server, "--model",
                        str(tmp_path / "m.pt"), "--batch", str(tmp_path / "b.pt"),
                        "--job-id", "py/cli-1"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "Preflight PASS" in p.stdout
    p = subprocess.run(["python3", "-m", "preflight", "verdict", "--server", server,
                        "--job-id", "py/none"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 4
    assert "NOT_FOUND" in p.stderr


class socket_free_port:
    """A loopback port that nothing listens on (bound, then released)."""

    def __enter__(self):
        import socket
        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc):
        self.s.close()
