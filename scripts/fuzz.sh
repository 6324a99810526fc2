#!/usr/bin/env bash
# Fuzz campaign: every cargo-fuzz target (fuzz/fuzz_targets/*.rs) for SECONDS each, one after
# another, each growing its own working corpus (fuzz/work/TARGET, seeded from the checked-in
# fuzz/corpus/TARGET). Prints one row per target from libFuzzer's final statistics:
# executions, executions per second, coverage (edges), features, corpus size, crashes; the
# rows are appended to out/fuzz/campaigns.tsv with the date and commit. A crash leaves its
# input under fuzz/artifacts/TARGET/ and makes the script exit 1 (after the other targets).
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]      (default: 60 s, every target)
#   PFS_FUZZ_JOBS=2 bash scripts/fuzz.sh 600 frame  (libFuzzer -fork=N on N cores)
#   PFS_FUZZ_RUNS=10000000 bash scripts/fuzz.sh 3600  (stop each target after N executions,
#                                                     SECONDS still the cap)
#   PFS_FUZZ_MAX_LEN=4096 bash scripts/fuzz.sh 600 sealed  (largest input, default 65536: a
#       script-like target whose corpus grew to 60 KB inputs runs ~5x fewer inputs a second)
#   PFS_FUZZ_FLAGS="-s none --no-trace-compares" bash scripts/fuzz.sh 600 handshake
#       (cargo-fuzz build options, built into fuzz/target-flags; for targets whose time goes
#       into instrumented crypto: X25519 under trace-compares and ASan runs ~5x slower)
#
# Needs the nightly toolchain and cargo-fuzz (installed here when missing). Not part of
# .ci/run: a CI-sized campaign is `just fuzz 20` (about 4 minutes for 11 targets plus the
# first build).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
jobs="${PFS_FUZZ_JOBS:-1}"
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
# shellcheck disable=SC2206
flags=(${PFS_FUZZ_FLAGS:-})
if [ ${#flags[@]} -gt 0 ]; then flags+=(--target-dir fuzz/target-flags); fi
if [ ${#flags[@]} -gt 0 ]; then
    for t in "${targets[@]}"; do cargo +nightly fuzz build -O "${flags[@]}" "$t"; done
else
    cargo +nightly fuzz build -O
fi
mkdir -p out/fuzz
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
printf '%-10s %12s %9s %7s %7s %7s %7s\n' target executions exec/s cov ft corpus crashes
failed=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/work/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="out/fuzz/$t.log"
    before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    extra=()
    [ "$jobs" -gt 1 ] && extra=(-fork="$jobs" -ignore_crashes=1)
    [ -n "${PFS_FUZZ_RUNS:-}" ] && extra+=(-runs="$PFS_FUZZ_RUNS")
    set +e
    cargo +nightly fuzz run -O "${flags[@]}" "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 \
        -max_len="${PFS_FUZZ_MAX_LEN:-65536}" "${extra[@]}" >"$log" 2>&1
    rc=$?
    set -e
    execs=$( (grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" || true) | awk '{s+=$2} END {print s+0}')
    rate=$( (grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" || true) | awk '{s+=$2} END {print s+0}')
    last=$(grep -E '#[0-9]+[[:space:]]+(DONE|INITED|NEW|REDUCE|pulse)' "$log" | tail -1 || true)
    cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.*ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(find "fuzz/work/$t" -type f | wc -l)
    crashes=$(( $(find "fuzz/artifacts/$t" -type f | wc -l) - before ))
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes="rc=$rc"; fi
    printf '%-10s %12s %9s %7s %7s %7s %7s\n' "$t" "$execs" "$rate" "${cov:-?}" "${ft:-?}" "$corp" "$crashes"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$commit" "$t" "$secs" \
        "$execs" "$rate" "${cov:-}" "${ft:-}" "$corp" "$crashes" >>out/fuzz/campaigns.tsv
    if [ "$crashes" != 0 ]; then
        failed=1
        echo "  $t: see $log and fuzz/artifacts/$t/ (reproduce: cargo +nightly fuzz run $t FILE)" >&2
    fi
done
exit "$failed"
