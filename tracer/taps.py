"""Which process holds each tap open (qemu, usually), found through /proc/*/fdinfo."""
from __future__ import annotations

import ctypes
import fcntl
import os
from dataclasses import dataclass
from typing import Optional

from .netns import ns_inode

TUNGETDEVNETNS = 0x54E3  # _IO('T', 227), Linux >= 5.2
SYS_PIDFD_GETFD = 438  # same number on every architecture (unified syscall table)

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class TapHolder:
    """One open tun/tap file descriptor of one process, and the interface it is attached to."""

    pid: int
    fd: int
    comm: str
    cmdline: tuple[str, ...]
    netns: int  # inode of the process's network namespace (0 when unreadable)
    iff: str  # interface name from fdinfo's `iff:` line
    # The tap's own namespace. A tap can be moved after qemu opened it, so the process's
    # namespace is only a guess; None when the kernel could not be asked.
    dev_netns: Optional[int] = None

    @property
    def vm_name(self) -> str:
        """The VM this process stands for without libvirt: qemu's -name guest=NAME, else its command name."""
        return qemu_guest_name(self.cmdline) or self.comm

    @property
    def tap_netns(self) -> int:
        """Best knowledge of the namespace the tap device lives in."""
        return self.dev_netns if self.dev_netns is not None else self.netns


def qemu_guest_name(cmdline: tuple[str, ...]) -> str:
    """The guest name from qemu's `-name guest=NAME,...` (or `-name NAME`), "" when absent."""
    for i, arg in enumerate(cmdline[:-1]):
        if arg == "-name":
            value = cmdline[i + 1]
            for part in value.split(","):
                if part.startswith("guest="):
                    return part[len("guest="):]
            first = value.split(",")[0]
            return first if "=" not in first else ""
    return ""


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def parse_fdinfo_iff(text: str) -> str:
    """The interface name of a tun fd's fdinfo, "" when it is no tun fd or is detached."""
    for line in text.splitlines():
        if line.startswith("iff:"):
            return line[4:].strip()
    return ""


def _looks_like_tun(target: str) -> bool:
    # readlink is cheap and fdinfo reads are not: skip sockets, pipes and files before reading.
    # Containers and chroots may show the device under another root, hence only the tail.
    return target == "/dev/net/tun" or target.endswith("/net/tun")


def device_netns(pid: int, fd: int) -> Optional[int]:
    """Ask the kernel which namespace the tap behind `pid`'s `fd` lives in."""
    try:
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None
    try:
        dup = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            return None
        try:
            nsfd = fcntl.ioctl(dup, TUNGETDEVNETNS)
        except OSError:
            return None
        finally:
            os.close(dup)
        try:
            return os.fstat(nsfd).st_ino
        finally:
            os.close(nsfd)
    finally:
        os.close(pidfd)


def _holders_of_pid(proc_root: str, pid: int, ask_kernel: bool) -> list[TapHolder]:
    base = f"{proc_root}/{pid}"
    try:
        fds = sorted(int(fd) for fd in os.listdir(f"{base}/fd") if fd.isdigit())
    except OSError:
        return []  # exited or not readable
    found = []
    comm: Optional[str] = None
    for fd in fds:
        try:
            if not _looks_like_tun(os.readlink(f"{base}/fd/{fd}")):
                continue
        except OSError:
            continue
        iff = parse_fdinfo_iff(_read(f"{base}/fdinfo/{fd}") or "")
        if not iff:
            continue
        if comm is None:
            comm = (_read(f"{base}/comm") or "").strip()
            cmdline = tuple(a for a in (_read(f"{base}/cmdline") or "").split("\0") if a)
            try:
                netns = ns_inode(f"{base}/ns/net")
            except OSError:
                netns = 0
        found.append(
            TapHolder(
                pid=pid,
                fd=fd,
                comm=comm,
                cmdline=cmdline,
                netns=netns,
                iff=iff,
                dev_netns=device_netns(pid, fd) if ask_kernel else None,
            )
        )
    return found


def find_tap_holders(proc_root: str = "/proc", *, ask_kernel: Optional[bool] = None) -> list[TapHolder]:
    """Every open tun/tap fd of every process, sorted by pid and fd."""
    # Asking the kernel (pidfd_getfd + TUNGETDEVNETNS) only makes sense on the live /proc.
    if ask_kernel is None:
        ask_kernel = os.path.realpath(proc_root) == "/proc"
    holders: list[TapHolder] = []
    for entry in sorted(os.listdir(proc_root), key=lambda d: (len(d), d)):
        if entry.isdigit():
            holders.extend(_holders_of_pid(proc_root, int(entry), ask_kernel))
    return holders
