#!/usr/bin/env bash
# Sets up a Debian 12 machine for tapttrace: system packages (bcc comes from Debian's
# python3-bpfcc, not PyPI, whose "bcc" is unrelated), tracefs, and a venv that sees Debian's bcc.
# Idempotent, and quick when nothing changed: the package check is one dpkg-query, and the slow
# part (venv + pip) is skipped while .venv/.setup-stamp matches pyproject.toml and this script.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (tapttrace installs system packages, loads BPF programs and builds network namespaces); try: sudo $0" >&2
  exit 3
fi

# Two `make test` runs started together (CI and a developer, or two shells) must not both
# rebuild the venv under each other.
exec 9>"/tmp/tapttrace-setup.$(pwd | sha256sum | cut -c1-12).lock"
flock 9

installed() {  # prints the packages among "$@" that are fully installed (dpkg -s also says yes to "config-files")
  { dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null || true; } | awk '$2 == "installed" {print $1}'
}

# clang-14, libbpf-dev: build bpf/follow.c and bpf/exporter.c into the precompiled tp_btf objects follow
# and the exporter load with libbpf.
# kmod, xz-utils: the kernel matrix (tests/kernels: depmod, Debian 13's xz-compressed modules, modprobe in the guests).
# python3-cap-ng: the exporter keeps only the capabilities it needs after attaching (libcap-ng; not on PyPI).
# qemu-system-x86, busybox-static: the lab's real guest (docs/lab.md); libvirt-*: a real libvirtd for the
# tests of the original report's two interface types, and python3-libvirt for --vm (read-only).
packages=(python3-bpfcc bpftool iproute2 iputils-ping tcpdump nftables iptables python3-venv procps util-linux prometheus gcc libc6-dev python3-yaml openssl qemu-system-x86 busybox-static libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients python3-libvirt clang-14 libbpf-dev kmod xz-utils python3-cap-ng)
have=" $(installed "${packages[@]}" | tr '\n' ' ') "
missing=()
for p in "${packages[@]}"; do
  [[ "$have" == *" $p "* ]] || missing+=("$p")
done

# Kernel headers: the running kernel's if the distro has them, else the distro's own (tapttrace
# points bcc at those at run time; struct layouts come from BTF, so the version need not match).
running_headers="linux-headers-$(uname -r)"
distro_headers="linux-headers-$(dpkg --print-architecture)"
if [ -z "$(installed "$running_headers" "$distro_headers")" ]; then
  missing+=(HEADERS)
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  pkgs=()
  for p in "${missing[@]}"; do
    if [ "$p" != HEADERS ]; then
      pkgs+=("$p")
    elif [ -n "$(apt-cache policy "$running_headers" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)"')" ]; then
      pkgs+=("$running_headers")
    else
      echo "setup: the distro has no $running_headers; using $distro_headers"
      pkgs+=("$distro_headers")
    fi
  done
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# Kernel tracepoint formats are read from tracefs; some boots mount only debugfs, or nothing.
if ! mountpoint -q /sys/kernel/tracing; then
  mount -t tracefs nodev /sys/kernel/tracing
fi

# follow's and the exporter's CO-RE objects for this kernel (bpf/follow.c, bpf/exporter.c),
# into /var/cache/tapttrace/bpf (quick when already built).
prebuild() {
  .venv/bin/python -m tracer.libbpf_loader >/dev/null || echo "setup: a BPF object (of bpf/follow.c or bpf/exporter.c) was not built; follow and the exporter will build it at first use or use bcc" >&2
}

stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/tapttrace ]; then
  prebuild
  exit 0
fi

# Debian's python3, the one python3-bpfcc is built for, never another python3 earlier on PATH
# (pyenv and friends): a venv of that one would not see bcc.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
  if ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
    echo "setup: the venv cannot import bcc although python3-bpfcc is installed" >&2
    exit 1
  fi
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
echo "$want" > "$stamp"
prebuild
echo "setup: done (.venv/bin/tapttrace)"
