#!/usr/bin/env bash
# Prepares .gpu-bundle/: the Debian bookworm packages Preflight builds against
# (gRPC, protobuf, Abseil, prometheus-cpp, GoogleTest, SQLite, libseccomp, ...),
# for a GPU machine that has a compiler, CMake, ninja and torch but reaches no
# package index. tools/gpu-check.sh unpacks them under /tmp/preflight-deps
# there (never into /) when the machine lacks gRPC, and builds against them.
# Run it here, on Debian bookworm with apt; keep .gpu-bundle/ out of git
# (`echo /.gpu-bundle/ >> .git/info/exclude`) and carry it to the GPU machine.
# Usage: tools/gpu/bundle.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=.gpu-bundle/debs
# What the build needs beyond a compiler, CMake, ninja and Python+torch.
WANT=(libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
      prometheus-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev libsqlite3-dev libssl-dev
      libseccomp-dev nlohmann-json3-dev pkgconf)
# The C library, the compiler runtime and what comes with them: every machine
# that can run a compiler has its own, and replacing them would break it.
BASE='^(libc6|libc6-dev|libc-dev-bin|libcrypt1|libcrypt-dev|gcc-[0-9]+-base|libgcc-s1|libstdc\+\+6|linux-libc-dev|libnsl2|libnsl-dev|libtirpc.*|rpcsvc-proto|zlib1g)$'
mapfile -t pkgs < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances --no-pre-depends "${WANT[@]}" 2>/dev/null |
  grep -v '^[ <]' | sort -u | grep -Ev "$BASE")
rm -rf "$OUT" && mkdir -p "$OUT"
(cd "$OUT" && apt-get download -q "${pkgs[@]}" >/dev/null)
echo "bundle: ${#pkgs[@]} packages, $(du -sh "$OUT" | cut -f1) in $OUT"
