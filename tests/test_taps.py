"""Tap holders: /proc fixture trees without root, a real held (and moved) tap with root."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from netns_helpers import lab_namespaces

from tracer.netns import Netns, entered, iproute
from tracer.taps import TapHolder, find_tap_holders, parse_fdinfo_iff

# ------------------------------------------------------------------ fixture /proc trees

TUN_FDINFO = "pos:\t0\nflags:\t02100002\nmnt_id:\t24\nino:\t105\niff:\t{iff}\n"
SOCK_FDINFO = "pos:\t0\nflags:\t02000002\nmnt_id:\t8\nino:\t31337\n"


def make_proc(root: Path, pid: int, comm: str, cmdline: list[str], netns: int, fds: dict) -> None:
    """One /proc/<pid> with fd links and fdinfo files; fds maps fd -> (link target, fdinfo or None)."""
    base = root / str(pid)
    (base / "fd").mkdir(parents=True)
    (base / "fdinfo").mkdir()
    (base / "ns").mkdir()
    (base / "comm").write_text(comm + "\n")
    (base / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
    os.symlink(f"net:[{netns}]", base / "ns" / "net")
    for fd, (target, info) in fds.items():
        os.symlink(target, base / "fd" / str(fd))
        if info is not None:
            (base / "fdinfo" / str(fd)).write_text(info)


@pytest.fixture
def proc_tree(tmp_path: Path) -> Path:
    qemu = ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm1", "-netdev", "tap,fd=31,id=hostnet0"]
    make_proc(tmp_path, 4242, "qemu-system-x86", qemu, 4026532001, {
        0: ("/dev/null", "pos:\t0\n"),
        3: ("socket:[1234]", SOCK_FDINFO),
        31: ("/dev/net/tun", TUN_FDINFO.format(iff="vnet0")),
        32: ("/dev/net/tun", TUN_FDINFO.format(iff="vnet0")),  # second queue of a multiqueue tap
        33: ("/dev/net/tun", TUN_FDINFO.format(iff="")),  # opened, never attached (or detached)
        34: ("/dev/net/tun", None),  # closed between readlink and fdinfo read
        35: ("/dev/vhost-net", "pos:\t0\nflags:\t02\n"),
    })
    make_proc(tmp_path, 77, "libvirtd", ["/usr/sbin/libvirtd"], 4026531840, {
        9: ("/var/lib/docker/rootfs/dev/net/tun", TUN_FDINFO.format(iff="tap-c1")),  # other root
        10: ("anon_inode:[eventfd]", "pos:\t0\neventfd-count: 0\n"),
    })
    make_proc(tmp_path, 5, "bash", ["bash"], 4026531840, {0: ("/dev/pts/0", "pos:\t0\n")})
    (tmp_path / "1000" / "ns").mkdir(parents=True)  # a process that exited: no fd dir left
    (tmp_path / "self").mkdir()  # non-pid entries are ignored
    (tmp_path / "sys").mkdir()
    return tmp_path


def test_holders_from_fixture_tree(proc_tree: Path) -> None:
    holders = find_tap_holders(str(proc_tree))
    assert holders == [
        TapHolder(77, 9, "libvirtd", ("/usr/sbin/libvirtd",), 4026531840, "tap-c1", None),
        TapHolder(4242, 31, "qemu-system-x86",
                  ("/usr/bin/qemu-system-x86_64", "-name", "guest=vm1", "-netdev", "tap,fd=31,id=hostnet0"),
                  4026532001, "vnet0", None),
        TapHolder(4242, 32, "qemu-system-x86",
                  ("/usr/bin/qemu-system-x86_64", "-name", "guest=vm1", "-netdev", "tap,fd=31,id=hostnet0"),
                  4026532001, "vnet0", None),
    ]


def test_fixture_tree_never_asks_the_kernel(proc_tree: Path) -> None:
    # pids of a fixture tree are not real processes: pidfd_getfd must not be tried on them
    assert all(h.dev_netns is None for h in find_tap_holders(str(proc_tree)))


def test_tap_netns_prefers_the_device_namespace() -> None:
    moved = TapHolder(1, 3, "qemu", (), netns=100, iff="vnet0", dev_netns=200)
    unknown = TapHolder(1, 3, "qemu", (), netns=100, iff="vnet0")
    assert (moved.tap_netns, unknown.tap_netns) == (200, 100)


def test_parse_fdinfo_iff() -> None:
    assert parse_fdinfo_iff(TUN_FDINFO.format(iff="vnet12")) == "vnet12"
    assert parse_fdinfo_iff(TUN_FDINFO.format(iff="")) == ""
    assert parse_fdinfo_iff(SOCK_FDINFO) == ""


def test_unreadable_ns_link_gives_zero(tmp_path: Path) -> None:
    make_proc(tmp_path, 9, "qemu", ["qemu"], 1, {4: ("/dev/net/tun", TUN_FDINFO.format(iff="t0"))})
    os.unlink(tmp_path / "9" / "ns" / "net")
    assert [(h.iff, h.netns) for h in find_tap_holders(str(tmp_path))] == [("t0", 0)]


# ------------------------------------------------------------------ real kernel

HOLDER = r"""
import fcntl, os, struct, sys
with open("/proc/self/comm", "w") as f:
    f.write("ttsnap-holder")
fds = []
for name in sys.argv[1:]:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    if name != "-":  # "-": an fd that is never attached to a device
        # TUNSETIFF with IFF_TAP | IFF_NO_PI, as qemu's tap backend does
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0002 | 0x1000))
    fds.append(fd)
print(" ".join(map(str, fds)), flush=True)
sys.stdin.read()  # lives until the test closes our stdin, or dies with it
"""


def require_root() -> None:
    """Skip without root, except in CI where a kernel test must run."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("kernel tests need root")
        pytest.skip("needs root")


@contextmanager
def tap_holder(ns: Netns, *taps: str) -> Iterator[tuple[subprocess.Popen, list[int]]]:
    """A process in `ns` holding a tun fd per name (creating those taps), ended on exit."""
    with entered(ns):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, *taps],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        fds = [int(x) for x in proc.stdout.readline().split()]
        if len(fds) != len(taps):
            raise RuntimeError(f"tap holder failed (exit {proc.wait()})")
        yield proc, fds
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.kernel
def test_real_holder_of_a_tap_moved_to_another_namespace() -> None:
    require_root()
    with lab_namespaces("taps-a", "taps-b") as (ns_a, ns_b), tap_holder(ns_a, "ttap0", "-") as (proc, fds):
        # the tap was created in ns_a by its holder; move it as an orchestrator might
        with iproute(ns_a) as ipr:
            (index,) = ipr.link_lookup(ifname="ttap0")
            ipr.link("set", index=index, net_ns_fd=ns_b.path)
        mine = [h for h in find_tap_holders() if h.pid == proc.pid]
        assert mine == [TapHolder(proc.pid, fds[0], "ttsnap-holder", tuple(proc.args), ns_a.inode,
                                  "ttap0", ns_b.inode)]
        assert mine[0].tap_netns == ns_b.inode != mine[0].netns
