#!/usr/bin/env bash
# Runs the loom models of the slot protocol, bounded so CI stays short.
# Each model's wall time is printed by the test harness; the whole run is timed here.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export RUSTFLAGS="--cfg qpw_loom ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
start=$(date +%s)
cargo test --release -p qpw --lib loom -- --test-threads=2 "$@"
if [ -d crates/qpw-mm/src ] && grep -rq "qpw_loom" crates/qpw-mm/src; then
  cargo test --release -p qpw-mm --lib loom -- --test-threads=2 "$@"
fi
echo "loom models: LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS, $(( $(date +%s) - start )) s"
