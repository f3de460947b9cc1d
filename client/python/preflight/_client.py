"""Preflight's Python client: check a live model before submitting a job.

    import preflight
    report = preflight.check(model, (inputs, targets), loss="cross_entropy",
                             server="preflight:50051", job_id="train/run-42")
    if report.verdict == "FAIL":
        raise SystemExit(str(report))

The model is scripted (or, when scripting fails, traced with the batch's
inputs; `report.conversion` says which), both model and batch are
serialized in memory and streamed through Upload, and the check runs on the
server. Errors are PreflightError with the gRPC status code and the server's
message (which names the field), never a raw gRPC stack trace.
"""
import dataclasses
import io
import os
import warnings
from typing import Any, List, Optional, Sequence, Union

import grpc

from preflight.v1 import preflight_pb2, preflight_pb2_grpc, report_pb2

_CHUNK = 1 << 20


class PreflightError(Exception):
    """A request the service could not serve (not a FAIL verdict)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code          # gRPC status code name, e.g. "INVALID_ARGUMENT".
        self.message = message    # The server's message; names the field at fault.


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
    conversion: str = ""            # "scripted", "traced" or "file" (how the model was sent)
    proto: Any = None               # The full preflight.v1.Report message.

    @property
    def ok(self) -> bool:
        """True for PASS and WARN: the job may be submitted."""
        return self.verdict in ("PASS", "WARN")

    def __str__(self) -> str:
        lines = [f"Preflight {self.verdict}"
                 + (f" (cached verdict {self.request_digest[:12]})" if self.cached else "")]
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


def _serialize_model(model, inputs) -> (bytes, str):
    import torch

    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            return f.read(), "file"
    if isinstance(model, torch.jit.ScriptModule):
        scripted, how = model, "scripted"
    else:
        failure = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices.
            try:
                scripted, how = torch.jit.script(model), "scripted"
            except Exception as e:  # noqa: BLE001  (any scripting failure -> trace)
                failure = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                example = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
                scripted, how = torch.jit.trace(model, example), "traced"
        if failure is not None:
            warnings.warn(f"preflight: torch.jit.script failed ({failure}); traced with the "
                          "batch's inputs instead", stacklevel=3)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(scripted, buf)
    return buf.getvalue(), how


def _upload(stub, data: bytes, timeout: float) -> str:
    def chunks():
        for off in range(0, len(data), _CHUNK):
            req = preflight_pb2.UploadRequest(chunk=data[off:off + _CHUNK])
            if off == 0:
                req.expected_size = len(data)
            yield req

    return stub.Upload(chunks(), timeout=timeout).sha256


def check(model, batch, *, server: str, loss: Optional[str] = None, optimizer: str = "adam",
          lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.0,
          steps: int = 500, seed: int = 0, device: str = "auto", timeout: float = 300.0,
          job_id: str = "") -> Report:
    """Checks that `model` can fit `batch` and returns the verdict.

    model: an nn.Module (scripted, or traced when scripting fails), a
      ScriptModule, or the path of a TorchScript file.
    batch: (inputs, targets) or {"inputs": ..., "targets": ...}; inputs may be
      a tuple of tensors for multi-input models.
    """
    import torch

    inputs, targets = _split_batch(batch)
    model_bytes, conversion = _serialize_model(model, inputs)
    buf = io.BytesIO()
    torch.save({"inputs": inputs, "targets": targets}, buf)
    config = report_pb2.CheckConfig(optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                                    momentum=momentum, max_steps=steps, seed=seed,
                                    device=device, timeout_seconds=timeout)
    if loss:
        config.loss = loss
    with grpc.insecure_channel(server) as channel:
        stub = preflight_pb2_grpc.PreflightStub(channel)
        try:
            req = preflight_pb2.CheckRequest(config=config, job_id=job_id)
            req.model.sha256 = _upload(stub, model_bytes, 600)
            req.batch.sha256 = _upload(stub, buf.getvalue(), 600)
            resp = stub.Check(req, timeout=timeout + 300)
        except grpc.RpcError as e:
            raise _rpc_error(e) from None
    return _report(resp.report, resp.request_digest, resp.cached, conversion)


def verdict(*, server: str, job_id: str = "", digest: str = "", timeout: float = 10.0) -> Report:
    """The stored verdict of an earlier check (never runs one). Exactly one of
    job_id and digest. Raises PreflightError NOT_FOUND when none is stored."""
    if bool(job_id) == bool(digest):
        raise ValueError("give exactly one of job_id and digest")
    req = (preflight_pb2.GetVerdictRequest(job_id=job_id) if job_id
           else preflight_pb2.GetVerdictRequest(request_digest=digest))
    with grpc.insecure_channel(server) as channel:
        try:
            resp = preflight_pb2_grpc.PreflightStub(channel).GetVerdict(req, timeout=timeout)
        except grpc.RpcError as e:
            raise _rpc_error(e) from None
    return _report(resp.report, resp.request_digest, True, "")
