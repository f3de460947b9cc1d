#!/usr/bin/env python3
"""End-to-end (issue 15): per-tenant blob quotas and blob retention through a
real server (127.0.0.1:0, bearer tokens, a directory store).

  - tenant-a, with a 1 MiB quota, uploads 600 KiB: OK; a second, different
    600 KiB upload is RESOURCE_EXHAUSTED naming the field, the tenant, its
    usage and its quota; its first blob is still stored and re-uploading it is
    OK and charges nothing; the refused bytes are not left in the store.
  - an inline model that would push tenant-a over its quota in a Check is
    RESOURCE_EXHAUSTED naming `model` before anything runs.
  - tenant-b (no quota of its own: --tenant-quotas tenant-b=0) can still
    upload the very bytes tenant-a was refused, and more.
  - a second server on a fresh store with a retention of ~1 s and a 1 s sweep:
    an upload nobody uses again is deleted by the sweep (the file is gone,
    preflight_blobs_collected_total counts it, and a Check naming its sha256
    is NOT_FOUND), and each sweep logs a line.

Needs no zoo: quotas and retention act before a check would run.

Usage: quota_test.py BUILD_DIR
"""
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

from e2e_common import Results, Server, wait_for

BUILD = os.path.abspath(sys.argv[1])
sys.path.insert(0, os.path.join(BUILD, "python"))
import grpc  # noqa: E402
from preflight.v1 import preflight_pb2, preflight_pb2_grpc  # noqa: E402

R = Results()
expect = R.expect
TOKENS = {"a": "tenant-a-token-0123456789abcdef", "b": "tenant-b-token-0123456789abcdef"}
KIB = 1024


def blob(fill, size):
    # Starts like a zip archive (the server's check of an artifact's head),
    # distinct per `fill`.
    return b"PK\x03\x04" + bytes([fill]) * (size - 4)


def upload(stub, who, data):
    def chunks():
        for off in range(0, len(data), 1 << 20):
            req = preflight_pb2.UploadRequest(chunk=data[off:off + (1 << 20)])
            if off == 0:
                req.expected_size = len(data)
            yield req
    try:
        return stub.Upload(chunks(), timeout=60,
                           metadata=[("authorization", f"Bearer {TOKENS[who]}")]), None
    except grpc.RpcError as e:
        return None, e


def check(stub, who, model, batch):
    req = preflight_pb2.CheckRequest()
    for art, value in ((req.model, model), (req.batch, batch)):
        if isinstance(value, bytes):
            art.inline = value
        else:
            art.sha256 = value
    try:
        return stub.Check(req, timeout=120,
                          metadata=[("authorization", f"Bearer {TOKENS[who]}")]), None
    except grpc.RpcError as e:
        return None, e


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        m = re.search(rf"^{name} (\S+)$", r.read().decode(), re.M)
    return float(m.group(1)) if m else None


def main():
    with tempfile.TemporaryDirectory(prefix="preflight-quota-") as d:
        with open(f"{d}/tokens", "w") as f:
            f.write(f"{TOKENS['a']} tenant-a tenant\n{TOKENS['b']} tenant-b tenant\n")
        os.chmod(f"{d}/tokens", 0o600)

        # 1. Quotas.
        with Server(BUILD, f"{d}/store", "--tokens", f"{d}/tokens", "--tenant-quota-mb", "1",
                    "--tenant-quotas", "tenant-b=0") as server:
            stub = preflight_pb2_grpc.PreflightStub(grpc.insecure_channel(server.addr))
            first, second = blob(1, 600 * KIB), blob(2, 600 * KIB)
            r, err = upload(stub, "a", first)
            expect("tenant-a: a first 600 KiB upload under its 1 MiB quota is OK", r is not None,
                   err)
            first_sha = r.sha256 if r else ""
            r, err = upload(stub, "a", second)
            code = err.code() if err else None
            msg = err.details() if err else ""
            expect("tenant-a: a second 600 KiB upload is RESOURCE_EXHAUSTED",
                   code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, msg))
            expect("the refusal names the field, the tenant, its usage and its quota",
                   "upload" in msg and "tenant-a" in msg and f"{600 * KIB} of {1 << 20}" in msg,
                   msg)
            stored = set(os.listdir(f"{d}/store/blobs"))
            expect("tenant-a's first blob is still stored", first_sha in stored, stored)
            expect("the refused upload left no blob behind", len(stored) == 1, stored)
            r, err = upload(stub, "a", first)
            expect("tenant-a: re-uploading a blob it holds is OK (never charged twice)",
                   r is not None and r.already_present, err)
            _, err = check(stub, "a", blob(3, 600 * KIB), first_sha)
            code = err.code() if err else None
            expect("tenant-a: a Check with a 600 KiB inline model is RESOURCE_EXHAUSTED "
                   "naming `model`",
                   code == grpc.StatusCode.RESOURCE_EXHAUSTED and "model" in err.details()
                   and "tenant-a" in err.details(), (code, err and err.details()))
            r, err = upload(stub, "b", second)
            expect("tenant-b can still upload the bytes tenant-a was refused", r is not None, err)
            r, err = upload(stub, "b", blob(4, 2 << 20))
            expect("tenant-b (override 0: unlimited) uploads 2 MiB more", r is not None, err)
            r, err = upload(stub, "b", first)
            expect("tenant-b may use tenant-a's blob too (shared, charged to both)",
                   r is not None and r.already_present, err)

        # 2. Retention: ~0.9 s, swept every second.
        log = f"{d}/server2.log"
        saved = os.dup(2)  # The server inherits fd 2: its log goes to `log`.
        with open(log, "w") as err_file:
            os.dup2(err_file.fileno(), 2)
            try:
                server = Server(BUILD, f"{d}/store2", "--tokens", f"{d}/tokens",
                                "--blob-retention-days", "0.00001", "--blob-sweep-interval", "1",
                                metrics=True)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        with server:
            stub = preflight_pb2_grpc.PreflightStub(grpc.insecure_channel(server.addr))
            r, err = upload(stub, "b", blob(5, 10 * KIB))
            expect("retention server: an upload is OK", r is not None, err)
            sha = r.sha256 if r else "x"
            path = f"{d}/store2/blobs/{sha}"
            gone = wait_for(lambda: not os.path.exists(path), 30)
            expect("the sweep deletes a blob nobody used within the retention", gone)
            collected = wait_for(
                lambda: (metric(server.metrics_port, "preflight_blobs_collected_total") or 0) >= 1,
                10)
            expect("preflight_blobs_collected_total counts it", collected)
            _, err = check(stub, "b", sha, sha)
            code = err.code() if err else None
            expect("a Check naming the swept blob's sha256 is NOT_FOUND",
                   code == grpc.StatusCode.NOT_FOUND, (code, err and err.details()))
        with open(log) as f:
            text = f.read()
        expect("each sweep logs a line, one of them the removal",
               "blob sweep: removed 1 blobs (10240 bytes)" in text, text[-1500:])
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
