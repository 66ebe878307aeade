"""The lab: pure helpers and the guest's answers, then real topologies on the kernel and their teardown."""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from tracer.lab import Lab, LabSpec, libvirt_tap_mac, remove_stale
from tracer.lab import guest as guest_module
from tracer.lab.guest import ETH_P_IPV6, Guest, arp_frame, checksum, icmp6_packet, link_local, wait_for_port
from tracer.lab.topology import RUN_NETNS, LabCommandFailed, random_guest_mac

ROOT = Path(__file__).resolve().parents[1]
GUEST_MAC = "52:54:00:12:34:56"
PEER_MAC = bytes.fromhex("020000000101")
# Healthy: each probe waits for its own reply (Lab.ping, up to PROBE_TIMEOUT), so the count is exact
# however busy the machine. Failing: no reply will ever come, so 0.3 s is enough to say so.
FAST = dict(count=2, interval=0.05)
FAILING = dict(count=1, timeout=0.3)
WAIT = 60  # seconds: an upper bound on waiting for a condition, never a measurement


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ip4(a: str) -> bytes:
    return ipaddress.IPv4Address(a).packed


def ip6(a: str) -> bytes:
    return ipaddress.IPv6Address(a).packed


# ---------------------------------------------------------------------------- pure


def test_libvirt_tap_mac_is_fe_and_the_last_five_bytes():
    assert libvirt_tap_mac("52:54:00:12:34:56") == "fe:54:00:12:34:56"
    assert libvirt_tap_mac("52:54:00:AB:CD:EF") == "fe:54:00:ab:cd:ef"


def test_random_guest_mac_is_libvirt_style_unicast():
    macs = {random_guest_mac() for _ in range(20)}
    assert all(re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", m) for m in macs)
    assert len(macs) > 1


def test_spec_rejects_an_unknown_tap_mac_mode():
    with pytest.raises(ValueError, match="tap_mac"):
        LabSpec(tap_mac="random")


def test_checksum_matches_rfc1071_example():
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_link_local_is_eui64_of_the_mac():
    assert link_local(GUEST_MAC) == "fe80::5054:ff:fe12:3456"


def test_guest_answers_arp_for_its_ip_only():
    g = Guest(GUEST_MAC, "198.51.100.10")
    ask = arp_frame(1, PEER_MAC, ip4("198.51.100.1"), b"\0" * 6, ip4("198.51.100.10"), b"\xff" * 6)
    reply = g.reply(ask)
    assert reply is not None
    assert reply[0:6] == PEER_MAC and reply[6:12] == mac_bytes(GUEST_MAC)
    assert struct.unpack_from("!H", reply, 20)[0] == 2  # op = reply
    assert reply[22:28] == mac_bytes(GUEST_MAC) and reply[28:32] == ip4("198.51.100.10")
    assert reply[32:38] == PEER_MAC and reply[38:42] == ip4("198.51.100.1")
    other = arp_frame(1, PEER_MAC, ip4("198.51.100.1"), b"\0" * 6, ip4("198.51.100.11"), b"\xff" * 6)
    assert g.reply(other) is None
    assert Guest(GUEST_MAC, "198.51.100.10", answer_arp=False).reply(ask) is None


def test_the_guest_waits_only_for_a_disabled_bridge_port_of_a_tap_that_is_up(tmp_path, monkeypatch):
    state = tmp_path / "t0" / "brport" / "state"
    sleeps = []

    def tap(flags: str, port_state: Optional[str]) -> None:
        (tmp_path / "t0").mkdir(exist_ok=True)
        (tmp_path / "t0" / "flags").write_text(flags + "\n")
        if port_state is None:
            state.unlink(missing_ok=True)
        else:
            state.parent.mkdir(exist_ok=True)
            state.write_text(port_state + "\n")

    def sleep(seconds: float) -> None:  # the bridge hears of the carrier while the guest waits
        sleeps.append(seconds)
        state.write_text("3\n")

    monkeypatch.setattr(guest_module.time, "sleep", sleep)
    # forwarding; set down; no bridge port; learning (a test's STP): returns without waiting
    for flags, port_state in (("0x1003", "3"), ("0x1002", "0"), ("0x1003", None), ("0x1003", "2")):
        tap(flags, port_state)
        wait_for_port("t0", sys_net=str(tmp_path))
        assert sleeps == []
    tap("0x1003", "0")  # up and disabled: waits until the port forwards
    wait_for_port("t0", sys_net=str(tmp_path))
    assert len(sleeps) == 1


def test_guest_announces_itself_with_a_gratuitous_arp():
    frame = Guest(GUEST_MAC, "198.51.100.10").announce()
    assert frame[0:6] == b"\xff" * 6 and frame[6:12] == mac_bytes(GUEST_MAC)
    assert frame[28:32] == frame[38:42] == ip4("198.51.100.10")  # sender IP == target IP


def test_guest_answers_icmp_echo_with_valid_checksums():
    payload = b"tapttrace"
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + payload)
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 7, 0, 64, 1, 0,
                                ip4("198.51.100.1"), ip4("198.51.100.10")))
    hdr[10:12] = struct.pack("!H", checksum(bytes(hdr)))
    frame = mac_bytes(GUEST_MAC) + PEER_MAC + b"\x08\x00" + bytes(hdr) + bytes(icmp)
    reply = Guest(GUEST_MAC, "198.51.100.10").reply(frame)
    assert reply is not None and reply[0:6] == PEER_MAC
    ip, echo = reply[14:34], reply[34:]
    assert checksum(ip) == 0 and checksum(echo) == 0
    assert ip[12:16] == ip4("198.51.100.10") and ip[16:20] == ip4("198.51.100.1")
    assert echo[0] == 0 and echo[4:] == bytes(icmp[4:])  # type echo-reply, same id/seq/payload


