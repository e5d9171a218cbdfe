#!/usr/bin/env bash
# Installs the Debian packages `qpw-bench realprog` (and its test,
# crates/qpw-bench/tests/realprog.rs) runs programs from:
#   cc                      the C workloads, compiled at run time (build-essential)
#   libmimalloc2.0          mimalloc to preload (libmimalloc.so.2)
#   libjemalloc2            jemalloc to preload (libjemalloc.so.2)
#   python3                 /usr/bin/python3, the JSON round trip
#   sqlite3                 /usr/bin/sqlite3, the scripted workload
#   redis-server            /usr/bin/redis-server
#   redis-tools             /usr/bin/redis-benchmark
# Without them the benchmark still runs: a missing allocator is a skipped
# column and a missing program a skipped row, each printed with its reason.
# Needs root (or sudo) and the network to the Debian mirrors.
set -euo pipefail
packages=(build-essential libmimalloc2.0 libjemalloc2 python3 sqlite3 redis-server redis-tools)
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update
# --no-install-recommends: redis-server's recommendations are not needed.
"${as_root[@]}" apt-get install -y --no-install-recommends "${packages[@]}"
# The Debian package starts a redis-server on port 6379 where an init
# system runs; the benchmark starts its own on a free port and never
# talks to that one.
for p in /usr/bin/python3 /usr/bin/sqlite3 /usr/bin/redis-server /usr/bin/redis-benchmark; do
  [ -x "$p" ] || { echo "install-bench-deps: $p is missing after the install" >&2; exit 1; }
done
echo "install-bench-deps: installed ${packages[*]}"
