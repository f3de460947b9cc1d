"""Preflight's Python client: check a live model before submitting a job.

    import preflight
    report = preflight.check(model, (inputs, targets), loss="cross_entropy",
                             server="preflight:50051", job_id="train/run-42")
    if report.verdict == "FAIL":
        raise SystemExit(str(report))

An nn.Module is exported with torch.export (torch.export.export with the
batch's inputs, in train mode, then torch.export.save: a `.pt2` program).
Only when export fails does it fall back to TorchScript (scripted, or traced
with the batch's inputs when scripting fails too), with a warning saying why;
`report.conversion` says what was sent and `report.conversion_reason` why
export was not. No FutureWarning reaches the caller: TorchScript's
deprecation notice is silenced around the fallback only. A module with its
own `loss(output, target)` method is exported as the `.pt2` custom-loss
contract: one program whose forward takes the inputs and then the targets and
returns (output, loss), the loss 0-d. Model and batch are serialized in
memory and sent inline (streamed through Upload when over 4 MiB, as the C++
CLI does), and the check runs on the server.

`server` is HOST:PORT, a comma-separated list of them, or dns:///NAME:PORT
(_target.py): calls are spread over every address by gRPC's round_robin
policy, and an address that does not answer is skipped. Errors
are PreflightError with the gRPC status code and the server's message (which
names the field), never a raw gRPC stack trace.

Settings: only those you pass travel in the request; the rest stay unset and
the server applies its defaults and validates everything (one home for both:
service/engine/config.cc). `report.config` is the configuration that ran,
defaults filled in. A setting the server refuses is a PreflightError
INVALID_ARGUMENT whose `field` names it (e.g. "config.lr").

A server with --tokens, TLS and --signing-key: `token` (or PREFLIGHT_TOKEN),
`tls_ca` (or PREFLIGHT_TLS_CA; `tls=True` trusts the system's CAs),
`tls_cert`/`tls_key` for mutual TLS, and `verify_key` (or
PREFLIGHT_VERIFY_KEY), the PEM public key every verdict must be signed by:
an unsigned, foreign-signed or altered verdict raises UntrustedVerdict.
"""
import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import warnings
from typing import Any, List, Optional, Sequence, Union

import grpc

from preflight import _target
from preflight.v1 import preflight_pb2, preflight_pb2_grpc, report_pb2

_CHUNK = 1 << 20
_INLINE_MAX = 4 << 20  # Larger artifacts go through Upload (the C++ CLI's threshold).


class PreflightError(Exception):
    """A request the service could not serve (not a FAIL verdict)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code          # gRPC status code name, e.g. "INVALID_ARGUMENT".
        self.message = message    # The server's message; names the field at fault.

    @property
    def field(self) -> str:
        """For INVALID_ARGUMENT, the request field at fault ("config.lr",
        "job_id", "model.inline"): the server's messages start "FIELD: ..."."""
        head, sep, _ = self.message.partition(": ")
        return head if sep and self.code == "INVALID_ARGUMENT" and " " not in head else ""


class UntrustedVerdict(PreflightError):
    """A verdict that `verify_key` did not sign: unsigned, signed by another
    key, or altered after signing. Code "UNTRUSTED"."""

    def __init__(self, message: str):
        super().__init__("UNTRUSTED", message)


