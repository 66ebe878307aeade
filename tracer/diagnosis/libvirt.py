"""libvirt's view of a guest NIC: the <interface> elements of domain XML, and what they should say.

Read from /run/libvirt/qemu/*.xml (running domains: <domstatus> around <domain>, with the tap
name libvirt gave) and /etc/libvirt/qemu/*.xml (defined domains). Parsing is pure; only
read_libvirt_domains touches files.
"""
from __future__ import annotations

import glob
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from ..snapshot import normalize_mac

LIBVIRT_DIRS = ("/run/libvirt/qemu", "/etc/libvirt/qemu")


@dataclass(frozen=True)
class LibvirtInterface:
    """One <interface> of one domain."""

    domain: str
    path: str  # the file it was read from
    live: bool  # from a running domain's status XML (then target_dev is the real tap)
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


def parse_domain_xml(text: str, path: str = "") -> list[LibvirtInterface]:
    """The interfaces of one domain (or domstatus) document; [] for text that is no domain."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return []
    live = root.tag == "domstatus"
    state = root.get("state", "") if live else ""
    dom = root.find("domain") if live else root
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
            mtu=int(mtu.get("size")) if mtu is not None and (mtu.get("size") or "").isdigit() else None,
            isolated=port is not None and port.get("isolated") == "yes",
            link_down=link is not None and link.get("state") == "down",
            filterref=filt.get("filter", "") if filt is not None else "",
            xml=_element_text(iface),
        ))
    return found


def read_libvirt_domains(dirs: Sequence[str] = LIBVIRT_DIRS) -> list[LibvirtInterface]:
    """Every interface of every domain libvirt's qemu driver keeps XML for (live ones first)."""
    found: list[LibvirtInterface] = []
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*.xml"))):
            try:
                with open(path, encoding="utf-8") as f:
                    found.extend(parse_domain_xml(f.read(), path))
            except (OSError, UnicodeDecodeError):
                continue  # unreadable or vanished: libvirt rewrites these files as domains change
    return sorted(found, key=lambda i: not i.live)


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
