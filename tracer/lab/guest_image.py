"""A real guest for the lab: Debian's cloud kernel and a tiny busybox initramfs built here.

`ensure_guest_image()` downloads the kernel package `linux-image-cloud-amd64` points at (apt-get
download, ~27 MB), unpacks the kernel and the modules virtio-net needs, and writes an initramfs
(newc cpio, gzip; written in Python, no `cpio` binary needed) holding Debian's static busybox and
an /init that configures eth0 from the kernel command line (see `guest_cmdline`) and prints
READY_MARKER on the console. The initrd depends on nothing but the command line, so qemu
(`tracer.lab.topology`) and libvirt's direct kernel boot can both use it.

Everything lands in the cache directory, keyed by content: the .deb, busybox and this builder. Two
processes calling at once take turns on a lock file; the second finds the first one's image.
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..errors import EnvironmentProblem

DEFAULT_CACHE_DIR = Path("/var/cache/tapttrace/guest")
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
READY_MARKER = "TAPTTRACE-GUEST-READY"
# What a virtio-net NIC on PCI needs; their dependencies (virtio, virtio_ring, failover, …) are
# read from the modules themselves. Built-in ones are skipped.
MODULE_ROOTS = ("virtio_pci", "virtio_net")
# Bump when the initramfs layout or /init changes in a way the hashed inputs don't show.
BUILDER_VERSION = "1"


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_version: str


def guest_cmdline(ip_cidr: str, extra: str = "", *, gateway: Optional[str] = None, ipv6: bool = False,
                  arp: bool = True, announce: bool = True) -> str:
    """The kernel command line of a guest with address ip_cidr (e.g. 198.51.100.10/24) on eth0.

    ipv6=False turns IPv6 off in the guest (no ND/MLD chatter in traces); arp=False makes it a
    guest that never answers ARP; announce sends one gratuitous ARP once eth0 is up, as a booting
    VM does. panic=-1 reboots at once on a panic: run qemu with -no-reboot and it exits instead.
    """
    if not re.fullmatch(r"[0-9.]+/\d+", ip_cidr):
        raise ValueError(f"ip_cidr must look like 198.51.100.10/24, not {ip_cidr!r}")
    parts = ["console=ttyS0", "quiet", "panic=-1", f"tt.ip={ip_cidr}"]
    if gateway:
        parts.append(f"tt.gw={gateway}")
    parts += [f"tt.ipv6={int(ipv6)}", f"tt.arp={int(arp)}", f"tt.announce={int(announce)}"]
    if extra:
        parts.append(extra)
    return " ".join(parts)


INIT_SCRIPT = r"""#!/bin/sh
# tapttrace lab guest: settings come from the kernel command line only (tt.ip=, tt.gw=, tt.ipv6=,
# tt.arp=, tt.announce=), so qemu -append and libvirt <cmdline> boot the same image.
export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin
ip=; gw=; ipv6=0; arp=1; announce=1
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    tt.ip=*) ip="${arg#tt.ip=}" ;;
    tt.gw=*) gw="${arg#tt.gw=}" ;;
    tt.ipv6=*) ipv6="${arg#tt.ipv6=}" ;;
    tt.arp=*) arp="${arg#tt.arp=}" ;;
    tt.announce=*) announce="${arg#tt.announce=}" ;;
  esac
done
# Quiet, like the lab's namespaces: no IGMP reports for 224.0.0.x, IPv6 only on request.
echo 0 > /proc/sys/net/ipv4/igmp_link_local_mcast_reports
if [ "$ipv6" = 1 ]; then
  for c in all default; do echo 0 > /proc/sys/net/ipv6/conf/$c/accept_dad; done
else
  for c in all default; do echo 1 > /proc/sys/net/ipv6/conf/$c/disable_ipv6; done
fi
for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m.ko" || echo "tapttrace-guest: insmod $m failed"
done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
ip link set lo up
if [ ! -e /sys/class/net/eth0 ]; then
  echo "TAPTTRACE-GUEST-FAILED no eth0 (is there a virtio-net NIC?)"
elif [ -z "$ip" ]; then
  echo "TAPTTRACE-GUEST-FAILED no tt.ip= on the kernel command line"
else
  [ "$arp" = 0 ] && ip link set eth0 arp off
  ip addr add "$ip" dev eth0
  ip link set eth0 up
  [ -n "$gw" ] && ip route add default via "$gw"
  [ "$announce" = 1 ] && [ "$arp" != 0 ] && arping -q -U -c 1 -I eth0 "${ip%/*}"
  echo "TAPTTRACE-GUEST-READY ip=$ip mac=$(cat /sys/class/net/eth0/address)"
