"""Find the guest's tap in a snapshot: --tap, libvirt's domain XML, libvirt's fe: convention, its MAC, the FDB."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional

from ..errors import UsageError
from ..libvirt_xml import LibvirtInterface, interfaces_for
from ..records import Device
from ..snapshot import FdbHit, Snapshot, normalize_mac
from .model import Target


def libvirt_tap_mac(mac: str) -> str:
    """The address libvirt gives a tap it creates: fe + the guest MAC's last five bytes."""
    return "fe" + normalize_mac(mac)[2:]


def locate(snapshot: Snapshot, mac: str, tap: Optional[str] = None, ips: Sequence[str] = (),
           domains: Iterable[LibvirtInterface] = ()) -> Target:
    """Where the guest's tap is, and how that is known; UsageError for a --tap naming no device."""
    mac = normalize_mac(mac)
    hits = snapshot.find_mac(mac).fdb
    xml = interfaces_for(domains, mac)
    devices = snapshot.devices()
    notes: list[str] = []

    def found(how: str, named: list[Device], iface: Optional[LibvirtInterface] = None) -> Target:
        ranked = _ranked(snapshot, named, hits, mac)
        if len(ranked) > 1:
            notes.append(f"{len(ranked)} devices fit ({', '.join(_where(d) for d in ranked)}); "
                         f"using {_where(ranked[0])}: pass --tap to choose")
        return _target(snapshot, mac, ranked[0], how, hits, iface or (xml[0] if xml else None), tuple(ips),
                       tuple(ranked[1:]), tuple(notes))

    if tap is not None:
        named = [d for d in devices if d.name == tap]
        if not named:
            raise UsageError(f"--tap {tap}: no network interface of that name in any namespace "
                             "(see `ip link` and `ip netns list`)")
        return found("--tap", named)
    for iface in xml:
        if not iface.target_dev:
            continue
        named = [d for d in devices if d.name == iface.target_dev]
        if named:
            return found("libvirt-xml", named, iface)
        notes.append(f"libvirt domain {iface.domain} names {iface.target_dev} for {mac} ({iface.path}), "
                     "but no device has that name" + ("" if iface.live else ": the domain is not running"))
    convention = [d for d in devices if d.is_tap and d.mac == libvirt_tap_mac(mac)]
    if convention:
        return found("libvirt-convention", convention)
    carrying = [d for d in devices if d.is_tap and d.mac == mac]
    if carrying:
        return found("carries-guest-mac", carrying)
    learned = _fdb_taps(snapshot, hits)
    if learned:
        return found("fdb", learned)
    elsewhere = [h for h in hits if not h.entry.permanent and h.entry.master]
    for h in elsewhere:
        notes.append(f"bridge {h.entry.master}{_ns(h.netns)} learned {mac} on {h.entry.dev}, which is no tap: "
                     "the guest may live behind it (another host, or a container)")
    return Target(mac, None, "none", ips=tuple(ips), libvirt=xml[0] if xml else None, fdb=hits, notes=tuple(notes))


def _target(snapshot: Snapshot, mac: str, dev: Device, how: str, hits: tuple[FdbHit, ...],
            iface: Optional[LibvirtInterface], ips: tuple[str, ...], others: tuple[Device, ...],
            notes: tuple[str, ...]) -> Target:
    ns = snapshot.netns(dev.netns)
    port_of = ns.port(dev.name)
    bridge, port = port_of if port_of else (None, None)
    return Target(mac, dev, how, ns, bridge, port, tuple(snapshot.holders(dev)), ips, iface, hits, others, notes)


def _fdb_taps(snapshot: Snapshot, hits: tuple[FdbHit, ...]) -> list[Device]:
    # a learned or static entry on a tap port: the guest's frames came from there (or someone said so)
    found = []
    for h in hits:
        if h.entry.permanent or not h.entry.master:
            continue
        dev = snapshot.netns(h.netns).device(h.entry.dev)
        if dev is not None and dev.is_tap and dev not in found:
            found.append(dev)
    return found


def _ranked(snapshot: Snapshot, devices: list[Device], hits: tuple[FdbHit, ...], mac: str) -> list[Device]:
    """Most plausible first: held open, a bridge port, where the MAC was learned, up, in the root namespace."""
    learned_in = {h.netns for h in hits}

    def score(d: Device) -> tuple:
        ns = snapshot.netns(d.netns)
        return (bool(snapshot.holders(d)), ns.port(d.name) is not None, ns.name in learned_in,
                d.mac in (mac, libvirt_tap_mac(mac)), d.is_tap, d.oper_up, ns.name == "root")

    return sorted(devices, key=score, reverse=True)


def _where(d: Device) -> str:
    return f"{d.name}{_ns(d.netns_name)}"


def _ns(name: str) -> str:
    return "" if name == "root" else f" in {name}"
