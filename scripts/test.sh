#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, and the whole test suite.
# As root it first installs what the lab tests need (scripts/setup.sh) and runs them too;
# as another user the tests that need root skip with a printed reason.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
  scripts/setup.sh
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked
