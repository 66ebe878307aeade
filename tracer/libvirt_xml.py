"""libvirt's view of a guest NIC: the <interface> elements of domain XML, and what they should say.

Pure: the XML comes from libvirt's API (tracer.vms asks the daemon read-only) or from the files its
qemu driver keeps (/run/libvirt/qemu/*.xml: <domstatus> around <domain>, with the tap name libvirt
gave; /etc/libvirt/qemu/*.xml: defined domains).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

from .snapshot import normalize_mac


@dataclass(frozen=True)
class LibvirtInterface:
    """One <interface> of one domain."""

    domain: str
    path: str  # where it was read: the libvirt URI, or the file
    live: bool  # the domain is running (then target_dev is the real tap)
    state: str  # running | paused | shutoff | ... ("" when the file doesn't say)
    type: str  # bridge | network | ethernet | direct | ...
    mac: str
    target_dev: str = ""  # <target dev='vnet0'/>
    target_managed: bool = True  # managed='no': libvirt uses a tap someone else created, as it finds it
    source_bridge: str = ""  # <source bridge='br0'/> (type network: the network's bridge, when live)
    source_network: str = ""
    mtu: Optional[int] = None
    isolated: bool = False  # <port isolated='yes'/>
    link_down: bool = False  # <link state='down'/>: qemu reads and discards
    filterref: str = ""  # <filterref filter='clean-traffic'/>: libvirt nwfilter rules apply
    xml: str = ""  # the element as text, for showing the user


def parse_domain_xml(text: str, path: str = "", *, live: Optional[bool] = None,
                     state: Optional[str] = None) -> list[LibvirtInterface]:
    """The interfaces of one domain (or domstatus) document; [] for text that is no domain.

    Files say by their form whether the domain runs (<domstatus state=…>); the API says it apart."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return []
    status = root.tag == "domstatus"
    if live is None:
        live = status
    if state is None:
        state = root.get("state", "") if status else ""
    dom = root.find("domain") if status else root
    if dom is None or dom.tag != "domain":
        return []
    name = (dom.findtext("name") or "").strip()
    found = []
    for iface in dom.findall("./devices/interface"):
        mac_el = iface.find("mac")
        try:
            mac = normalize_mac(mac_el.get("address", "")) if mac_el is not None else ""
        except Exception:  # UsageError for a malformed address: skip it, it names no guest we look for
            mac = ""
        target = iface.find("target")
        source = iface.find("source")
        mtu = iface.find("mtu")
        port = iface.find("port")
        link = iface.find("link")
        filt = iface.find("filterref")
        found.append(LibvirtInterface(
            domain=name, path=path, live=live, state=state, type=iface.get("type", ""), mac=mac,
            target_dev=target.get("dev", "") if target is not None else "",
            target_managed=(target.get("managed", "yes") != "no") if target is not None else True,
            source_bridge=source.get("bridge", "") if source is not None else "",
            source_network=source.get("network", "") if source is not None else "",
            mtu=_mtu(mtu.get("size", "")) if mtu is not None else None,
            isolated=port is not None and port.get("isolated") == "yes",
            link_down=link is not None and link.get("state") == "down",
            filterref=filt.get("filter", "") if filt is not None else "",
            xml=_element_text(iface),
        ))
    return found


def _mtu(size: str) -> Optional[int]:
    """<mtu size='…'/>'s value; None when it is no decimal number (libvirt would refuse the domain).
    str.isdigit() is not enough: it says yes to '²', which int() refuses, and int() refuses more
    than 4300 digits."""
    if not (size.isascii() and size.isdigit()) or len(size) > 9:
        return None
    return int(size)


def interfaces_for(domains: Iterable[LibvirtInterface], mac: str) -> list[LibvirtInterface]:
    """The interfaces carrying `mac`, live ones first."""
    return sorted((i for i in domains if i.mac == mac), key=lambda i: not i.live)


def bridge_interface_xml(mac: str, bridge: str, *, mtu: Optional[int] = None) -> str:
    """What a domain's <interface> says to put the guest on `bridge` with libvirt managing the tap."""
    lines = ["<interface type='bridge'>", f"  <mac address='{mac}'/>", f"  <source bridge='{bridge}'/>",
             "  <model type='virtio'/>"]
    if mtu:
        lines.append(f"  <mtu size='{mtu}'/>")
    return "\n".join(lines + ["</interface>"])


def _element_text(el: ET.Element) -> str:
    el = _copy_without_tail(el)
    ET.indent(el, "  ")
    return ET.tostring(el, encoding="unicode").strip()


def _copy_without_tail(el: ET.Element) -> ET.Element:
    # ET.indent rewrites whitespace in place: work on a copy, not the parsed document
    copy = ET.fromstring(ET.tostring(el))
    copy.tail = None
    return copy
