#!/usr/bin/env bash
# Quickstart: install, build, and run a real check end to end on the bundled
# example (the seeds' reference MLP 784-256-10 on one batch of 32).
# Usage: tools/quickstart.sh [extra preflight check flags, e.g. --json]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/build.sh
mkdir -p build/examples
python3 tools/zoo/make_zoo.py build/examples --only mlp 2>/dev/null
echo
echo "$ preflight check --model build/examples/mlp.model.pt --batch build/examples/mlp.batch.pt $*"
exec build/client/preflight check --model build/examples/mlp.model.pt \
  --batch build/examples/mlp.batch.pt "$@"
