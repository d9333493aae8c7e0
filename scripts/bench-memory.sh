#!/usr/bin/env bash
# Peak memory (max RSS, from /usr/bin/time) and wall time of `config` and `plan --offline` on
# generated projects: 1k, 10k and 100k services of one replica each, and one service of 10⁶
# replicas (with the replica limits raised), planned onto 100 hosts that declare their capacity.
#
#   scripts/bench-memory.sh                 # the release binary if built, else the debug one
#   BIN=target/debug/compose-fleet scripts/bench-memory.sh 1000 10000
#
# Prints one line per run; asserts nothing. The replica limits are raised to fit each case. Figures from a debug binary show the memory well
# (allocation is the same) but not the time.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${BIN:-}
if [ -z "$bin" ]; then
  if [ -x target/release/compose-fleet ]; then bin=target/release/compose-fleet; else bin=target/debug/compose-fleet; fi
fi
bin=$(realpath "$bin")
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000 100000)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

hosts() {
  echo "hosts:"
  awk 'BEGIN { for (i = 1; i <= 100; i++) printf "  h%d: { address: 10.1.%d.%d, capacity: { cpus: 256, memory: 1TiB } }\n", i, int(i / 250), i % 250 + 1 }'
}

services() { # N REPLICAS
  echo "services:"
  awk -v n="$1" -v r="$2" 'BEGIN { for (i = 0; i < n; i++) printf "  s%d:\n    image: registry.example/app:%d\n    deploy: { replicas: %d, resources: { reservations: { cpus: \"0.001\", memory: 1M } } }\n", i, i % 7, r }'
}

# Each run is cut after $TIMEOUT seconds (default 600); the peak is then the peak until the cut.
timeout=${TIMEOUT:-600}
printf '%-28s %-15s %9s %9s %s\n' case command "peak MiB" seconds result
measure() { # LABEL DIR GLOBAL-ARGS...
  local label=$1 dir=$2
  shift 2
  for cmd in config "plan --offline"; do
    # shellcheck disable=SC2086
    ( cd "$dir" && /usr/bin/time -o time -f '%M %e %x' timeout "$timeout" "$bin" "$@" $cmd >/dev/null 2>stderr ) || true
    local kib secs code result
    read -r kib secs code < <(grep -E '^[0-9]+ ' "$dir/time" | tail -1)
    case $code in
      0) result=ok ;;
      124) result="cut after ${timeout}s" ;;
      *) result="exit $code: $(grep -m1 -E 'error|panicked' "$dir/stderr" || true)" ;;
    esac
    printf '%-28s %-15s %9.1f %9s %s\n' "$label" "$cmd" "$(echo "$kib / 1024" | bc -l)" "$secs" "$result"
  done
}

for n in "${sizes[@]}"; do
  dir=$work/s$n
  mkdir -p "$dir"
  services "$n" 1 >"$dir/compose.yaml"
  hosts >"$dir/inventory.yaml"
  measure "$n services" "$dir" --limit "replicas-total=$n"
done

dir=$work/r
mkdir -p "$dir"
services 1 1000000 >"$dir/compose.yaml"
hosts >"$dir/inventory.yaml"
measure "1 service, 10^6 replicas" "$dir" --limit replicas-per-service=1000000 --limit replicas-total=1000000
