"""Which VM a MAC or a tap belongs to: libvirt's domains, or the process holding the tap.

libvirt is asked through its Python bindings on a read-only connection (tapttrace never changes a
domain). Without the bindings or a reachable daemon, the XML libvirt's qemu driver keeps on disk
stands in, and without libvirt at all, qemu's `-name guest=NAME` of the process holding the tap
(or that process's command name). `--vm NAME` needs libvirt; naming a MAC or a tap never fails.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from .config import parse_mac
from .errors import EnvironmentProblem, UsageError
from .libvirt_xml import LibvirtInterface, parse_domain_xml
from .taps import TapHolder

DEFAULT_URI = "qemu:///system"
LIBVIRT_DIRS = ("/run/libvirt/qemu", "/etc/libvirt/qemu")  # running domains' status XML, defined domains

# virDomainState values (libvirt-domain.h), as `virsh domstate` names them
_STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed",
           7: "pmsuspended"}


@dataclass(frozen=True)
class VmInventory:
    """Every interface of every domain one libvirt knows, and where that knowledge came from."""

    interfaces: tuple[LibvirtInterface, ...] = ()
    source: str = ""  # the URI, "files" (XML on disk), or "" (no libvirt here)
    problem: str = ""  # why libvirt could not be asked, when it couldn't

    def by_mac(self, mac: str) -> list[LibvirtInterface]:
        """Interfaces carrying `mac`, running domains first."""
        return sorted((i for i in self.interfaces if i.mac == mac), key=lambda i: not i.live)

    def by_tap(self, dev: str) -> Optional[LibvirtInterface]:
        """The running domain's interface whose tap is `dev` (tap names are host-wide in libvirt)."""
        return next((i for i in self.interfaces if i.live and i.target_dev == dev), None)

    def domain(self, name: str) -> list[LibvirtInterface]:
        return [i for i in self.interfaces if i.domain == name]

    def domain_names(self) -> list[str]:
        return sorted({i.domain for i in self.interfaces})


def _bindings():
    try:
        import libvirt  # Debian's python3-libvirt; the venv sees it through --system-site-packages
    except ImportError:
        return None
    # The bindings print every error to stderr by default; tapttrace reports its own.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def read_from_libvirt(uri: str) -> VmInventory:
    """Ask the daemon at `uri`; EnvironmentProblem when the bindings or the daemon are missing."""
    libvirt = _bindings()
    if libvirt is None:
        raise EnvironmentProblem("libvirt's Python bindings are not installed (apt install python3-libvirt)")
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as err:
        raise EnvironmentProblem(f"cannot connect to libvirt at {uri}: {err.get_error_message()} "
                                 "(is libvirtd running? --connect URI names another)") from None
    try:
        found: list[LibvirtInterface] = []
        for dom in conn.listAllDomains(0):
            try:
                xml = dom.XMLDesc(0)
                state = _STATES.get(dom.state()[0], "")
                live = bool(dom.isActive())
            except libvirt.libvirtError:
                continue  # the domain went away while we listed
            found.extend(parse_domain_xml(xml, uri, live=live, state=state))
        return VmInventory(tuple(sorted(found, key=lambda i: not i.live)), uri)
    finally:
        conn.close()


def read_from_files(dirs: Sequence[str] = LIBVIRT_DIRS) -> VmInventory:
    """The XML libvirt's qemu driver keeps on disk: running domains' status first, then definitions."""
    found: list[LibvirtInterface] = []
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*.xml"))):
            try:
                with open(path, encoding="utf-8") as f:
                    found.extend(parse_domain_xml(f.read(), path))
            except (OSError, UnicodeDecodeError):
                continue  # unreadable or vanished: libvirt rewrites these files as domains change
    return VmInventory(tuple(sorted(found, key=lambda i: not i.live)), "files" if found else "")


def read_domains(uri: Optional[str] = None) -> VmInventory:
    """What libvirt knows. An explicit `uri` must answer; the default one may be absent (XML on disk then)."""
    if uri is not None:
        return read_from_libvirt(uri)
    try:
        return read_from_libvirt(DEFAULT_URI)
    except EnvironmentProblem as err:
        files = read_from_files()
        return VmInventory(files.interfaces, files.source, err.message)


def resolve_vm(inventory: VmInventory, name: str, mac: Optional[str] = None) -> LibvirtInterface:
    """The one interface of domain `name` to follow or diagnose (`mac` chooses among several)."""
    ifaces = [i for i in inventory.domain(name) if i.mac]
    if not inventory.domain(name):
        known = ", ".join(inventory.domain_names()) or "none"
        raise UsageError(f"--vm {name}: no such domain on {inventory.source or DEFAULT_URI} (domains: {known})")
    if not ifaces:
        raise UsageError(f"--vm {name}: the domain has no network interface")
    if mac is not None:
        mac = parse_mac(mac)
        match = [i for i in ifaces if i.mac == mac]
        if not match:
            raise UsageError(f"--vm {name} has no interface with MAC {mac} (it has {_listing(ifaces)})")
        return match[0]
    if len(ifaces) > 1:
        raise UsageError(f"--vm {name} has {len(ifaces)} interfaces ({_listing(ifaces)}): give the MAC of one "
                         "as well")
    return ifaces[0]


def guest_mac(mac: Optional[str], vm: Optional[str], uri: Optional[str]) -> tuple[str, VmInventory]:
    """The MAC a command works on (given, or --vm's) and libvirt's domains to name things with."""
    if vm is None:
        if mac is None:
            raise UsageError("give the guest's MAC, or --vm NAME")
        mac = parse_mac(mac)  # a bad MAC fails before libvirt is asked
        return mac, read_domains(uri)
    inventory = read_from_libvirt(uri or DEFAULT_URI)
    return resolve_vm(inventory, vm, mac).mac, inventory


def _listing(ifaces: Iterable[LibvirtInterface]) -> str:
    return "; ".join(f"{i.mac} type='{i.type}'" + (f" on {i.target_dev}" if i.target_dev else "") for i in ifaces)


def describe(iface: LibvirtInterface) -> str:
    """'vm web1, <interface type='bridge'> on vnet0' for headers and notes."""
    where = f" on {iface.target_dev}" if iface.target_dev else ""
    state = "" if iface.state in ("", "running") else f", {iface.state}"
    return f"vm {iface.domain} (<interface type='{iface.type}'>{where}{state})"


def vm_of_mac(inventory: VmInventory, mac: str, taps: Iterable[tuple[int, str, str]],
              holders: Iterable[TapHolder]) -> str:
    """The VM a guest MAC belongs to: libvirt's domain with that MAC, else the holder of a tap
    carrying the MAC or libvirt's fe: form of it. `taps` are (netns inode, name, MAC) of the host's taps."""
    known = inventory.by_mac(mac)
    if known:
        return known[0].domain
    ours = {(ns, name) for ns, name, tap_mac in taps if tap_mac in (mac, "fe" + mac[2:])}
    return next((h.vm_name for h in holders if (h.tap_netns, h.iff) in ours and h.vm_name), "")


def tap_vm_names(inventory: VmInventory, holders: Iterable[TapHolder], root_netns: int) -> dict[tuple[int, str], str]:
    """(tap's netns inode, tap name) -> VM name: libvirt's domain where it has one (libvirt's qemu
    driver keeps taps in the root namespace), else the holder's name."""
    names: dict[tuple[int, str], str] = {}
    for h in holders:
        iface = inventory.by_tap(h.iff) if h.tap_netns == root_netns else None
        name = iface.domain if iface is not None else h.vm_name
        if name:
            names.setdefault((h.tap_netns, h.iff), name)
    return names
