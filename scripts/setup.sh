#!/usr/bin/env bash
# Installs everything compose-fleet's lab, tests and benchmarks need on a fresh Debian machine.
# Idempotent: a second run only checks. Needs root (apt-get, rustup target).
set -euo pipefail

packages=(
  openssh-server openssh-client   # lab hosts run real sshd; the CLI drives system ssh
  docker-registry                 # the lab's OCI registry (distribution v2)
  busybox-static                  # test images are built from it
  musl-tools                      # the agent is a static musl binary
  iproute2 nftables iptables      # lab namespaces, bridge, routes; pod networking
  util-linux procps psmisc kmod   # unshare, nsenter, pgrep, fuser
  crun                            # benchmark baseline for container start
  docker-compose                  # benchmark baseline for `config`
  jq curl ca-certificates
  python3-venv                    # the reference implementations' virtual environment
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
# Reference implementations for the differential tests, in the project's own virtual environment
# (.reference/, ignored by git): pinned, installed only when missing.
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/.reference/venv"
if [ ! -x "$venv/bin/python3" ]; then
  echo "setup: creating $venv"
  python3 -m venv "$venv"
fi
# ansible-core: `ansible-inventory --list` is the reference for reading Ansible inventories.
ANSIBLE_CORE_VERSION=2.19.14
if ! "$venv/bin/ansible-inventory" --version 2>/dev/null | grep -q "core $ANSIBLE_CORE_VERSION\]"; then
  echo "setup: installing ansible-core==$ANSIBLE_CORE_VERSION into $venv"
  "$venv/bin/pip" install -q "ansible-core==$ANSIBLE_CORE_VERSION"
fi

echo "setup: ok"
