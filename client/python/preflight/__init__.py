"""Preflight: check that a model can fit one batch before a job gets GPUs.

    report = preflight.check(model, (x, y), server="host:50051", job_id="run-42")
    preflight.verdict(job_id="run-42", server="host:50051")
"""
from preflight._client import (Finding, PreflightError, Report, UntrustedVerdict, check,
                               verdict)

__all__ = ["check", "verdict", "Report", "Finding", "PreflightError", "UntrustedVerdict"]