fi
# The kernel answers ARP and ping by itself from here on.
while :; do sleep 3600; done
"""


# ---------------------------------------------------------------------------- cpio (newc)

CpioEntry = tuple[str, int, bytes, int]  # name, mode (with file type bits), data, rdev (major << 8 | minor)


def cpio_newc(entries: Iterable[CpioEntry]) -> bytes:
    """An SVR4 "newc" cpio archive (what the kernel unpacks as initramfs), deterministic: mtime 0,
    uid/gid 0, inode numbers in order. For symlinks the data is the target."""
    out = io.BytesIO()

    def pad4() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    def member(ino: int, name: str, mode: int, data: bytes, rdev: int, nlink: int) -> None:
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(raw), 0)
        out.write(b"070701" + "".join(f"{f:08X}" for f in fields).encode() + raw)
        pad4()
        out.write(data)
        pad4()

    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        member(ino, name.lstrip("/"), mode, data, rdev, 2 if stat.S_ISDIR(mode) else 1)
    member(0, "TRAILER!!!", 0, b"", 0, 1)
    return out.getvalue()


def read_cpio_newc(blob: bytes) -> list[CpioEntry]:
    """The inverse of cpio_newc (for tests and for checking a cached image)."""
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        if blob[pos:pos + 6] != b"070701":
            raise ValueError(f"not a newc header at offset {pos}")
        f = [int(blob[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        pos += 110
        name = blob[pos:pos + namesize - 1].decode()
        pos += namesize + (-(110 + namesize) % 4)
        data = blob[pos:pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append((name, mode, data, rmaj << 8 | rmin))


# ---------------------------------------------------------------------------- kernel modules


def modinfo(ko: bytes) -> dict[str, str]:
    """The .modinfo section of an ELF64 little-endian kernel module (key=value strings)."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2 or ko[5] != 1:
        raise ValueError("not an ELF64 little-endian module")
    shoff, = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", ko, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = sections[shstrndx][4]
    for name_off, _type, _flags, _addr, offset, size in sections:
        end = ko.index(b"\0", strtab_off + name_off)
        if ko[strtab_off + name_off:end] == b".modinfo":
            info: dict[str, str] = {}
            for item in ko[offset:offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)
            return info
    return {}


def _module_files(modules_dir: Path) -> dict[str, Path]:
    files = {}
    for path in (modules_dir / "kernel").rglob("*.ko*"):
        stem = path.name.split(".ko")[0]
        files[stem.replace("-", "_")] = path
    return files


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if not path.name.endswith(".ko"):
        raise EnvironmentProblem(f"guest image: can't unpack kernel module {path.name} (only .ko, .ko.xz, .ko.gz)")
    return data


def modules_in_load_order(modules_dir: Path, roots: Iterable[str] = MODULE_ROOTS) -> list[tuple[str, bytes]]:
    """The modules roots need, dependencies first; roots built into the kernel are left out."""
    builtin_file = modules_dir / "modules.builtin"
    builtin = {Path(line.strip()).name.split(".ko")[0].replace("-", "_")
               for line in (builtin_file.read_text().splitlines() if builtin_file.exists() else []) if line.strip()}
    files = _module_files(modules_dir)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise EnvironmentProblem(f"guest image: module dependency loop {' → '.join(chain + (name,))}")
        if name not in files:
            raise EnvironmentProblem(f"guest image: the kernel has neither a built-in nor a module {name} "
                                     f"(needed by {chain[-1] if chain else 'the lab NIC'})")
        data = _read_module(files[name])
        for dep in filter(None, modinfo(data).get("depends", "").split(",")):
            visit(dep, chain + (name,))
        seen.add(name)
        order.append((name, data))

    for root in roots:
        visit(root, ())
    return order


def build_initramfs(modules_dir: Path, busybox: Path = BUSYBOX) -> bytes:
    """The gzipped newc initramfs: busybox, the NIC's modules in load order, /init."""
    modules = modules_in_load_order(modules_dir)
    d, f, lnk = stat.S_IFDIR | 0o755, stat.S_IFREG, stat.S_IFLNK | 0o777
    entries: list[CpioEntry] = [(name, d, b"", 0) for name in
                                ("bin", "dev", "lib", "lib/modules", "proc", "sys", "tmp", "run")]
    entries += [("dev/console", stat.S_IFCHR | 0o600, b"", 5 << 8 | 1),
                ("dev/null", stat.S_IFCHR | 0o666, b"", 1 << 8 | 3),
                ("bin/busybox", f | 0o755, busybox.read_bytes(), 0),
                ("bin/sh", lnk, b"busybox", 0),
                ("sbin", lnk, b"bin", 0),
                ("init", f | 0o755, INIT_SCRIPT.encode(), 0),
                ("lib/modules/load-order", f | 0o644, "".join(f"{n}\n" for n, _ in modules).encode(), 0)]
    entries += [(f"lib/modules/{name}.ko", f | 0o644, data, 0) for name, data in modules]
    return gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0)


# ---------------------------------------------------------------------------- download and cache


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _apt(*argv: str, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, timeout=600,
                              env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError:
        raise EnvironmentProblem(f"guest image: {argv[0]} not found; the qemu guest needs Debian's apt") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("W: Download is performed")]
    return lines[-1] if lines else "no output"


APT_LISTS = Path("/var/lib/apt/lists")


def _apt_lists_stamp() -> str:
    """Changes whenever apt-get update rewrites the package lists."""
    try:
        return str(max((p.stat().st_mtime_ns for p in APT_LISTS.glob("*_Packages*")), default=0))
    except OSError:
        return "0"


