#!/usr/bin/env bash
# Runs every fuzz target for N seconds each (default 60) and prints each target's execution count.
#
#   fuzz/run-all.sh [SECONDS]
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`). Seeds come
# from a real log, written into corpus/<target>/ (not committed) by the gen_seeds binary first.
# Logs go to target/fuzz-logs/<target>.log; crashes to artifacts/<target>/.
set -uo pipefail

secs=${1:-60}
cd "$(dirname "$0")"
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

targets=(frame_decoder segment_scanner checkpoint_decoder dir_recovery)
# Segment images need room for several 4 KiB pages; the others stay small.
declare -A max_len=([frame_decoder]=20000 [segment_scanner]=32768 [checkpoint_decoder]=4096 [dir_recovery]=32768)

cargo +nightly run -q --release --bin gen_seeds -- corpus || exit 1
cargo +nightly fuzz build || exit 1
mkdir -p target/fuzz-logs

failed=0
summary=()
for t in "${targets[@]}"; do
    log=target/fuzz-logs/$t.log
    echo "== $t: ${secs}s"
    cargo +nightly fuzz run "$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -max_len="${max_len[$t]}" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    if [ -z "$execs" ]; then
        execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    fi
    status=ok
    if [ "$rc" -ne 0 ]; then
        status="FAILED (exit $rc, see $log and artifacts/$t/)"
        failed=1
    fi
    summary+=("$(printf '%-20s %12s executions  %s' "$t" "${execs:-?}" "$status")")
done

echo
printf '%s\n' "${summary[@]}"
exit "$failed"
