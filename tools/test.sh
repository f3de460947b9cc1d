#!/usr/bin/env bash
# Runs the whole test suite: unit + in-process tests and the end-to-end tier
# (the whole model zoo through the real CLI).
# Usage: tools/test.sh [-L unit|-L e2e]   (ctest label filter; default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/build.sh
cd build
ctest --output-on-failure -j "${PREFLIGHT_JOBS:-$(nproc)}" "$@"
