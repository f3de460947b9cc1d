#!/usr/bin/env bash
# The GPU path, proven on a real GPU (issue 17): one bounded script that sets
# up, builds, generates the zoo and runs it on CPU and CUDA, locally and
# through a preflight-server whose zygote never initialises CUDA, and writes a
# short results file (markdown + JSON beside it). The measuring is done by
# tools/gpu/gpu_check.py; this wrapper finds the GPU, runs setup and build
# under timeouts and hands over what it saw.
#
# Without a visible GPU (no /dev/nvidiactl, or nvidia-smi fails) or with --dry
# it runs the CPU side on a small subset and reports every CUDA case SKIPPED
# with the reason, never passed; the results file says it is a dry run.
#
# Usage: tools/gpu-check.sh [--dry] [--out FILE] [--build-dir DIR] [--no-setup]
#                           [--no-build] [--budget SECONDS] [--probe]
#   --out FILE      results markdown (default BENCHMARKS-gpu.md, or
#                   BUILD/gpu-check/BENCHMARKS-gpu.dry.md in dry mode); FILE's
#                   .json sibling holds the same results as data, .log the
#                   tails of the probe, setup, build and server logs. On a lent
#                   GPU machine: --out "$OUT/BENCHMARKS-gpu.md" (they come back)
#   --build-dir     build tree (default build/, built by tools/build.sh)
#   --no-setup      skip tools/setup.sh;  --no-build: skip the build step
#   --budget S      wall-clock budget of the whole script (default 470 s)
#   --probe         only print what this machine has for a build (OS, compiler,
#                   pkg-config modules, torch, GPU) and exit: ~20 s
# On a lent GPU machine (no package index there): here, `tools/gpu/bundle.sh`
# and `echo /.gpu-bundle/ >> .git/info/exclude`; then run there, carrying
# .gpu-bundle: tools/gpu-check.sh --out "$OUT/BENCHMARKS-gpu.md" 2>&1
# Exit: 0 when the CPU side met its expectations and every CUDA case either ran
# and agreed or was skipped with a reason (on a GPU machine: only skips by
# design); 1 otherwise; 2 usage.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
START=$SECONDS

DRY=0 OUT="" BUILD="build" SETUP=1 DO_BUILD=1 BUDGET=470 PROBE=0
while (($#)); do
  case "$1" in
    --dry) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --build-dir) BUILD="$2"; shift ;;
    --no-setup) SETUP=0 ;;
    --no-build) DO_BUILD=0 ;;
    --budget) BUDGET="$2"; shift ;;
    --probe) PROBE=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PYTHON="${PREFLIGHT_PYTHON:-python3}"
left() { echo $((BUDGET - (SECONDS - START))); }

# --- Is there a GPU? ---------------------------------------------------------
REASON=""
SMI_OUT=""
if [ ! -e /dev/nvidiactl ]; then
  REASON="no CUDA device: /dev/nvidiactl absent"
elif ! command -v nvidia-smi >/dev/null; then
  REASON="no CUDA device: /dev/nvidiactl present but nvidia-smi not found"
elif ! SMI_OUT="$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
                    --format=csv 2>&1)"; then
  REASON="no CUDA device: nvidia-smi failed: $(echo "$SMI_OUT" | tail -1)"
fi
if ((DRY)) && [ -z "$REASON" ]; then
  REASON="dry run requested (--dry) on a machine with a GPU"
elif ((DRY)); then
  REASON="$REASON (and --dry given)"
fi
[ -n "$REASON" ] && DRY=1

# What this machine has for a build: printed by --probe, kept in the results.
probe() {
  echo "== os";       (grep PRETTY_NAME /etc/os-release 2>/dev/null; uname -r)
  echo "== gpu";      echo "${SMI_OUT:-$REASON}"
  echo "== tools";    for t in g++ c++ cmake ninja ccache pkg-config protoc grpc_cpp_plugin \
                                 dpkg-deb apt-get nvcc; do
                        printf '%-16s %s\n' "$t" "$(command -v $t || echo MISSING)"; done
  g++ --version 2>/dev/null | head -1; cmake --version 2>/dev/null | head -1
  echo "== pkg-config"; for m in grpc++ protobuf libseccomp sqlite3 openssl absl_status; do
                        printf '%-12s %s\n' "$m" "$(pkg-config --modversion $m 2>/dev/null ||
                                                   echo MISSING)"; done
  echo "== cmake packages"; for d in GTest absl prometheus-cpp; do
                        printf '%-16s %s\n' "$d" "$(ls -d /usr/lib/*/cmake/$d* \
                          /usr/lib/cmake/$d* /usr/local/lib/cmake/$d* 2>/dev/null | head -1)"; done
  echo "== python";   timeout 60 "$PYTHON" -c 'import torch, sys; print(sys.executable, torch.__version__,
    "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tail -2
  echo "== bundle";   ls .gpu-bundle/debs 2>/dev/null | wc -l
}
if ((PROBE)); then
  probe
  exit 0
