#!/usr/bin/env bash
# Installs everything Preflight needs on Debian bookworm: Debian packages and
# the pinned torch wheel. Idempotent: a second run only checks and exits.
#
# Usage: tools/setup.sh [--profile build|test] [--dry-run]
#   build  what compiling the service and clients needs, and nothing that
#          only tests use: the image's build stage (Dockerfile). Slurm and
#          munge are not in it (munge's post-install script fails under
#          buildah's chroot isolation).
#   test   (default) build + what the test suite drives for real: Slurm and
#          munge, Prometheus (promtool), clang (fuzz targets), clang-format,
#          openssl (certificates made in the tests). CI and the quickstart.
#   --dry-run  print the profile's Debian packages (one per line) and exit;
#          installs nothing (tests/e2e/dockerfile_test.py reads it).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=test
dry_run=no
while (($#)); do
  case "$1" in
    --profile) profile=${2:-}; shift 2 ;;
    --profile=*) profile=${1#--profile=}; shift ;;
    --dry-run) dry_run=yes; shift ;;
    *) echo "setup: unknown argument '$1' (usage: tools/setup.sh [--profile build|test] [--dry-run])" >&2
       exit 2 ;;
  esac
done

BUILD_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev libsqlite3-dev libssl-dev
  libseccomp-dev nlohmann-json3-dev libpq-dev
)
TEST_PACKAGES=(prometheus slurm-wlm munge clang clang-format openssl postgresql-15)

case "$profile" in
  build) APT_PACKAGES=("${BUILD_PACKAGES[@]}") ;;
  test) APT_PACKAGES=("${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
  *) echo "setup: unknown profile '$profile' (build or test)" >&2; exit 2 ;;
esac
if [ "$dry_run" = yes ]; then
  printf '%s\n' "${APT_PACKAGES[@]}"
  exit 0
fi

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
echo "setup: ok, profile $profile (torch $("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null))"
