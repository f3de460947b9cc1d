#!/usr/bin/env bash
# Quickstart: install, build, then run the service end to end on its embedded
# defaults: start preflight-server (loopback, free port, temporary store),
# check the bundled example (the seeds' reference MLP 784-256-10 on one batch
# of 32) through it with the CLI, read the stored verdict back as a
# scheduler would, and stop the server.
# Usage: tools/quickstart.sh [extra preflight check flags, e.g. --json]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/build.sh
mkdir -p build/examples
python3 tools/zoo/make_zoo.py build/examples --only mlp 2>/dev/null
STORE=$(mktemp -d /tmp/preflight-quickstart-XXXXXX)
build/service/preflight-server --address 127.0.0.1:0 --metrics_address 127.0.0.1:0 --store "$STORE" >"$STORE/server.out" 2>&1 &
SERVER_PID=$!
trap 'kill -TERM $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null; rm -rf "$STORE"' EXIT
for _ in $(seq 100); do
  grep -q "listening on port" "$STORE/server.out" 2>/dev/null && break
  sleep 0.1
done
PORT=$(awk '/listening on port/ {print $NF}' "$STORE/server.out")
[ -n "$PORT" ] || { cat "$STORE/server.out"; exit 1; }
echo
echo "$ preflight check --server 127.0.0.1:$PORT --job-id quickstart-1 --model build/examples/mlp.model.pt --batch build/examples/mlp.batch.pt $*"
build/client/preflight check --server "127.0.0.1:$PORT" --job-id quickstart-1 \
  --model build/examples/mlp.model.pt --batch build/examples/mlp.batch.pt "$@"
echo
echo "$ preflight verdict --server 127.0.0.1:$PORT --job-id quickstart-1"
build/client/preflight verdict --server "127.0.0.1:$PORT" --job-id quickstart-1
