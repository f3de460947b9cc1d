"""Preflight: check that a model can fit one batch before a job gets GPUs.

    report = preflight.check(model, (x, y), server="host:50051", job_id="run-42")
    preflight.verdict(job_id="run-42", server="host:50051")

`server` may list several servers ("h1:50051,h2:50051") or name a DNS name
with several addresses ("dns:///preflight-headless:50051"): calls are spread
round-robin and a server that does not answer is skipped.
"""
from preflight._client import Finding, PreflightError, Report, check, verdict
from preflight._target import grpc_target, parse as parse_server

__all__ = ["check", "verdict", "grpc_target", "parse_server", "Report", "Finding",
           "PreflightError"]