def test_guest_answers_neighbour_solicitation_and_echo6_only_with_ipv6():
    me, peer = ip6(link_local(GUEST_MAC)), ip6("fe80::ff:fe00:101")
    ns = struct.pack("!BBHI", 135, 0, 0, 0) + me + b"\x01\x01" + PEER_MAC
    solicited_node = ip6("ff02::1:ff12:3456")
    frame = b"\x33\x33\xff\x12\x34\x56" + PEER_MAC + struct.pack("!H", ETH_P_IPV6) + icmp6_packet(peer, solicited_node,
                                                                                                 ns, 255)
    assert Guest(GUEST_MAC, "198.51.100.10").reply(frame) is None
    na = Guest(GUEST_MAC, "198.51.100.10", ipv6=True).reply(frame)
    assert na is not None and na[0:6] == PEER_MAC
    msg = na[54:]
    assert msg[0] == 136 and msg[8:24] == me and msg[24:32] == b"\x02\x01" + mac_bytes(GUEST_MAC)
    assert struct.unpack_from("!I", msg, 4)[0] == 0x60000000  # solicited + override
    assert checksum(na[22:54] + struct.pack("!I3xB", len(msg), 58) + msg) == 0

    echo = bytes([128, 0, 0, 0]) + b"\x00\x07\x00\x01" + b"abc"
    frame = mac_bytes(GUEST_MAC) + PEER_MAC + struct.pack("!H", ETH_P_IPV6) + icmp6_packet(peer, me, echo, 64)
    reply = Guest(GUEST_MAC, "198.51.100.10", ipv6=True).reply(frame)
    assert reply is not None and reply[54] == 129 and reply[58:] == echo[4:]
    assert reply[22:38] == me and reply[38:54] == peer


# ---------------------------------------------------------------------------- kernel


def namespaces() -> set[str]:
    return {e.name for e in RUN_NETNS.iterdir()} if RUN_NETNS.is_dir() else set()


