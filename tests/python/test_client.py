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
import torch.nn.functional as F

import preflight
from preflight._client import _config
from preflight.v1 import report_pb2

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
    assert report.conversion == "exported"  # torch.export is the default.
    assert report.conversion_reason == ""
    assert report.proto.model.format == report_pb2.EXPORTED_PROGRAM
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


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture
    it (a data-dependent guard); torch.jit.script can."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        if x.sum() > 0:
            return self.net(x)
        return self.net(-x)


class DataDependentVarargs(DataDependent):
    """As DataDependent, and *args: neither export nor script; tracing with
    the batch works (it records the branch taken)."""

    def forward(self, *xs):
        if xs[0].sum() > 0:
            return self.net(xs[0])
        return self.net(-xs[0])


def checked(module, server, **kw):
    """preflight.check with every warning recorded: (report, warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = preflight.check(module, batch(), server=server, **kw)
    return report, caught


def futures(caught):
    return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


def test_export_is_the_default_and_quiet(server, capfd):
    report, caught = checked(mlp(), server)
    assert (report.conversion, report.conversion_reason) == ("exported", "")
    assert report.proto.model.format == report_pb2.EXPORTED_PROGRAM
    assert report.verdict == "PASS", str(report)
    assert not caught, [str(w.message) for w in caught]
    assert "Warning" not in capfd.readouterr().err


def test_export_failure_falls_back_to_script_and_says_so(server, capfd):
    report, caught = checked(DataDependent(), server)
    assert report.conversion == "scripted"
    assert report.conversion_reason.startswith("torch.export failed (")
    assert "data-dependent" in report.conversion_reason
    assert report.proto.model.format == report_pb2.TORCHSCRIPT
    assert report.verdict == "PASS", str(report)
    said = [str(w.message) for w in caught if "sent as TorchScript (scripted)" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("preflight: torch.export failed ("), caught
    # TorchScript's deprecation notice stays out; so does the exporter's graph dump.
    assert not futures(caught)
    err = capfd.readouterr().err
    assert "FutureWarning" not in err and "def forward" not in err, err[-2000:]


def test_neither_export_nor_script_falls_back_to_trace(server):
    report, caught = checked(DataDependentVarargs(), server)
    assert report.conversion == "traced"
    assert report.conversion_reason.startswith("torch.export failed (")
    assert any("sent as TorchScript (traced)" in str(w.message) for w in caught)
    assert not futures(caught)
    assert report.verdict == "PASS", str(report)


def test_export_trains_and_restores_the_mode(server):
    # The check trains the program (dropout on), whatever mode the caller's
    # module was in; the module comes back in that mode, weights untouched.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(64, 5)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report, _ = checked(model, server)
    assert report.conversion == "exported"
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert report.verdict != "ERROR" and report.loss_curve, str(report)


class OwnLoss(nn.Module):
    """Its own loss(output, target): exported as the .pt2 custom-loss
    program, forward(inputs..., targets) -> (output, 0-d loss)."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x)

    def loss(self, output, target):
        return F.cross_entropy(output / 0.5, target)


class SignError(OwnLoss):
    def loss(self, output, target):
        return -F.cross_entropy(output, target)  # Maximises the loss.


def test_own_loss_travels_as_the_loss_program(server):
    report, caught = checked(OwnLoss(), server)
    assert report.conversion == "exported" and not futures(caught)
    assert report.verdict == "PASS", str(report)
    wrong, _ = checked(SignError(), server)
    assert wrong.conversion == "exported"
    assert wrong.verdict == "FAIL", str(wrong)
    assert "LOSS_DIVERGED" in [f.code for f in wrong.findings], str(wrong)


def test_exported_program_and_script_module_are_sent_as_given(server):
    x, _ = batch()
    program = torch.export.export(mlp(), (x,))
    report, _ = checked(program, server)
    assert (report.conversion, report.verdict) == ("exported", "PASS"), str(report)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(mlp())
    report, caught = checked(scripted, server)
    assert (report.conversion, report.conversion_reason) == ("scripted", "")
    assert report.proto.model.format == report_pb2.TORCHSCRIPT
    assert report.verdict == "PASS" and not futures(caught), str(report)


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
    x, y = batch()
    torch.export.save(torch.export.export(mlp(), (x,)), str(tmp_path / "m.pt2"))
    torch.save({"inputs": x, "targets": y}, tmp_path / "b.pt")
    env = dict(os.environ)
    p = subprocess.run(["python3", "-m", "preflight", "check", "--server", server, "--model",
                        str(tmp_path / "m.pt2"), "--batch", str(tmp_path / "b.pt"),
                        "--job-id", "py/cli-pt2"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "Preflight PASS" in p.stdout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(mlp()).save(str(tmp_path / "m.pt"))
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
    x, _ = batch()
    torch.export.save(torch.export.export(mlp(), (x,)), str(tmp_path / "m.pt2"))
    x, y = batch()
    torch.save({"inputs": x, "targets": y}, tmp_path / "b.pt")
    p = subprocess.run(["python3", "-m", "preflight", "check", "--server", server, "--model",
                        str(tmp_path / "m.pt2"), "--batch", str(tmp_path / "b.pt"),
                        "--lr", "-1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "INVALID_ARGUMENT: config.lr: " in p.stderr
