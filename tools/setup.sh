#!/usr/bin/env bash
# Installs everything Preflight needs on Debian bookworm: Debian packages and
# the pinned torch wheel. Idempotent: a second run only checks and exits.
# Usage: tools/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev libsqlite3-dev libssl-dev
  libseccomp-dev nlohmann-json3-dev prometheus slurm-wlm munge clang-format
  postgresql-15 libpq-dev
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The fleet store's tests start their own PostgreSQL (tests/store/pg_cluster.sh),
# which refuses to run as root: as root, they run it as this unprivileged user.
if [ "$(id -u)" -eq 0 ] && ! id -u preflight-test >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin preflight-test
fi

PYTHON="${PREFLIGHT_PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null; then
  echo "setup: $PYTHON not found; installing python3 and pip from Debian"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-pip >/dev/null
fi
if ! "$PYTHON" - <<'PY' 2>/dev/null
import sys
from importlib import metadata
want = {l.split("==")[0]: l.split("==")[1].strip() for l in open("tools/requirements.txt")
        if "==" in l and not l.startswith("#")}
def have(name):
    try:
        return metadata.version(name).split("+")[0]
    except metadata.PackageNotFoundError:
        return None
sys.exit(0 if all(have(k) == v for k, v in want.items()) else 1)
PY
then
  echo "setup: installing pinned Python packages (tools/requirements.txt)"
  # --break-system-packages only matters for Debian's own python3 (PEP 668).
  "$PYTHON" -m pip install -q -r tools/requirements.txt 2>/dev/null ||
    "$PYTHON" -m pip install -q --break-system-packages -r tools/requirements.txt
fi
echo "setup: ok (torch $("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null))"