@dataclasses.dataclass
class Remote:
    """How to reach a server and whom to trust (see the module docstring)."""
    server: str
    token: Optional[str] = None
    tls: bool = False
    tls_ca: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    verify_key: Optional[str] = None

    def __post_init__(self):
        self.token = self.token or os.environ.get("PREFLIGHT_TOKEN") or None
        self.tls_ca = self.tls_ca or os.environ.get("PREFLIGHT_TLS_CA") or None
        self.verify_key = self.verify_key or os.environ.get("PREFLIGHT_VERIFY_KEY") or None

    def channel(self):
        """A channel to every server `server` names, round_robin over them,
        with TLS when asked for (see _channel)."""
        try:
            target = _target.grpc_target(self.server)
        except LookupError as e:
            raise PreflightError("UNAVAILABLE", str(e)) from None
        options = [("grpc.service_config", _target.ROUND_ROBIN_SERVICE_CONFIG),
                   ("grpc.max_receive_message_length", 64 << 20)]
        if not (self.tls or self.tls_ca or self.tls_cert):
            return grpc.insecure_channel(target, options=options)

        def read(path):
            with open(path, "rb") as f:
                return f.read()

        creds = grpc.ssl_channel_credentials(
            root_certificates=read(self.tls_ca) if self.tls_ca else None,
            private_key=read(self.tls_key) if self.tls_key else None,
            certificate_chain=read(self.tls_cert) if self.tls_cert else None)
        return grpc.secure_channel(target, creds, options=options)

    def metadata(self):
        return [("authorization", f"Bearer {self.token}")] if self.token else None

    def verify(self, report, signature: bytes, key_id: str):
        """Raises UntrustedVerdict unless `verify_key` signed `report`. The
        signature is over the report's serialized bytes (a Report has no map
        fields: every protobuf runtime writes it the same way)."""
        if not self.verify_key:
            return
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        with open(self.verify_key, "rb") as f:
            pem = f.read()
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError:
            key = serialization.load_pem_private_key(pem, password=None).public_key()
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValueError(f"verify_key: {self.verify_key} is not an Ed25519 key")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        mine = "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]
        if not signature:
            raise UntrustedVerdict("the verdict is unsigned (the server has no --signing-key, "
                                   "or stored it before it had one)")
        if key_id != mine:
            raise UntrustedVerdict(f"the verdict is signed by key {key_id}, but the verify key "
                                   f"is {mine}")
        try:
            key.verify(signature, report.SerializeToString())
        except InvalidSignature:
            raise UntrustedVerdict(f"the verdict's signature by key {key_id} does not verify: "
                                   "the report was altered after it was signed") from None


@dataclasses.dataclass
class Finding:
    code: str
    severity: str
    check: str
    message: str
    hint: str


@dataclasses.dataclass
class Report:
    verdict: str                    # PASS | WARN | FAIL | ERROR
    findings: List[Finding]
    loss_curve: List[float]
    request_digest: str = ""
    cached: bool = False
    # How the model was sent: "exported" (torch.export, the default for an
    # nn.Module), "scripted" or "traced" (TorchScript: a ScriptModule given,
    # or the fallback when export failed), "file" (a path, sent as it is).
    conversion: str = ""
    conversion_reason: str = ""     # Why export failed, when it fell back; else "".
    proto: Any = None               # The full preflight.v1.Report message.

    @property
    def ok(self) -> bool:
        """True for PASS and WARN: the job may be submitted."""
        return self.verdict in ("PASS", "WARN")

    @property
    def config(self):
        """The preflight.v1.CheckConfig that ran: what was asked, with the
        server's defaults for everything that was not."""
        return self.proto.config if self.proto is not None else report_pb2.CheckConfig()

    def __str__(self) -> str:
        lines = [f"Preflight {self.verdict}"
                 + (f" (cached verdict {self.request_digest[:12]})" if self.cached else "")]
        c = self.config
        if c.optimizer:  # Absent from reports that never reached the engine.
            device = (self.proto.environment.device if self.proto is not None else "") or c.device
            lines.append(f"  loss {c.loss or '-'}, {c.optimizer} lr {c.lr:g}, "
                         f"wd {c.weight_decay:g}, max {c.max_steps} steps, seed {c.seed}, "
                         f"{device}")
        if self.loss_curve:
            lines.append(f"  loss {self.loss_curve[0]:.4g} -> {self.loss_curve[-1]:.4g} "
                         f"in {len(self.loss_curve)} steps")
        for f in self.findings:
            lines.append(f"  {f.severity:<5} {f.code}: {f.message}")
            if f.hint and f.code != "OVERFIT_CONVERGED":
                lines.append(f"        hint: {f.hint}")
        return "\n".join(lines)