def gone(pid: int) -> bool:
    """No such process, or only a zombie its new parent hasn't reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_until(cond, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def link(lab: Lab, dev: str) -> dict:
    return json.loads(lab.hv("ip", "-j", "-d", "link", "show", "dev", dev).stdout)[0]


def fdb(lab: Lab, mac: str) -> list[str]:
    return [line for line in lab.hv("bridge", "fdb", "show", "br", lab.bridge).stdout.splitlines()
            if line.startswith(mac + " ")]


@pytest.mark.kernel
def test_healthy_lab_answers_remote_and_host():
    with Lab(LabSpec()) as lab:
        assert lab.ping_guest_from_remote(**FAST).received == 2
        assert lab.ping_guest_from_host(**FAST).received == 2
        tap = link(lab, lab.tap)
        assert tap["address"] == lab.tap_mac == libvirt_tap_mac(lab.guest_mac)
        assert tap["master"] == lab.bridge and tap["linkinfo"]["info_kind"] == "tun"
        # learned on the tap from the guest's frames (its gratuitous ARP first), not a local entry
        entries = fdb(lab, lab.guest_mac)
        assert entries and all("dev vnet0" in e and "permanent" not in e for e in entries)
        # the guest really is the tap's holder, in the hypervisor namespace
        assert os.stat(f"/proc/{lab.guest.pid}/ns/net").st_ino == lab.netns_inode(lab.hv_ns)
        assert lab.netns_inode(lab.hv_ns) != lab.netns_inode(lab.remote_ns)


@pytest.mark.kernel
def test_tap_with_the_guest_mac_is_local_on_the_bridge_until_the_libvirt_fix():
    with Lab(LabSpec(tap_mac="guest")) as lab:
        assert lab.tap_mac == lab.guest_mac
        assert lab.ping_guest_from_remote(**FAILING).received == 0
        assert lab.ping_guest_from_host(**FAST).received == 2
        (entry,) = fdb(lab, lab.guest_mac)
        assert "dev vnet0" in entry and "permanent" in entry  # the bridge takes it as its own
        lab.set_tap_mac(libvirt_tap_mac(lab.guest_mac))
        assert link(lab, lab.tap)["address"] == lab.tap_mac
        assert lab.ping_guest_from_remote(**FAST).received == 2


@pytest.mark.kernel
def test_the_bridge_knows_the_guest_when_the_lab_is_ready():
    """Before any test frame: the tap's port forwards and the guest's gratuitous ARP was learned on
    it, so a first ping to the guest is a forward, never an unknown-unicast flood (the guest used to
    write it before the bridge had heard of the tap's carrier: lost on a disabled port, twice in
    the kernel matrix on 6.12). Again after the guest is stopped (no carrier) and started."""
    with Lab(LabSpec()) as lab:
        for restart in (False, True):
            if restart:
                lab.stop_guest()
                # No carrier: the bridge flushes what it learned on the port once linkwatch tells it
                # (later, or not at all if the carrier is back first); forget the guest either way.
                lab.hv("bridge", "fdb", "del", lab.guest_mac, "dev", lab.tap, "master", check=False)
                assert fdb(lab, lab.guest_mac) == []
                lab.start_guest()
            assert link(lab, lab.tap)["linkinfo"]["info_slave_data"]["state"] == "forwarding"
            (entry,) = fdb(lab, lab.guest_mac)
            assert "dev vnet0" in entry and "permanent" not in entry


@pytest.mark.kernel
def test_guest_that_never_answers_arp_is_unreachable():
    # No gratuitous ARP either: the guest sends it just after it says it is ready, and one that
    # came after the remote's first ARP request (seen under load) filled the remote's incomplete
    # entry, and the guest, which answers pings, was reached.
    with Lab(LabSpec(guest_answers_arp=False, guest_announces=False)) as lab:
        assert lab.ping_guest_from_remote(**FAILING).received == 0
        assert lab.guest.poll() is None  # silent, not dead


@pytest.mark.kernel
def test_paused_and_non_reading_guests_answer_nothing():
    with Lab(LabSpec()) as lab:
        lab.pause_guest()
        assert lab.ping_guest_from_remote(**FAILING).received == 0
        lab.resume_guest()
        assert lab.ping_guest_from_remote(**FAST).received == 2
    with Lab(LabSpec(guest_reads=False)) as lab:
        assert lab.ping_guest_from_remote(**FAILING).received == 0
        assert lab.guest.poll() is None


@pytest.mark.kernel
def test_stopped_guest_leaves_the_tap_and_can_start_again():
    with Lab(LabSpec()) as lab:
        lab.stop_guest()
        assert "NO-CARRIER" in lab.hv("ip", "link", "show", "dev", lab.tap).stdout
        lab.start_guest()
        assert lab.ping_guest_from_remote(**FAST).received == 2


@pytest.mark.kernel
def test_spec_knobs_detached_tap_and_mtu():
    with Lab(LabSpec(attach_tap=False, tap_mtu=576)) as lab:
        tap = link(lab, lab.tap)
        assert "master" not in tap and tap["mtu"] == 576
        assert lab.ping_guest_from_remote(**FAILING).received == 0


@pytest.mark.kernel
def test_ipv6_on_request_with_neighbour_discovery_and_echo():
    with Lab(LabSpec()) as lab:
        assert lab.hv("sysctl", "-n", "net.ipv6.conf.br0.disable_ipv6").stdout.strip() == "1"
    with Lab(LabSpec(ipv6=True)) as lab:
        assert lab.ping6_guest_from_remote(**FAST).received == 2
        assert lab.ping6_guest_from_host(**FAST).received == 2
        assert lab.ping_guest_from_remote(**FAST).received == 2


@pytest.mark.kernel
def test_concurrent_labs_do_not_collide():
    with Lab() as a, Lab() as b:
        assert len({a.remote_ns, a.hv_ns, b.remote_ns, b.hv_ns}) == 4
        assert all(n.startswith(f"ttlab-{os.getpid()}-") for n in (a.hv_ns, b.hv_ns))
        assert a.ping_guest_from_remote(**FAST).received == b.ping_guest_from_remote(**FAST).received == 2


@pytest.mark.kernel
def test_failed_command_says_why():
    with Lab() as lab:
        with pytest.raises(LabCommandFailed, match="nosuchdev"):
            lab.hv("ip", "link", "set", "dev", "nosuchdev", "up")
        assert lab.hv("ip", "link", "show", "dev", "nosuchdev", check=False).returncode != 0


@pytest.mark.kernel
@pytest.mark.parametrize("raises", [False, True])
def test_leaving_the_block_removes_everything(raises):
    with contextlib.suppress(RuntimeError):
        with Lab(LabSpec()) as lab:
            names, guest = {lab.remote_ns, lab.hv_ns}, lab.guest
            assert names <= namespaces()
            if raises:
                raise RuntimeError("test body failed")
    assert not names & namespaces()
    assert guest.poll() is not None and lab.guest is None
    lab.close()  # again: harmless


CHILD = """
import json, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if our parent ignores it
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # under nohup it comes ignored, and the lab leaves an ignored signal be
from tracer.lab import Lab
with Lab() as lab:
    if sys.argv[1] == "paused":
        lab.pause_guest()
    print(json.dumps({"ns": [lab.remote_ns, lab.hv_ns], "guest": lab.guest.pid}), flush=True)
    while True:  # until the test's signal, however long it takes to come (not pause(): a signal
        time.sleep(1)  # landing just before it would leave it waiting for another one)
