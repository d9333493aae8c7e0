#!/usr/bin/env bash
# The main job on the built-in lab fleet: set up this machine, build, start the default lab
# (`lab`: hosts with sshd in network namespaces, and a registry), and run compose-fleet on an
# example app. Needs root (the lab creates network namespaces, a bridge and mounts).
# The lab stays up afterwards (scripts/test.sh runs beside it: its labs have names of their own);
# remove it with: target/debug/compose-fleet lab down
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "error: the demo starts the lab fleet, which needs root" >&2
  echo "hint: sudo $0" >&2
  exit 1
fi
scripts/setup.sh
# The debug build: the one scripts/test.sh builds too, so the README's two commands compile once.
cargo build --locked
bin=target/debug/compose-fleet
example=examples/voting
lab_dir=${COMPOSE_FLEET_LAB_DIR:-/var/lib/compose-fleet-lab}

echo "==> compose-fleet lab up --hosts 3 --dir $lab_dir"
"$bin" lab up --hosts 3 --dir "$lab_dir"
"$bin" lab status --dir "$lab_dir"
echo "==> compose-fleet hosts (SSH to every lab host, push the agent, read its facts)"
"$bin" -i "$lab_dir/inventory.yaml" hosts
echo "==> compose-fleet config ($example)"
"$bin" -f "$example/compose.yaml" config
echo "==> compose-fleet graph ($example)"
"$bin" -f "$example/compose.yaml" graph
echo "==> compose-fleet plan ($example on the lab fleet)"
"$bin" -f "$example/compose.yaml" -i "$lab_dir/inventory.yaml" plan
echo "==> compose-fleet up ($example on the lab fleet: pods in dependency order, only what changed)"
"$bin" -f "$example/compose.yaml" -i "$lab_dir/inventory.yaml" up
echo "==> compose-fleet ps"
"$bin" -f "$example/compose.yaml" -i "$lab_dir/inventory.yaml" ps
echo "==> a page through vote's published port, from this machine (DNAT on the host's address)"
published=$("$bin" -f "$example/compose.yaml" -i "$lab_dir/inventory.yaml" ps --format json \
  | jq -r '[.[] | select(.service == "vote")][0].ports[0]')   # e.g. 10.250.0.11:8080->80/tcp
curl -fsS --max-time 5 "http://${published%%->*}/"
echo "==> compose-fleet lab list"
"$bin" lab list