fi

if [ -z "$OUT" ]; then
  if ((DRY)); then OUT="$BUILD/gpu-check/BENCHMARKS-gpu.dry.md"; else OUT="BENCHMARKS-gpu.md"; fi
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
# The logs' tails go beside the results (FILE without .md, plus .log), then
# the scratch directory goes.
keep_logs() {
  local f
  for f in "$WORK/probe.txt" "$WORK/setup.log" "$WORK/build.log" "$WORK/server.log"; do
    [ -f "$f" ] || continue
    echo "===== $(basename "$f") (last 200 lines)"
    tail -200 "$f"
  done >"${OUT%.md}.log" 2>/dev/null
  rm -rf "$WORK"
}
trap keep_logs EXIT
STEPS="$WORK/steps.jsonl"
: >"$STEPS"
mkdir -p "$(dirname "$OUT")"
[ -n "$SMI_OUT" ] && { echo "$SMI_OUT"; timeout 30 nvidia-smi 2>&1 | head -20; } >"$WORK/nvidia-smi.txt"

probe >"$WORK/probe.txt" 2>&1

# Records one wrapper step for the results file.
record() {  # name ok seconds detail
  "$PYTHON" -c 'import json,sys; print(json.dumps(dict(name=sys.argv[1], ok=sys.argv[2]=="1",
    seconds=float(sys.argv[3]), detail=sys.argv[4])))' "$@" >>"$STEPS"
}
# Runs a step under a timeout, its log in $WORK; ok=1 when it exits 0.
step() {  # name timeout cmd...
  local name="$1" limit="$2" t0=$SECONDS rc; shift 2
  echo "gpu-check: $name (at most ${limit} s)" >&2
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  local detail; detail="$(tail -3 "$WORK/$name.log" | tr '\n' ' ' | cut -c1-300)"
  ((rc == 124)) && detail="timed out after ${limit} s; $detail"
  record "$name" "$((rc == 0))" "$((SECONDS - t0))" "exit $rc: $detail"
  ((rc == 0)) || { echo "gpu-check: $name failed (exit $rc):" >&2; tail -20 "$WORK/$name.log" >&2; }
  return $rc
}

echo "gpu-check: mode $( ((DRY)) && echo "dry ($REASON)" || echo gpu), budget ${BUDGET} s" >&2
# Offline machines (a lent GPU box has no package index): fail fast, not after retries.
export PIP_DEFAULT_TIMEOUT=10 PIP_RETRIES=0
printf 'Acquire::Retries "0";\nAcquire::http::Timeout "10";\nAcquire::https::Timeout "10";\n' \
  >"$WORK/apt.conf"
if ((SETUP)); then
  APT_CONFIG="$WORK/apt.conf" step setup 150 tools/setup.sh ||
    echo "gpu-check: setup failed; building with what this machine has" >&2
else
  record setup 1 0 "skipped (--no-setup)"
fi
# A GPU machine without a package index lacks gRPC & co.: build against the
# Debian packages of .gpu-bundle/ (tools/gpu/bundle.sh), unpacked under
# $DEPS, never into /. Their libraries reach the binaries through an old-style
# RPATH (searched for the libraries' own dependencies too, unlike RUNPATH:
# libgrpc++ needs libgrpc), and protoc through LD_LIBRARY_PATH in the build only.
DEPS="${PREFLIGHT_DEPS_PREFIX:-/tmp/preflight-deps}"
CMAKE_EXTRA=()
use_bundle() {
  local lib="$DEPS/usr/lib/x86_64-linux-gnu" deb
  mkdir -p "$DEPS"
  for deb in .gpu-bundle/debs/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$DEPS" || return 1
    else  # A .deb is an ar archive holding data.tar.*.
      "$PYTHON" - "$deb" "$DEPS" <<'PY' || return 1
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
pos = 8
while pos < len(data):
    name, size = data[pos:pos + 16].decode().strip(), int(data[pos + 48:pos + 58])
    if name.startswith("data.tar"):
        tar = tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size]))
        try:  # Packages hold absolute symlinks; they stay under the prefix's tree.
            tar.extractall(sys.argv[2], filter="fully_trusted")
        except TypeError:  # Python without extraction filters.
            tar.extractall(sys.argv[2])
    pos += 60 + size + (size & 1)