def _report(resp_report, digest="", cached=False, conversion="") -> Report:
    return Report(
        verdict=report_pb2.Verdict.Name(resp_report.verdict),
        findings=[Finding(code=report_pb2.FindingCode.Name(f.code),
                          severity=report_pb2.Finding.Severity.Name(f.severity),
                          check=f.check, message=f.message, hint=f.hint)
                  for f in resp_report.findings],
        loss_curve=list(resp_report.loss_curve),
        request_digest=digest, cached=cached, conversion=conversion, proto=resp_report)


def _rpc_error(e: grpc.RpcError) -> PreflightError:
    return PreflightError(e.code().name, e.details() or "")


def _split_batch(batch):
    import torch

    if isinstance(batch, dict):
        if "inputs" not in batch or "targets" not in batch:
            raise TypeError(f"batch dict needs keys 'inputs' and 'targets'; got {sorted(batch)}")
        inputs, targets = batch["inputs"], batch["targets"]
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets = batch
    else:
        raise TypeError("batch must be (inputs, targets) or {'inputs': ..., 'targets': ...}, "
                        f"got {type(batch).__name__}")
    seq = inputs if isinstance(inputs, (tuple, list)) else [inputs]
    for i, t in enumerate(list(seq) + [targets]):
        if not isinstance(t, torch.Tensor):
            what = "targets" if i == len(seq) else ("inputs" if len(seq) == 1 else f"inputs[{i}]")
            raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    return inputs, targets


def _loss_program(model):
    """The `.pt2` custom-loss contract: forward(*inputs, targets) returns
    (output, loss): model(*inputs) and model.loss(output, targets), 0-d."""
    import torch

    class LossProgram(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, *inputs_and_targets):
            *inputs, targets = inputs_and_targets
            output = self.model(*inputs)
            return output, self.model.loss(output, targets)

    return LossProgram(model)


def _first_line(e: BaseException, limit: int = 240) -> str:
    text = str(e).strip()
    line = f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


@contextlib.contextmanager
def _training(model):
    """The module in train mode (the check trains it: training IR bakes the
    train flags into dropout and batch norm), restored afterwards."""
    was = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was)


@contextlib.contextmanager
def _quiet_export():
    """torch.export.export's own noise silenced, for the call only: a failed
    capture logs tracebacks (fake tensors, symbolic shapes) and prints the
    partial graph to stderr before it raises; the caller gets the failure as
    one warning instead. (stderr is process-wide: a write from another thread
    during the export is dropped too.)"""
    manager = logging.Logger.manager
    torch_loggers = [logging.getLogger(name) for name in list(manager.loggerDict)
                     if name == "torch" or name.startswith("torch.")]
    was = [lg.disabled for lg in torch_loggers]
    for lg in torch_loggers:
        lg.disabled = True
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, disabled in zip(torch_loggers, was):
            lg.disabled = disabled


def _export(model, inputs, targets) -> bytes:
    """torch.export.export + torch.export.save of `model` (its loss program
    when it has its own loss) with the batch's inputs. Raises on failure."""
    import torch

    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if callable(getattr(type(model), "loss", None)):
        program_module, args = _loss_program(model), (*args, targets)
    else:
        program_module = model
    with _training(model), _quiet_export():
        program = torch.export.export(program_module, args)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


# TorchScript's deprecation notice (a FutureWarning on every script, trace and
# save since torch 2.11); silenced around the fallback, nowhere else.
_TORCHSCRIPT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"


