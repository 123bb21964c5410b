#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60) and
# exits non-zero if any target crashes (panic, failed invariant, sanitizer
# report, timeout or out-of-memory). Prints, per target, the executions
# reached and the corpus size.
#
#   scripts/fuzz.sh [SECONDS]        all targets
#   FUZZ_TARGETS="respond cmsg" scripts/fuzz.sh 300
#
# Needs the nightly toolchain and cargo-fuzz; installs either when missing
# (rustup, `cargo install cargo-fuzz --locked`). Seeds come from fuzz/corpus/<target>/
# (committed, read only); what libFuzzer finds goes to fuzz/work/<target>/
# (ignored by git, kept between runs). A crashing input is written to
# fuzz/artifacts/<target>/; reproduce it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
[[ $secs =~ ^[0-9]+$ ]] && [ "$secs" -gt 0 ] || {
  echo "usage: $0 [SECONDS per target]" >&2
  exit 2
}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  t0=$(date +%s)
  cargo install cargo-fuzz --locked
  echo "fuzz.sh: cargo-fuzz installed in $(($(date +%s) - t0)) s"
fi

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list --fuzz-dir fuzz)}
t0=$(date +%s)
# Release with debug assertions and overflow checks (-a), AddressSanitizer
# (the cargo-fuzz default).
cargo +nightly fuzz build --fuzz-dir fuzz --debug-assertions
echo "fuzz.sh: built in $(($(date +%s) - t0)) s"
bin_dir=fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release

failed=()
summary=()
for t in $targets; do
  mkdir -p "fuzz/work/$t" "fuzz/artifacts/$t" "fuzz/corpus/$t"
  log=$(mktemp)
  rc=0
  "$bin_dir/$t" -max_total_time="$secs" -print_final_stats=1 -max_len=4096 \
    -timeout=10 -rss_limit_mb=2048 -artifact_prefix="fuzz/artifacts/$t/" \
    "fuzz/work/$t" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  units=$(find "fuzz/work/$t" -type f | wc -l)
  line=$(printf '%-10s %12s execs %8s/s  %-10s corpus %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-}" "$units")
  if [ "$rc" -ne 0 ]; then
    echo "fuzz.sh: $t FAILED (exit $rc); the end of its log:"
    tail -n 60 "$log"
    failed+=("$t")
    line+="  FAILED"
  fi
  echo "fuzz.sh: $line"
  summary+=("$line")
  rm -f "$log"
done

echo "fuzz.sh: ${secs} s per target; total $(($(date +%s) - t0)) s"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
