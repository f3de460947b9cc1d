#!/usr/bin/env bash
# Builds the Preflight image without a registry, runs it, and checks it:
# a real check from the host over gRPC, the health service, a non-root
# process; prints the image size and start time.
#   tools/image.sh            build (if needed) + test
# Needs root; installs buildah, podman, debootstrap and runc from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=localhost/preflight:$(tools/version.sh)  # the tag k8s/base names
BASE=localhost/bookworm-base
STORAGE=(--storage-driver vfs)
for p in buildah podman debootstrap runc; do
  command -v "$p" >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends buildah podman debootstrap runc >/dev/null; break; }
done
if ! podman "${STORAGE[@]}" image exists "$BASE"; then
  ROOTFS=$(mktemp -d /tmp/preflight-rootfs-XXXXXX)
  # mktemp makes the directory 0700, and it becomes the image's "/": the
  # non-root server could not reach /opt/preflight/bin (exec: permission denied).
  chmod 755 "$ROOTFS"
  debootstrap --variant=minbase bookworm "$ROOTFS" http://deb.debian.org/debian >/dev/null
  tar -C "$ROOTFS" -c . | podman "${STORAGE[@]}" import - "$BASE" >/dev/null
  rm -rf "$ROOTFS"
fi
if [ "${REBUILD:-0}" = 1 ] || ! podman "${STORAGE[@]}" image exists "$IMAGE"; then
  start=$(date +%s)
  CA_ARGS=()
  if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    CA_ARGS=(--volume "$PIP_CERT:/etc/ssl/certs/build-host-ca.crt:ro"
             --build-arg PIP_CERT=/etc/ssl/certs/build-host-ca.crt)
  fi
  buildah "${STORAGE[@]}" bud --isolation chroot --build-arg BASE_IMAGE="$BASE" \
    "${CA_ARGS[@]}" -t "$IMAGE" .
  echo "image: built in $(( $(date +%s) - start )) s"
fi
echo "image: size $(podman "${STORAGE[@]}" image inspect "$IMAGE" --format '{{.Size}}' | \
  awk '{printf "%.2f GiB", $1 / 2^30}')"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
NAME=preflight-image-test-$$
t0=$(date +%s.%N)
podman "${STORAGE[@]}" run -d --name "$NAME" --runtime runc \
  --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
  -p "127.0.0.1:$PORT:50051" "$IMAGE" >/dev/null
trap 'podman "${STORAGE[@]}" rm -f "$NAME" >/dev/null 2>&1 || true' EXIT
# Up to 60 s; a server that exits (a missing library, a bad flag) fails at once
# with its log, rather than after the wait with a misleading "ready" line.
ready=0
for _ in $(seq 300); do
  if podman "${STORAGE[@]}" logs "$NAME" 2>/dev/null | grep -q "listening on port"; then
    ready=1; break
  fi
  [ "$(podman "${STORAGE[@]}" inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null)" = true ] || break
  sleep 0.2
done
if [ "$ready" != 1 ]; then
  echo "FAIL: the server in the image did not start listening; its log:"
  podman "${STORAGE[@]}" logs "$NAME" 2>&1 | tail -20
  exit 1
fi
echo "image: server ready in $(python3 -c "import time; print(round(time.time() - $t0, 2))") s"
# The zygote's start-up probe entered the job sandbox inside the container.
if podman "${STORAGE[@]}" logs "$NAME" 2>&1 | grep -q "job sandbox: Landlock ABI"; then
  echo "ok   $(podman "${STORAGE[@]}" logs "$NAME" 2>&1 | grep -o "job sandbox: .*")"
else
  echo "FAIL: no Landlock for jobs in the container:"
  podman "${STORAGE[@]}" logs "$NAME" 2>&1 | tail -5
  exit 1
fi
uid=$(podman "${STORAGE[@]}" exec "$NAME" id -u)
[ "$uid" != 0 ] || { echo "FAIL: the server runs as root"; exit 1; }
echo "ok   server process runs as uid $uid"
mkdir -p build/examples
python3 tools/zoo/make_zoo.py build/examples --only mlp hostile_read_file hostile_segfault \
  hostile_allocation 2>/dev/null
build/client/preflight-thin check --server "127.0.0.1:$PORT" --model build/examples/mlp.model.pt \
  --batch build/examples/mlp.batch.pt --job-id image-test | grep -E "Preflight|sandbox"
build/client/preflight-thin verdict --server "127.0.0.1:$PORT" --job-id image-test
# The sandbox inside the container (the runtime's own seccomp profile and
# user namespace must leave Landlock and our filter working).
for spec in hostile_read_file:SANDBOX_VIOLATION hostile_segfault:WORKER_CRASHED \
            hostile_allocation:WORKER_OOM; do
  name=${spec%%:*} code=${spec##*:}
  # An ERROR verdict exits 3: keep pipefail from reading that as a failure.
  out=$(build/client/preflight-thin check --server "127.0.0.1:$PORT" --json \
      --model "build/examples/$name.model.pt" --batch "build/examples/$name.batch.pt" || true)
  if echo "$out" | python3 -c "import json, sys; r = json.load(sys.stdin)['report']; \
sys.exit(0 if '$code' in [f['code'] for f in r['findings']] \
and ('$code' == 'WORKER_CRASHED' or 'landlock v' in r['environment'].get('sandbox', '')) \
else 1)"; then
    echo "ok   hostile $name in the image: $code"
  else
    echo "FAIL: hostile $name in the image did not give $code (under Landlock)"
    exit 1
  fi
done
# grpc.health.v1.Health/Check with an empty request; SERVING encodes as 08 01.
python3 - "$PORT" <<'PY'
import sys
import grpc
with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as ch:
    reply = ch.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=10)
assert reply == b"\x08\x01", reply
print("ok   health service: SERVING")
PY
if podman "${STORAGE[@]}" exec "$NAME" python3 /opt/preflight/gates/k8s/preflight_gate.py --help \
    | grep -q "admission"; then
  echo "ok   the admission gate runs in the image"
else
  echo "FAIL: the admission gate does not start in the image"
  exit 1
fi
echo "image: all checks passed"