def _torchscript(model, inputs) -> (bytes, str):
    """The TorchScript fallback: scripted, or traced when scripting fails."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning,
                                message=_TORCHSCRIPT_DEPRECATED)
        if isinstance(model, torch.jit.ScriptModule):
            scripted, how = model, "scripted"
        else:
            try:
                scripted, how = torch.jit.script(model), "scripted"
            except Exception:  # noqa: BLE001  (any scripting failure -> trace)
                example = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
                scripted, how = torch.jit.trace(model, example), "traced"
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
    return buf.getvalue(), how


def _serialize_model(model, inputs, targets) -> (bytes, str, str):
    """(bytes, conversion, reason export was not used)."""
    import torch

    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            return f.read(), "file", ""
    if isinstance(model, torch.export.ExportedProgram):
        buf = io.BytesIO()
        torch.export.save(model, buf)
        return buf.getvalue(), "exported", ""
    if isinstance(model, torch.jit.ScriptModule):  # The caller chose TorchScript.
        data, how = _torchscript(model, inputs)
        return data, how, ""
    try:
        return _export(model, inputs, targets), "exported", ""
    except Exception as e:  # noqa: BLE001  (any export failure -> TorchScript, said so)
        reason = f"torch.export failed ({_first_line(e)})"
    data, how = _torchscript(model, inputs)
    warnings.warn(f"preflight: {reason}; sent as TorchScript ({how}) instead", stacklevel=3)
    return data, how, reason


def _upload(stub, data: bytes, timeout: float, metadata=None) -> str:
    def chunks():
        for off in range(0, len(data), _CHUNK):
            req = preflight_pb2.UploadRequest(chunk=data[off:off + _CHUNK])
            if off == 0:
                req.expected_size = len(data)
            yield req

    return stub.Upload(chunks(), timeout=timeout, metadata=metadata).sha256


def _artifact(artifact, stub, data: bytes, metadata=None) -> bool:
    """Fills a preflight.v1.Artifact: inline up to 4 MiB, else by the sha256
    of an Upload. True when it was uploaded."""
    if len(data) <= _INLINE_MAX:
        artifact.inline = data
        return False
    artifact.sha256 = _upload(stub, data, 600, metadata)
    return True


# Python spellings of CheckConfig fields (the CLI's flag names).
_FIELD_FOR = {"steps": "max_steps", "timeout": "timeout_seconds"}
_RPC_MARGIN_SECONDS = 300  # Queueing and transfer on top of the check's own timeout.


def _config(**settings) -> "report_pb2.CheckConfig":
    """A CheckConfig holding only the settings that are not None. Nothing is
    defaulted or range-checked here: the server does both, for every client."""
    config = report_pb2.CheckConfig()
    fields = config.DESCRIPTOR.fields_by_name
    for name, value in settings.items():
        if value is None:
            continue
        field = fields.get(_FIELD_FOR.get(name, name))
        if field is None:
            raise TypeError(f"unknown check setting '{name}'; CheckConfig has "
                            f"{', '.join(sorted(fields))}")
        if field.enum_type is not None and isinstance(value, str):
            if value not in field.enum_type.values_by_name:
                raise ValueError(f"{name}: expected one of "
                                 f"{', '.join(field.enum_type.values_by_name)}, got '{value}'")
            value = field.enum_type.values_by_name[value].number
        try:
            setattr(config, field.name, value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}: {e}") from None
    return config


def check(model, batch, *, server: str, loss: Optional[str] = None,
          optimizer: Optional[str] = None, lr: Optional[float] = None,
          weight_decay: Optional[float] = None, momentum: Optional[float] = None,
          steps: Optional[int] = None, seed: Optional[int] = None,
          device: Optional[str] = None, timeout: Optional[float] = None,
          job_id: str = "", rpc_timeout: Optional[float] = None,
          token: Optional[str] = None, tls: bool = False, tls_ca: Optional[str] = None,
          tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
          verify_key: Optional[str] = None, **settings) -> Report:
    """Checks that `model` can fit `batch` and returns the verdict.

    model: an nn.Module (exported with torch.export; TorchScript only when
      export fails, see the module docstring), a torch.export
      ExportedProgram, a ScriptModule, or the path of a model file (.pt2 or
      TorchScript: the server tells them apart by content).
    batch: (inputs, targets) or {"inputs": ..., "targets": ...}; inputs may be
      a tuple of tensors for multi-input models.
    loss, optimizer, lr, weight_decay, momentum, steps (max_steps), seed,
      device, timeout (timeout_seconds, the check's wall-clock budget) and any
      other CheckConfig field as a keyword (target_ratio, train_mode, ...):
      left out (None), the server's default applies; `report.config` says
      which values ran.
    rpc_timeout: seconds to wait for the answer. Default: `timeout` + 300 s
      when `timeout` is given, otherwise no client-side limit (the server
      bounds every check by its own timeout).
    token, tls, tls_ca, tls_cert, tls_key, verify_key: see the module docstring.
    """
    import torch

    config = _config(loss=loss, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                     momentum=momentum, steps=steps, seed=seed, device=device,
                     timeout=timeout, **settings)
    inputs, targets = _split_batch(batch)
    model_bytes, conversion, reason = _serialize_model(model, inputs, targets)
    buf = io.BytesIO()
    torch.save({"inputs": inputs, "targets": targets}, buf)
    if rpc_timeout is None and timeout is not None:
        rpc_timeout = timeout + _RPC_MARGIN_SECONDS
    remote = Remote(server, token, tls, tls_ca, tls_cert, tls_key, verify_key)
    md = remote.metadata()
    with remote.channel() as channel:
        stub = preflight_pb2_grpc.PreflightStub(channel)
        uploaded = False
        try:
            req = preflight_pb2.CheckRequest(config=config, job_id=job_id)
            uploaded |= _artifact(req.model, stub, model_bytes, md)
            uploaded |= _artifact(req.batch, stub, buf.getvalue(), md)
            resp = stub.Check(req, timeout=rpc_timeout, metadata=md)
        except grpc.RpcError as e:
            err = _rpc_error(e)
            if err.code == "NOT_FOUND" and uploaded and not _target.single(server):
                # Upload and Check are separate calls: round_robin may send
                # them to different servers, which must then share one store.
                err = PreflightError(err.code, err.message + " (the upload and the check may "
                                     f"reach different servers of '{server}': they must share "
                                     "one store, e.g. a fleet on --store postgresql://...)")
            raise err from None
    remote.verify(resp.report, resp.report_signature, resp.signing_key_id)
    report = _report(resp.report, resp.request_digest, resp.cached, conversion)
    report.conversion_reason = reason
    return report


def verdict(*, server: str, job_id: str = "", digest: str = "", timeout: float = 10.0,
            token: Optional[str] = None, tls: bool = False, tls_ca: Optional[str] = None,
            tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
            verify_key: Optional[str] = None) -> Report:
    """The stored verdict of an earlier check (never runs one). Exactly one of
    job_id and digest. Raises PreflightError NOT_FOUND when none is stored,
    UntrustedVerdict when `verify_key` did not sign it."""
    if bool(job_id) == bool(digest):
        raise ValueError("give exactly one of job_id and digest")
    req = (preflight_pb2.GetVerdictRequest(job_id=job_id) if job_id
           else preflight_pb2.GetVerdictRequest(request_digest=digest))
    remote = Remote(server, token, tls, tls_ca, tls_cert, tls_key, verify_key)
    with remote.channel() as channel:
        try:
            resp = preflight_pb2_grpc.PreflightStub(channel).GetVerdict(
                req, timeout=timeout, metadata=remote.metadata())
        except grpc.RpcError as e:
            raise _rpc_error(e) from None
    remote.verify(resp.report, resp.report_signature, resp.signing_key_id)
    return _report(resp.report, resp.request_digest, True, "")
