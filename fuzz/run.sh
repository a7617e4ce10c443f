#!/bin/sh
# Builds the fuzz targets with the stable toolchain (RUSTC_BOOTSTRAP=1 unlocks the
# -Zsanitizer flags cargo-fuzz passes), writes the seed corpora, then runs each target for
# SECS seconds (default 600), two at a time, at the lowest priority. Logs go to fuzz/logs/.
# Usage, from the repository root or fuzz/: sh fuzz/run.sh [SECS] [TARGET...]
set -eu
cd "$(dirname "$0")"
secs=${1:-600}
[ $# -gt 0 ] && shift
targets=${*:-"handshake index_request index_response peer_request peer_response manifest wire_values hash_cache resume_sidecar durable_log durable_snapshot peer_certificate"}
RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz build -O
nice -n 19 cargo run --quiet --example seed_corpus
nice -n 19 cargo run --quiet --example format_seeds
mkdir -p logs artifacts
bin=target/x86_64-unknown-linux-gnu/release
running=0
for t in $targets; do
    mkdir -p "artifacts/$t"
    nice -n 19 "$bin/$t" -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "corpus/$t" >"logs/$t.log" 2>&1 &
    running=$((running + 1))
    if [ "$running" -ge 2 ]; then wait; running=0; fi
done
wait
for t in $targets; do
    printf '%s: ' "$t"
    grep -E '^(#[0-9]+.*DONE|Done)|stat::number_of_executed_units|cov:' "logs/$t.log" | tail -1
done
