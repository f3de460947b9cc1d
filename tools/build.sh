#!/usr/bin/env bash
# Configures and builds Preflight into build/ (ccache-accelerated).
# Usage: tools/build.sh [extra cmake args]
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${PREFLIGHT_JOBS:-$(nproc)}"
# Let ccache hit across checkouts in different directories (CI clones anew).
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=true
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
fi
cmake --build build -j "$JOBS"
