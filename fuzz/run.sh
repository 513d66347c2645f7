#!/usr/bin/env bash
# Fuzzes each target for a while with AFL++ and prints what it found.
#   fuzz/run.sh            # 300 s per target
#   SECONDS_PER_TARGET=60 fuzz/run.sh body template
set -euo pipefail
cd "$(dirname "$0")"
cargo afl build --release
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(definition template webhook_auth body)
mkdir -p out
for t in "${targets[@]}"; do
  rm -rf "out/$t"
  nice cargo afl fuzz -i "corpus/$t" -o "out/$t" -V "${SECONDS_PER_TARGET:-300}" \
    target/release/fuzz "$t" > "out-$t.log" 2>&1 || true
  stats="out/$t/default/fuzzer_stats"
  printf '%-13s execs %-10s paths %-6s crashes %-3s hangs %s\n' "$t" \
    "$(awk -F': *' '$1 ~ /^execs_done/ {print $2}' "$stats")" \
    "$(awk -F': *' '$1 ~ /^corpus_count/ {print $2}' "$stats")" \
    "$(awk -F': *' '$1 ~ /^saved_crashes/ {print $2}' "$stats")" \
    "$(awk -F': *' '$1 ~ /^saved_hangs/ {print $2}' "$stats")"
done
