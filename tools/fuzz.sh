#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang++ with ASan + UBSan) into OUT
# and runs each one for SECONDS over its committed seed corpus
# (fuzz/corpus/TARGET); a crash, a leak, a sanitizer report or a timeout
# fails (libFuzzer exits non-zero and leaves OUT/crash-TARGET-* to replay
# with `OUT/fuzz_TARGET FILE`). New inputs it finds go to a scratch
# directory: the committed corpus only changes by hand.
# Usage: tools/fuzz.sh OUT [SECONDS]     (ctest fuzz_bounded: BUILD/fuzz 20)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
secs=${2:-20}
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=true
if [ ! -f "$out/build.ninja" ]; then
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  cmake -S fuzz -B "$out" -G Ninja -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" >/dev/null
fi
cmake --build "$out" -j "${PREFLIGHT_JOBS:-2}"
for t in framing check_config tokens batch_pickle model_archive; do
  scratch=$(mktemp -d)
  log="$out/fuzz_$t.log"
  echo "fuzz: $t for ${secs}s"
  status=0
  max_len=4096
  [ "$t" = model_archive ] && max_len=16384  # Its seeds are whole (tiny) model files.
  "$out/fuzz_$t" -max_total_time="$secs" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$out/crash-$t-" "$scratch" "fuzz/corpus/$t" \
    >"$log" 2>&1 || status=$?
  rm -rf "$scratch"
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY)" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz: $t FAILED (exit $status); reproduce with $out/fuzz_$t $out/crash-$t-*"
    exit 1
  fi
done
echo "fuzz: ok"
