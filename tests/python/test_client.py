"""The Python client against a real preflight-server on loopback.

Run with PYTHONPATH=BUILD/python and PREFLIGHT_BUILD=BUILD (ctest sets both).
"""
import os
import subprocess
import sys
import tempfile
import warnings

import pytest
import torch
import torch.nn as nn

import preflight
from preflight._client import _config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "e2e"))
from e2e_common import Server, free_port  # noqa: E402  (the e2e tier's server helper)

BUILD = os.environ.get("PREFLIGHT_BUILD", "build")


@pytest.fixture(scope="module")
def server():
    with Server(BUILD, tempfile.mkdtemp(prefix="preflight-pytest-")) as s:
        yield s.addr


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
    port = free_port()  # Bound, then released: nothing listens there.
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



def test_unset_settings_stay_unset():
    # Only what the caller set travels; the server fills in the rest.
    assert _config().ByteSize() == 0
    assert _config(lr=None, seed=None, timeout=None).ByteSize() == 0
    c = _config(lr=0.01, steps=50, timeout=30.0, train_mode=False)
    assert [f.name for f, _ in c.ListFields()] == ["lr", "max_steps", "train_mode",
                                                   "timeout_seconds"]
    assert (c.lr, c.max_steps, c.timeout_seconds, c.train_mode) == (0.01, 50, 30.0, False)
    with pytest.raises(TypeError, match="unknown check setting 'frobnicate'"):
        _config(frobnicate=1)
    with pytest.raises(TypeError, match="^lr: "):
        _config(lr="fast")


def test_report_config_holds_the_servers_defaults(server):
    report = preflight.check(mlp(), batch(), server=server, seed=3)
    c = report.config
    # Everything unset came back filled in by the server, and is what the
    # report prints; the one setting given is the one that ran.
    assert c.seed == 3
    assert c.optimizer and c.lr > 0 and c.max_steps > 0 and c.timeout_seconds > 0, c
    assert f"{c.optimizer} lr {c.lr:g}, wd {c.weight_decay:g}, max {c.max_steps} steps" \
        in str(report)
    tuned = preflight.check(mlp(), batch(), server=server, seed=3, lr=c.lr / 2, steps=40)
    assert (tuned.config.lr, tuned.config.max_steps) == (c.lr / 2, 40)
    assert tuned.config.optimizer == c.optimizer


@pytest.mark.parametrize("settings, field", [
    ({"lr": -1.0}, "config.lr"),
    ({"optimizer": "rmsprop"}, "config.optimizer"),
    ({"steps": -5}, "config.max_steps"),
    ({"device": "tpu"}, "config.device"),
    ({"momentum": 0.9, "optimizer": "adam"}, "config.momentum"),
    ({"loss": "hinge"}, "config.loss"),
])
def test_server_validates_settings_and_names_the_field(server, settings, field):
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check(mlp(), batch(), server=server, **settings)
    assert e.value.code == "INVALID_ARGUMENT"
    assert e.value.field == field, e.value.message
    assert str(e.value).startswith(f"INVALID_ARGUMENT: {field}: ")


def test_console_script_defers_to_the_server(server, tmp_path):
    p = subprocess.run(["python3", "-m", "preflight", "check", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0
    assert "default: server's" in p.stdout
    assert "1e-3" not in p.stdout and "0.001" not in p.stdout
    torch.jit.script(mlp()).save(str(tmp_path / "m.pt"))
    x, y = batch()
    torch.save({"inputs": x, "targets": y}, tmp_path / "b.pt")
    p = subprocess.run(["python3", "-m", "preflight", "check", "--server", server, "--model",
                        str(tmp_path / "m.pt"), "--batch", str(tmp_path / "b.pt"),
                        "--lr", "-1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "INVALID_ARGUMENT: config.lr: " in p.stderr