PY
    fi
  done
  export PATH="$DEPS/usr/bin:$PATH"
  export PKG_CONFIG_LIBDIR="$lib/pkgconfig:$DEPS/usr/share/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$DEPS"
  CMAKE_EXTRA=(-DCMAKE_PREFIX_PATH="$DEPS/usr" -DCMAKE_LIBRARY_PATH="$lib"
               -DCMAKE_INCLUDE_PATH="$DEPS/usr/include" -DCMAKE_BUILD_RPATH="$lib"
               -DCMAKE_EXE_LINKER_FLAGS=-Wl,--disable-new-dtags)  # RPATH: also for their deps
  BUILD_LD_PATH="$lib"
}
BUILD_LD_PATH=""
if ((DO_BUILD)) && ! pkg-config --exists grpc++ 2>/dev/null; then
  if [ -d .gpu-bundle/debs ]; then
    t0=$SECONDS
    if use_bundle; then
      record "unpack .gpu-bundle" 1 $((SECONDS - t0)) "$(ls .gpu-bundle/debs | wc -l) packages under $DEPS"
    else
      record "unpack .gpu-bundle" 0 $((SECONDS - t0)) "unpacking into $DEPS failed"
    fi
  else
    record "build dependencies" 0 0 "no gRPC (pkg-config grpc++) and no .gpu-bundle/: run tools/gpu/bundle.sh where apt works and carry .gpu-bundle"
  fi
fi

if ((DO_BUILD)); then
  if [ "$BUILD" = build ]; then
    step build "$(( $(left) > 120 ? $(left) - 90 : 30 ))" \
      env ${BUILD_LD_PATH:+LD_LIBRARY_PATH="$BUILD_LD_PATH"} tools/build.sh "${CMAKE_EXTRA[@]}"
  else
    step build "$(( $(left) > 120 ? $(left) - 90 : 30 ))" cmake --build "$BUILD" -j "$(nproc)"
  fi
  BUILD_RC=$?
else
  record build 1 0 "skipped (--no-build)"
  BUILD_RC=0
fi
if ((BUILD_RC != 0)) || [ ! -x "$BUILD/client/preflight" ] ||
   [ ! -x "$BUILD/service/preflight-server" ]; then
  echo "gpu-check: no usable build in $BUILD (build exit $BUILD_RC): nothing measured" >&2
  {
    echo "# Preflight GPU check (issue 17)"; echo
    echo "**NOTHING WAS MEASURED: the build failed** (mode: $( ((DRY)) && echo dry || echo gpu))."
    echo "Every CUDA case is SKIPPED: no build. ${REASON:+GPU: $REASON.}"; echo
    echo '```'; tail -40 "$WORK/build.log" 2>/dev/null; echo '```'; echo
    echo "Machine:"; echo; echo '```'; cat "$WORK/probe.txt"; echo '```'
  } >"$OUT"
  exit 1
fi

MEASURE=$(( $(left) - 20 ))
((MEASURE < 60)) && MEASURE=60
MODE=gpu
((DRY)) && MODE=dry
PYTHONUNBUFFERED=1 timeout --kill-after=15 $((MEASURE + 30)) "$PYTHON" \
  tools/gpu/gpu_check.py --build "$BUILD" --work "$WORK" --out "$OUT" --mode "$MODE" \
  --dry-reason "$REASON" --steps "$STEPS" --nvidia-smi "$WORK/nvidia-smi.txt" \
  --probe "$WORK/probe.txt" --budget "$MEASURE"
rc=$?
echo "gpu-check: done in $((SECONDS - START)) s, exit $rc, results in $OUT" >&2
exit $rc
