#!/usr/bin/env bash
# The memory-safety-critical tests under valgrind memcheck, bounded in time.
#
# Covers: the core's mode tests (fenced drains running work, owner exit,
# offline hand-off, implicit owners), and, when present, qpw-mm's slab and
# kmalloc tests and its GlobalAlloc example (a whole program on our allocator).
# Any memcheck error fails the run (--error-exitcode). Leak checking is off:
# tests leak on purpose where a queued work outlives a flush timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
  echo "valgrind not installed: skipping (apt-get install valgrind)"; exit 0
fi
start=$(date +%s)
# --fair-sched=yes: valgrind runs one thread at a time, and its default lock
# lets a spinning or yielding thread starve the others.
vg=(valgrind --tool=memcheck --error-exitcode=99 --quiet --trace-children=no --fair-sched=yes)

# Test executables of one test target: `exe PACKAGE TEST`.
exe() {
  cargo test -p "$1" --test "$2" --no-run 2>&1 \
    | sed -n "s/.*Executable .*(\(.*\))$/\1/p" | tail -n 1
}

run() {
  local pkg=$1 test=$2; shift 2
  local bin; bin=$(exe "$pkg" "$test")
  echo "--- memcheck: $pkg $test ($bin)"
  timeout 900 "${vg[@]}" "$bin" --test-threads 2 "$@"
}

run qpw modes
for t in slab kmalloc; do
  if [ -f "crates/qpw-mm/tests/$t.rs" ]; then run qpw-mm "$t"; fi
done
if [ -f crates/qpw-mm/examples/global_alloc.rs ]; then
  cargo build -p qpw-mm --example global_alloc
  echo "--- memcheck: qpw-mm example global_alloc"
  timeout 900 "${vg[@]}" target/debug/examples/global_alloc >/dev/null
fi
echo "valgrind: no memcheck errors, $(( $(date +%s) - start )) s"
