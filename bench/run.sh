#!/usr/bin/env bash
# Side-by-side benchmark: luaproxy vs nginx (1 worker each) in front of one origin.
# Usage:  bash bench/run.sh            full run (3 rounds x 5 s per scenario)
#         QUICK=1 bash bench/run.sh    smoke run (1 round x 2 s)
# Paths and knobs come from the environment (see bench/README.md and the top of
# bench/harness.py): LUAPROXY, ORIGIN, ROUNDS, DURATION, WARMUP, QUICK, PROXIES,
# ONLY, IDLE_CONNS, CPU_PROXY, CPU_LOAD, RESULTS. Arguments of the form KEY=VALUE
# are accepted too:  bash bench/run.sh ROUNDS=5 DURATION=10
# Exits non-zero only when something failed to start or serve, never because of
# the figures. Every process started is stopped by PID on exit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

for arg in "$@"; do
  case "$arg" in
    *=*) export "${arg%%=*}=${arg#*=}" ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run.sh: unexpected argument '$arg' (use KEY=VALUE)" >&2; exit 2 ;;
  esac
done

export LUAPROXY="${LUAPROXY:-build/luaproxy}"
export ORIGIN="${ORIGIN:-build/tests/origin/lp_origin}"

for tool in python3 wrk taskset; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found" >&2; exit 1; }
done

# 10,000 idle connections need that many descriptors in the client and in each proxy.
hard="$(ulimit -Hn)"
if [ "$hard" != unlimited ] && [ "$hard" -lt 24000 ]; then
  ulimit -Hn 65536 2>/dev/null || true
  hard="$(ulimit -Hn)"
fi
ulimit -Sn "$hard" 2>/dev/null || true
want=$(( ${IDLE_CONNS:-10000} + 1024 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want" ]; then
  echo "run.sh: note: open-file limit $(ulimit -n) is below $want; lowering IDLE_CONNS" >&2
  export IDLE_CONNS=$(( $(ulimit -n) - 1024 ))
fi

base="$(mktemp -d /tmp/lp-bench.XXXXXX)"   # temp dirs, configs, logs, pidfile
pidfile="$base/pids"
: > "$pidfile"
export LP_BENCH_TMP="$base" LP_BENCH_PIDFILE="$pidfile"
harness_pid=""
rc=1

cleanup() {
  # The harness stops everything it started; this is the fallback if it was killed.
  if [ -n "$harness_pid" ] && kill -0 "$harness_pid" 2>/dev/null; then
    kill -TERM "$harness_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$harness_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$harness_pid" 2>/dev/null || true
  fi
  if [ -s "$pidfile" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
    done < "$pidfile"
    sleep 0.5
    while read -r pid; do
      [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    done < "$pidfile"
  fi
  if [ "$rc" = 0 ] && [ -z "${KEEP:-}" ]; then
    rm -rf "$base"
  else
    echo "run.sh: kept $base (configs and logs)" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The harness itself stays off the proxies' CPU; it only sleeps and reads /proc.
pin=()
if [ "$(nproc)" -ge 2 ]; then pin=(taskset -c "${CPU_LOAD:-1}"); fi
set +e
"${pin[@]}" python3 "$here/harness.py" &
harness_pid=$!
wait "$harness_pid"
rc=$?
set -e
harness_pid=""
exit "$rc"
