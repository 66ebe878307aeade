"""VM naming without root: domain XML as a real libvirtd 9.0 returned it (tests/recordings/libvirt-*.xml,
recorded by tracer.lab.libvirt), --vm resolution and its errors, names for taps from libvirt or qemu."""
from __future__ import annotations

from pathlib import Path

import pytest

from tracer.errors import UsageError
from tracer.libvirt_xml import parse_domain_xml
from tracer.taps import TapHolder
from tracer.vms import VmInventory, describe, read_from_files, resolve_vm, tap_vm_names, vm_of_mac

REC = Path(__file__).parent / "recordings"
URI = "qemu:///system"


def iface(name: str, **kw):
    (i,) = parse_domain_xml((REC / name).read_text(), URI, **kw)
    return i


BRIDGE = iface("libvirt-bridge.xml", live=True, state="running")
ETHERNET = iface("libvirt-ethernet.xml", live=True, state="running")
INV = VmInventory((BRIDGE, ETHERNET), URI)


def holder(pid: int, iff: str, cmdline: tuple[str, ...], comm: str = "qemu-system-x86", netns: int = 1) -> TapHolder:
    return TapHolder(pid=pid, fd=31, comm=comm, cmdline=cmdline, netns=netns, iff=iff)


def test_live_xml_from_the_api_names_type_tap_and_bridge():
    assert BRIDGE.domain == "ttlv-18270-0-br" and BRIDGE.type == "bridge" and BRIDGE.mac == "52:54:00:35:ea:91"
    assert BRIDGE.target_dev == "vnet0" and BRIDGE.source_bridge == "tv18270x0b" and BRIDGE.live
    assert ETHERNET.type == "ethernet" and not ETHERNET.target_managed and ETHERNET.target_dev == "tv18270x0t0"
    assert ETHERNET.path == URI and ETHERNET.state == "running"
    assert "managed=\"no\"" in ETHERNET.xml and ETHERNET.xml.startswith("<interface type=\"ethernet\">")


def test_the_api_says_whether_a_domain_runs_not_the_document():
    shutoff = iface("libvirt-bridge.xml", live=False, state="shutoff")
    assert not shutoff.live and shutoff.state == "shutoff"
    assert not iface("libvirt-bridge.xml").live  # a plain <domain> read from a file: a definition


def test_inventory_finds_by_mac_and_by_tap():
    assert INV.by_mac("52:54:00:5f:46:4d") == [ETHERNET]
    assert INV.by_tap("vnet0") is BRIDGE and INV.by_tap("nope") is None
    assert INV.domain_names() == ["ttlv-18270-0-br", "ttlv-18270-0-eth"]


def test_resolve_vm_picks_the_only_interface():
    assert resolve_vm(INV, "ttlv-18270-0-eth") is ETHERNET
    assert resolve_vm(INV, "ttlv-18270-0-eth", "52-54-00-5F-46-4D") is ETHERNET


def test_resolve_vm_errors_say_what_exists():
    with pytest.raises(UsageError, match=r"no such domain on qemu:///system \(domains: ttlv-18270-0-br, ttlv"):
        resolve_vm(INV, "web9")
    with pytest.raises(UsageError, match="has no interface with MAC 02:00:00:00:00:01"):
        resolve_vm(INV, "ttlv-18270-0-br", "02:00:00:00:00:01")
    with pytest.raises(UsageError, match="not a MAC"):
        resolve_vm(INV, "ttlv-18270-0-br", "nonsense")
    two = VmInventory((BRIDGE, ETHERNET.__class__(**{**ETHERNET.__dict__, "domain": BRIDGE.domain})), URI)
    with pytest.raises(UsageError, match="has 2 interfaces .* give the MAC of one as well"):
        resolve_vm(two, BRIDGE.domain)


def test_describe_a_vm_interface():
    assert describe(ETHERNET) == "vm ttlv-18270-0-eth (<interface type='ethernet'> on tv18270x0t0)"


def test_taps_are_named_by_libvirt_first_then_by_qemu_then_by_command():
    holders = [holder(10, "vnet0", ("qemu-system-x86_64", "-name", "guest=ttlv-18270-0-br,debug-threads=on")),
               holder(11, "tap7", ("qemu-system-x86_64", "-name", "guest=web7,debug-threads=on")),
               holder(12, "tap8", ("python3", "-m", "tracer.lab.guest"), comm="python3"),
               holder(13, "vnet0", ("qemu-system-x86_64",), netns=2)]
    names = tap_vm_names(INV, holders, root_netns=1)
    assert names[(1, "vnet0")] == "ttlv-18270-0-br"
    assert names[(1, "tap7")] == "web7"
    assert names[(1, "tap8")] == "python3"
    # libvirt's taps live in the root namespace: a vnet0 in another one is someone else's
    assert names[(2, "vnet0")] == "qemu-system-x86"


def test_vm_of_a_mac_libvirt_first_then_the_holder_of_its_tap():
    assert vm_of_mac(INV, BRIDGE.mac, [], []) == "ttlv-18270-0-br"
    taps = [(5, "vnet3", "fe:54:00:aa:bb:cc"), (5, "vnet4", "fe:54:00:00:00:01")]
    holders = [holder(20, "vnet3", ("qemu", "-name", "guest=db1"), netns=5)]
    assert vm_of_mac(INV, "52:54:00:aa:bb:cc", taps, holders) == "db1"
    assert vm_of_mac(INV, "52:54:00:00:00:01", taps, holders) == ""  # a tap nobody holds


def test_xml_on_disk_stands_in_without_a_daemon(tmp_path):
    status = tmp_path / "run"
    status.mkdir()
    text = (REC / "libvirt-ethernet.xml").read_text()
    (status / "ttlv-18270-0-eth.xml").write_text(f"<domstatus state='paused' reason='user' pid='99'>{text}</domstatus>")
    (status / "junk.xml").write_text("<not xml")
    inv = read_from_files((str(status), str(tmp_path / "missing")))
    (i,) = inv.interfaces
    assert inv.source == "files" and i.live and i.state == "paused" and i.target_dev == "tv18270x0t0"
    assert read_from_files((str(tmp_path / "missing"),)) == VmInventory((), "")