def kernel_package_name(cache_dir: Optional[Path] = None) -> str:
    """The versioned package the meta package points at, e.g. linux-image-6.1.0-56-cloud-amd64.

    apt-cache takes a second; with cache_dir, the answer is kept there until the apt lists change."""
    memo = cache_dir / "kernel-package" if cache_dir else None
    stamp = _apt_lists_stamp()
    if memo and memo.is_file():
        saved_stamp, _, saved = memo.read_text().partition(" ")
        if saved_stamp == stamp and saved.strip():
            return saved.strip()
    p = _apt("apt-cache", "depends", KERNEL_META_PACKAGE)
    names = re.findall(r"Depends:\s*(linux-image-\S+)", p.stdout)
    if p.returncode or not names:
        raise EnvironmentProblem(f"guest image: can't find the kernel package: apt-cache depends "
                                 f"{KERNEL_META_PACKAGE}: {_last_line(p.stderr or p.stdout)} (run apt-get update?)")
    if memo:
        memo.write_text(f"{stamp} {names[0]}\n")
    return names[0]


def _sha256(data: Union[bytes, Path]) -> str:
    h = hashlib.sha256()
    if isinstance(data, Path):
        with open(data, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(data)
    return h.hexdigest()


def _download(package: str, debs: Path) -> Path:
    """The package's .deb in debs/, downloaded unless it's already there."""
    have = sorted(debs.glob(f"{package}_*.deb")) if debs.is_dir() else []
    if have:
        return have[-1]
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
        p = _apt("apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package, cwd=Path(tmp))
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if p.returncode or not got:
            raise EnvironmentProblem(f"guest image: can't download {package}: {_last_line(p.stderr or p.stdout)}")
        final = debs / got[0].name
        os.replace(got[0], final)
    return final


def _cached_images(cache_dir: Path) -> list[GuestImage]:
    images = []
    for initrd in cache_dir.glob("*/initrd-*.img"):
        kernel = initrd.parent / "vmlinuz"
        if kernel.is_file():
            images.append(GuestImage(kernel, initrd, initrd.parent.name))
    return sorted(images, key=lambda i: i.initrd.stat().st_mtime)


def ensure_guest_image(cache_dir: Path = DEFAULT_CACHE_DIR) -> GuestImage:
    """Kernel and initrd for the lab's qemu guest, built once per kernel package/busybox/builder."""
    cache_dir = Path(cache_dir)
    if not BUSYBOX.is_file():
        raise EnvironmentProblem(f"guest image: {BUSYBOX} is missing; install busybox-static (scripts/setup.sh)")
    with _locked(cache_dir):
        try:
            package = kernel_package_name(cache_dir)
            deb = _download(package, cache_dir / "debs")
        except EnvironmentProblem:
            cached = _cached_images(cache_dir)
            if cached:  # offline, or apt lists gone: the last image built is still good
                return cached[-1]
            raise
        key = _sha256("\0".join([deb.name, str(deb.stat().st_size), _sha256(BUSYBOX), _sha256(INIT_SCRIPT.encode()),
                                 ",".join(MODULE_ROOTS), BUILDER_VERSION]).encode())[:16]
        version = package.removeprefix("linux-image-")
        out = cache_dir / version
        image = GuestImage(out / "vmlinuz", out / f"initrd-{key}.img", version)
        if image.kernel.is_file() and image.initrd.is_file():
            return image
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
            root = Path(tmp) / "root"
            p = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True)
            if p.returncode:
                deb.unlink(missing_ok=True)  # a truncated download must not stick
                raise EnvironmentProblem(f"guest image: can't unpack {deb.name}: {_last_line(p.stderr)}")
            kernels = sorted((root / "boot").glob("vmlinuz-*"))
            modules = sorted((root / "lib" / "modules").glob("*")) or sorted((root / "usr/lib/modules").glob("*"))
            if not kernels or not modules:
                raise EnvironmentProblem(f"guest image: {deb.name} holds no /boot/vmlinuz-* or modules")
            initrd = build_initramfs(modules[0])
            out.mkdir(parents=True, exist_ok=True)
            staged = Path(tmp) / "initrd"
            staged.write_bytes(initrd)
            if not image.kernel.is_file():
                shutil.copyfile(kernels[0], Path(tmp) / "vmlinuz")
                os.replace(Path(tmp) / "vmlinuz", image.kernel)
            os.replace(staged, image.initrd)
        for old in out.glob("initrd-*.img"):  # earlier builds of this kernel
            if old != image.initrd:
                old.unlink(missing_ok=True)
        for other in cache_dir.iterdir():  # other kernel versions, and their .debs
            if other.is_dir() and other.name not in (version, "debs") and not other.name.startswith("."):
                shutil.rmtree(other, ignore_errors=True)
        for old_deb in (cache_dir / "debs").glob("*.deb"):
            if old_deb != deb:
                old_deb.unlink(missing_ok=True)
        return image


if __name__ == "__main__":
    img = ensure_guest_image()
    print(f"{img.kernel}\n{img.initrd}\n{img.kernel_version}")
