#!/usr/bin/env python3
"""End-to-end: the CLI's usage paths and exit codes (no model needed)."""
import os
import sys
import tempfile

from e2e_common import Results, run_cli

BIN = sys.argv[1]


def run(*args):
    return run_cli(BIN, *args, timeout=120)


def main():
    results = Results()
    expect = results.expect

    p = run()
    expect("no command exits 2 with usage", p.returncode == 2 and "Usage" in p.stdout, p)
    p = run("check", "--help")
    expect("check --help exits 0", p.returncode == 0 and "Exit codes" in p.stdout, p)
    p = run("check", "--model", "/nonexistent/m.pt", "--batch", "/nonexistent/b.pt")
    expect("missing file exits 2 naming it",
           p.returncode == 2 and "cannot open '/nonexistent/m.pt'" in p.stderr, p)
    p = run("check", "--model", "m", "--batch", "b", "--lr", "-3")
    expect("bad flag exits 2 naming it", p.returncode == 2 and "--lr" in p.stderr, p)
    p = run("frobnicate")
    expect("unknown command exits 2", p.returncode == 2 and "unknown command" in p.stderr, p)
    p = run("version")
    expect("version prints LibTorch", p.returncode == 0 and "LibTorch" in p.stdout, p)
    with tempfile.NamedTemporaryFile(suffix=".pt") as empty:
        p = run("check", "--model", empty.name, "--batch", empty.name, "--json")
        expect("empty model file is ERROR/ARTIFACT_INVALID, exit 3",
               p.returncode == 3 and '"ARTIFACT_INVALID"' in p.stdout, p)
    thin = os.path.join(os.path.dirname(BIN), "preflight-thin")
    # Built with every client (client/CMakeLists.txt): missing is a failure, not a skip.
    if expect("preflight-thin is built beside preflight", os.path.exists(thin), thin):
        p = run_cli(thin, "version", timeout=60)
        expect("preflight-thin runs without LibTorch",
               p.returncode == 0 and "thin client" in p.stdout, p)
        p = run_cli(thin, "check", "--model", "m", "--batch", "b", timeout=60)
        expect("preflight-thin local check is a usage error pointing at --server",
               p.returncode == 2 and "--server" in p.stderr, p)
    return results.finish()


if __name__ == "__main__":
    sys.exit(main())
