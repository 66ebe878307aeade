#!/usr/bin/env bash
# Set up a fresh Debian machine for tapttrace: system packages (bcc comes from Debian, not PyPI),
# tracefs, and a venv that sees Debian's bcc. Idempotent; a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (tapttrace loads BPF programs and builds network namespaces)" >&2
  exit 3
fi

stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/tapttrace ]; then
  exit 0
fi

# Kernel headers: the running kernel's if the distro has them, else the distro's own
# (tapttrace wires those for bcc at run time; struct layouts come from BTF, not headers).
headers="linux-headers-$(uname -r)"
packages=(python3-bpfcc bpftool iproute2 iputils-ping tcpdump nftables iptables python3-venv procps util-linux make)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ! dpkg -s "$headers" >/dev/null 2>&1 && ! ls -d /usr/src/linux-headers-*-common >/dev/null 2>&1; then
  missing+=("HEADERS")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  pkgs=()
  for p in "${missing[@]}"; do
    if [ "$p" = HEADERS ]; then
      if apt-cache show "$headers" >/dev/null 2>&1; then pkgs+=("$headers"); else pkgs+=(linux-headers-amd64); fi
    else
      pkgs+=("$p")
    fi
  done
  apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

if ! mountpoint -q /sys/kernel/tracing; then
  mount -t tracefs nodev /sys/kernel/tracing
fi

# Debian's python3 (the one python3-bpfcc is built for), never another python3 on PATH.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
echo "$want" > "$stamp"
echo "setup: done (.venv/bin/tapttrace)"
