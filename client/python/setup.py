"""Generates the gRPC stubs (preflight/v1/*_pb2*.py) from the repository's
proto/ when the package is built, so `pip install ./client/python` works from
a source checkout; the stubs are never committed.

The protos are found at $PREFLIGHT_PROTO_DIR, else ../../proto next to this
file (pip builds a local directory in place). A tree that already holds the
stubs (CMake's build/python) is packaged as it is. The runtime requirements
follow the grpcio-tools that generated the stubs: generated code refuses a
grpcio older than its generator, and protobuf outside the generator's range.
"""
import importlib.metadata
import os
import re

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = ("report.proto", "preflight.proto")
STUBS = ("report_pb2.py", "preflight_pb2.py", "preflight_pb2_grpc.py")


def prebuilt():
    return all(os.path.exists(os.path.join(HERE, "preflight", "v1", s)) for s in STUBS)


def proto_dir():
    d = os.environ.get("PREFLIGHT_PROTO_DIR") or os.path.join(HERE, "..", "..", "proto")
    d = os.path.abspath(d)
    missing = [p for p in PROTOS if not os.path.exists(os.path.join(d, "preflight", "v1", p))]
    if missing:
        raise SystemExit(f"preflight-client: cannot generate the gRPC stubs: {d}/preflight/v1/ "
                         f"lacks {', '.join(missing)}; build from the repository's "
                         "client/python, or set PREFLIGHT_PROTO_DIR to its proto/ directory")
    return d


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        if prebuilt():
            return
        from grpc_tools import protoc  # The build requirement (pyproject.toml).

        src = proto_dir()
        out = os.path.abspath(self.build_lib)
        os.makedirs(os.path.join(out, "preflight", "v1"), exist_ok=True)
        include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        args = ["grpc_tools.protoc", f"-I{src}", f"-I{include}", f"--python_out={out}",
                f"--grpc_python_out={out}"]
        args += [os.path.join(src, "preflight", "v1", p) for p in PROTOS]
        if protoc.main(args) != 0:
            raise SystemExit(f"preflight-client: grpc_tools.protoc failed on {src}")
        open(os.path.join(out, "preflight", "v1", "__init__.py"), "a").close()


def runtime_requirements():
    """grpcio at least the generator's version; protobuf in the generator's range."""
    try:
        tools = importlib.metadata.version("grpcio-tools")
        needs = importlib.metadata.requires("grpcio-tools") or []
    except importlib.metadata.PackageNotFoundError:  # Prebuilt stubs, no generator here.
        return ["grpcio>=1.60", "protobuf>=5"]
    proto = next((r for r in needs if re.match(r"protobuf\b", r)), "protobuf>=5")
    return [f"grpcio>={tools}", proto.split(";")[0].strip()]


setup(cmdclass={"build_py": BuildWithStubs}, install_requires=runtime_requirements())
