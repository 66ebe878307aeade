"""Network namespaces: find them, name them, and run netlink/proc work inside them."""
from __future__ import annotations

import ctypes
import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

from pyroute2 import IPRoute

from .errors import KernelError, UsageError

CLONE_NEWNET = 0x40000000
RUN_NETNS = "/run/netns"
# /proc/1 is the usual anchor for init_net, but a sandbox's pid 1 may refuse us its ns link;
# kthreadd (pid 2) always lives in init_net, so it is the fallback.
ROOT_CANDIDATES = ("1", "2")

_NS_LINK = re.compile(r"^net:\[(\d+)\]$")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Netns:
    """A network namespace: how the user names it, its inode (the id events carry), a path to enter it."""

    name: str  # "root", a name under /run/netns, or "pid:<pid>"
    inode: int
    path: str


def ns_inode(path: str) -> int:
    """Inode of the namespace a /proc ns link or a bind-mounted ns file points to."""
    # readlink works on links whose target we may not stat (and on fixture trees)
    try:
        match = _NS_LINK.match(os.readlink(path))
        if match:
            return int(match.group(1))
    except OSError:
        pass
    return os.stat(path).st_ino


def root_netns(proc_root: str = "/proc") -> Netns:
    """The initial network namespace (init_net)."""
    last: Optional[OSError] = None
    for pid in ROOT_CANDIDATES:
        path = f"{proc_root}/{pid}/ns/net"
        try:
            return Netns("root", ns_inode(path), path)
        except OSError as err:
            last = err
    raise KernelError(f"cannot read the root network namespace: {last}")


def named_netns(run_dir: str = RUN_NETNS) -> list[Netns]:
    """Namespaces named by `ip netns add` (bind mounts under /run/netns), sorted by name."""
    try:
        names = sorted(os.listdir(run_dir))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        path = os.path.join(run_dir, name)
        try:
            found.append(Netns(name, os.stat(path).st_ino, path))
        except OSError:
            continue  # removed while we looked, or a leftover file that is no ns mount
    return found


def _pids(proc_root: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(proc_root) if d.isdigit())


def process_netns(proc_root: str = "/proc") -> dict[int, int]:
    """Map netns inode -> lowest pid living in it, over all readable processes."""
    holders: dict[int, int] = {}
    for pid in _pids(proc_root):
        try:
            inode = ns_inode(f"{proc_root}/{pid}/ns/net")
        except OSError:
            continue  # exited, or not ours to read
        holders.setdefault(inode, pid)
    return holders


def list_netns(
    include_unnamed: bool = False, *, run_dir: str = RUN_NETNS, proc_root: str = "/proc"
) -> list[Netns]:
    """Root first, then named namespaces, then (optionally) ones only processes hold; one entry per inode."""
    root = root_netns(proc_root)
    result = [root]
    seen = {root.inode}
    for ns in named_netns(run_dir):
        if ns.inode not in seen:
            seen.add(ns.inode)
            result.append(ns)
    if include_unnamed:
        for inode, pid in sorted(process_netns(proc_root).items(), key=lambda item: item[1]):
            if inode not in seen:
                seen.add(inode)
                result.append(Netns(f"pid:{pid}", inode, f"{proc_root}/{pid}/ns/net"))
    return result


def resolve_netns(name: str, *, run_dir: str = RUN_NETNS, proc_root: str = "/proc") -> Netns:
    """The namespace a user named: "root", an `ip netns` name, "pid:<pid>" or an inode number."""
    known = list_netns(run_dir=run_dir, proc_root=proc_root)
    for ns in known:
        if ns.name == name:
            return ns
    inode: Optional[int] = None
    path = ""
    if name.startswith("pid:") and name[4:].isdigit():
        path = f"{proc_root}/{int(name[4:])}/ns/net"
        try:
            inode = ns_inode(path)
        except OSError:
            inode = None
    elif name.isdigit() or _NS_LINK.match(name):
        inode = int(name) if name.isdigit() else int(_NS_LINK.match(name).group(1))  # type: ignore[union-attr]
        for ns in list_netns(True, run_dir=run_dir, proc_root=proc_root):
            if ns.inode == inode:
                return ns
        inode = None
    if inode is not None:
        # a pid in a named namespace gets that namespace's name, so devices match by name
        for ns in known:
            if ns.inode == inode:
                return ns
        return Netns(name, inode, path)
    raise UsageError(f"unknown network namespace '{name}' (see `ip netns list`)")


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def entered(ns: Netns) -> Iterator[None]:
    """Run the block with the calling thread inside `ns`; other threads stay where they are."""
    # setns(2) in this thread is ~50x cheaper than pyroute2's netns=, which forks a child per
    # socket. Sockets made inside keep the namespace; /proc/sys/net follows the thread.
    target = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(target)
        raise
    try:
        try:
            _setns(target)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            # `ip netns del` unmounts the namespace before it unlinks the name: opened in between,
            # the path is a plain file. Gone, like a name that no longer exists.
            raise FileNotFoundError(errno.ENOENT, f"network namespace {ns.name} went away", ns.path) from err
        try:
            yield
        finally:
            try:
                _setns(home)
            except OSError as err:
                # staying in the wrong namespace would mislabel everything after: stop here
                raise KernelError(f"cannot return to our network namespace: {err}") from err
    finally:
        os.close(target)
        os.close(home)


@contextmanager
def iproute(ns: Netns) -> Iterator[IPRoute]:
    """An rtnetlink handle bound to `ns`, closed on every exit path."""
    # Only the socket is bound to `ns`: pyroute2 calls that use ioctls (tuntap creation)
    # act in the calling thread's namespace, so wrap those in entered(ns) as well.
    with entered(ns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()
