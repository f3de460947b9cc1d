#!/usr/bin/env python3
"""`pip install ./client/python` from a source checkout works: the package
builds its own gRPC stubs from proto/ (client/python/setup.py), with no CMake
build tree anywhere on the path.

client/python and proto/ are copied into a scratch directory with the
repository's layout (so the build cannot write into this checkout, and two
runs cannot meet), installed into a fresh venv that sees this interpreter's
site-packages, and imported from elsewhere. Offline: no build isolation
(setuptools and grpcio-tools are the pinned ones, tools/requirements.txt) and
no dependency resolution (grpcio and protobuf are already installed). The
installed metadata must require grpcio and protobuf as the stubs' generator
does, and its version must be the project's (CMakeLists.txt).

Usage: pip_install_check.py   (exit 0 when every check passed)
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from e2e_common import Results  # noqa: E402

PROBE = """
import json, os, sys
import preflight
from preflight.v1 import preflight_pb2, preflight_pb2_grpc, report_pb2
from importlib import metadata
print(json.dumps({
    "file": preflight.__file__,
    "stub": hasattr(preflight_pb2_grpc, "PreflightStub"),
    "check": callable(preflight.check),
    "code": report_pb2.FindingCode.Name(report_pb2.ARTIFACT_UNSUPPORTED),
    "requires": metadata.requires("preflight-client"),
    "version": metadata.version("preflight-client"),
}))
"""


def main():
    import json

    R = Results()
    with tempfile.TemporaryDirectory(prefix="preflight-pip-") as work:
        src = os.path.join(work, "src")
        shutil.copytree(os.path.join(ROOT, "client", "python"),
                        os.path.join(src, "client", "python"),
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        shutil.copytree(os.path.join(ROOT, "proto"), os.path.join(src, "proto"))
        R.expect("the source tree holds no generated stubs",
                 not os.path.exists(os.path.join(src, "client", "python", "preflight", "v1")))
        venv = os.path.join(work, "venv")
        # Without the venv's own (older) pip/setuptools: this interpreter's pinned ones.
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                        venv], check=True)
        py = os.path.join(venv, "bin", "python")
        p = subprocess.run([py, "-m", "pip", "install", "-q", "--no-build-isolation",
                            "--no-deps", "--no-index", os.path.join(src, "client", "python")],
                           capture_output=True, text=True, timeout=600)
        R.expect("pip install ./client/python", p.returncode == 0, p.stdout + p.stderr)
        # From elsewhere, and with no PYTHONPATH: only the installed package can answer.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        p = subprocess.run([py, "-c", PROBE], capture_output=True, text=True, cwd=work,
                           env=env, timeout=120)
        info = json.loads(p.stdout) if p.returncode == 0 else {}
        R.expect("import preflight from the venv", str(info.get("file", "")).startswith(venv),
                 p.stderr[-1500:] or info)
        R.expect("the generated stubs are installed", info.get("stub") is True, info)
        R.expect("preflight.check is there", info.get("check") is True, info)
        R.expect("the stubs are this proto's (ARTIFACT_UNSUPPORTED)",
                 info.get("code") == "ARTIFACT_UNSUPPORTED", info)
        with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
            project = re.search(r"^project\(preflight VERSION ([0-9.]+)", f.read(), re.M).group(1)
        R.expect(f"the package's version is the project's ({project})",
                 info.get("version") == project, info.get("version"))
        requires = info.get("requires") or []
        R.expect("requires grpcio and protobuf",
                 any(r.startswith("grpcio>=") for r in requires)
                 and any(r.startswith("protobuf") for r in requires), requires)
        p = subprocess.run([os.path.join(venv, "bin", "preflight-py"), "check", "--help"],
                           capture_output=True, text=True, cwd=work, env=env, timeout=120)
        R.expect("the preflight-py console script runs", p.returncode == 0
                 and "--server" in p.stdout, p.stderr[-800:])
        R.expect("nothing generated into the copied source's package",
                 not os.path.exists(os.path.join(src, "client", "python", "preflight", "v1")))
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
