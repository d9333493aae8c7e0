#!/usr/bin/env bash
# The main job on the built-in lab fleet: set up this machine, build, and run compose-fleet on an
# example app. Needs root (the lab creates network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
  scripts/setup.sh
fi
cargo build --release --locked
bin=target/release/compose-fleet
example=examples/voting

echo "==> compose-fleet config ($example)"
"$bin" -f "$example/compose.yaml" config
echo "==> compose-fleet graph ($example)"
"$bin" -f "$example/compose.yaml" graph