"""


@contextlib.contextmanager
def lab_in_child(mode: str = "running"):
    """A process holding a Lab; yields (process, its namespaces, its guest's pid)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", CHILD, mode], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([p.stdout], [], [], WAIT)[0], "the child's lab did not come up"
        info = json.loads(p.stdout.readline())
        yield p, set(info["ns"]), info["guest"]
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()
        remove_stale()  # whatever the child left: its pid is dead now


@pytest.mark.kernel
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_tear_the_lab_down(sig):
    with lab_in_child() as (p, names, guest):
        assert names <= namespaces()
        p.send_signal(sig)
        p.wait(timeout=WAIT)
        assert p.returncode == -sig  # died of it (Python re-raises SIGINT after KeyboardInterrupt)
        assert not names & namespaces()
        assert gone(guest)


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["running", "paused"])
def test_sigkilled_lab_is_cleaned_up_by_the_next(mode):
    with lab_in_child(mode) as (p, names, guest):
        p.kill()
        p.wait(timeout=WAIT)
        assert names <= namespaces()  # nothing ran in the child: the names stay behind...
        if mode == "running":
            assert wait_until(lambda: gone(guest))  # ...but the guest saw its stdin close and left
        assert names <= set(remove_stale())
        assert not names & namespaces()
        assert wait_until(lambda: gone(guest))
