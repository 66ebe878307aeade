"""The configuration snapshot: a real two-namespace lab with root, its recording without root."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Optional

import pytest
from netns_helpers import lab_namespaces
from pyroute2 import IPRoute

from tracer.errors import UsageError
from tracer.netns import Netns, entered, iproute, list_netns, ns_inode, resolve_netns
from tracer.records import Device
from tracer.snapshot import (
    STP_STATES,
    Snapshot,
    collect_devices,
    collect_snapshot,
    lookup_device,
    machine_devices,
    normalize_mac,
)

RECORDING = Path(__file__).parent / "recordings" / "snapshot-lab.json"
VM_MAC = "52:54:00:aa:bb:01"  # static FDB entry on vnet0, dropped by the nft bridge rule
VM2_MAC = "52:54:00:aa:bb:02"  # static + sticky on vnet0
NUD_NOARP = 0x40
NTF_MASTER = 0x04
NTF_STICKY = 0x40
NFT_RULES = f"""
table bridge tapttrace_lab {{
    chain forward {{
        type filter hook forward priority 0; policy accept;
        ether daddr {VM_MAC} drop
    }}
}}
"""

HOLDER = r"""
import fcntl, os, struct, sys
with open("/proc/self/comm", "w") as f:
    f.write("ttsnap-holder")
fds = []
for name in sys.argv[1:]:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    # TUNSETIFF with IFF_TAP | IFF_NO_PI, as qemu's tap backend does
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0002 | 0x1000))
    fds.append(fd)
print(" ".join(map(str, fds)), flush=True)
sys.stdin.read()  # lives until the test closes our stdin, or dies with it
"""


# ------------------------------------------------------------------ facts of the lab
# One function states what the lab is; it runs on the live snapshot (root) and on the
# recording (no root), so the recording is checked to be the lab it claims to be.


def lab_names(snap: Snapshot) -> tuple[str, str]:
    """The lab's hypervisor and peer namespace names (they carry the recording run's pid)."""
    hv = next(ns.name for ns in snap.namespaces if ns.name.endswith("-hv"))
    peer = next(ns.name for ns in snap.namespaces if ns.name.endswith("-peer"))
    return hv, peer


def check_lab(snap: Snapshot, br_netfilter_set: bool = True) -> None:
    """Assert everything the lab was built with shows in `snap`."""
    hv_name, peer_name = lab_names(snap)
    hv, peer = snap.netns(hv_name), snap.netns(peer_name)

    br0 = hv.bridge("br0")
    assert br0 is not None
    assert (br0.stp, br0.stp_mode, br0.vlan_filtering, br0.ageing_time_s) == (False, "off", False, 300.0)
    assert br0.admin_up and br0.oper_state == "up"
    assert {p.name for p in br0.ports} == {"uplink", "vnet0", "vnet1", "vnet2"}

    vnet0 = br0.port("vnet0")
    assert vnet0 is not None and vnet0.is_tap and vnet0.kind == "tun"
    assert (vnet0.flood, vnet0.mcast_flood, vnet0.bcast_flood, vnet0.isolated) == (False, True, True, False)
    assert (vnet0.stp_state, vnet0.learning, vnet0.hairpin) == ("forwarding", True, False)
    assert vnet0.admin_up and vnet0.carrier and vnet0.mtu == 1500
    vnet1 = br0.port("vnet1")
    assert vnet1 is not None and (vnet1.isolated, vnet1.flood, vnet1.hairpin) == (True, True, True)
    assert vnet1.neigh_suppress is False and vnet1.locked is False
    vnet2 = br0.port("vnet2")  # bridged tap nobody holds: admin up, no carrier, STP disabled
    assert vnet2 is not None and vnet2.is_tap and (vnet2.admin_up, vnet2.carrier) == (True, False)
    assert (vnet2.stp_state, vnet2.oper_state) == ("disabled", "down")
    uplink = br0.port("uplink")
    assert uplink is not None and uplink.stp_state == "forwarding" and not uplink.is_tap

    # FDB: the two static entries, the ports' local entries, the peer's MAC learned on uplink
    (static,) = hv.fdb_of("br0", VM_MAC)
    assert (static.dev, static.state, static.sticky, static.permanent, static.learned) == (
        "vnet0", "static", False, False, False)
    (sticky,) = hv.fdb_of("br0", VM2_MAC)
    assert (sticky.dev, sticky.state, sticky.sticky) == ("vnet0", "static", True)
    local = [e for e in hv.fdb_of("br0", vnet0.mac) if e.dev == "vnet0"]
    assert local and all(e.permanent and not e.on_self for e in local)
    peer_eth0 = peer.device("eth0")
    assert peer_eth0 is not None and peer_eth0.kind == "veth"
    learned = hv.fdb_of("br0", peer_eth0.mac)
    assert [(e.dev, e.state) for e in learned] == [("uplink", "dynamic")] and learned[0].learned

    # where MACs live
    where = snap.find_mac(VM_MAC.upper())
    assert [(h.netns, h.entry.dev) for h in where.fdb] == [(hv_name, "vnet0")] and where.devices == ()
    where = snap.find_mac(peer_eth0.mac)
    assert {(h.netns, h.entry.dev) for h in where.fdb} >= {(hv_name, "uplink")}
    assert [(d.netns_name, d.name) for d in where.devices] == [(peer_name, "eth0")]

    # devices: taps in and out of the bridge, who holds them
    dev0, dev9 = hv.device("vnet0"), hv.device("vnet9")
    assert dev0 is not None and (dev0.is_tap, dev0.master, dev0.master_name, dev0.oper_up) == (
        True, br0.ifindex, "br0", True)
    assert dev9 is not None and (dev9.is_tap, dev9.master, dev9.oper_up) == (True, None, False)
    assert snap.device(hv.netns.inode, dev0.ifindex) == dev0
    (holder,) = snap.holders(dev0)
    assert holder.comm == "ttsnap-holder" and holder.netns == hv.netns.inode
    assert holder.dev_netns == hv.netns.inode
    assert [h.iff for h in snap.taps if h.pid == holder.pid] == ["vnet0", "vnet1"]
    assert snap.holders(dev9) == []
    br_dev = hv.device("br0")
    assert br_dev is not None and br_dev.is_bridge and not br_dev.is_tap

    # the peer's bridge runs kernel STP over a loop: one looped port blocks
    br1 = peer.bridge("br1")
    assert br1 is not None and (br1.stp, br1.stp_mode, br1.ageing_time_s, br1.forward_delay_s) == (
        True, "kernel", 60.0, 2.0)
    states = sorted(p.stp_state for p in br1.ports)
    assert len(states) == 2 and states[0] == "blocking" and states[1] in STP_STATES
    assert [(r.netns, r.bridge.name) for r in snap.find_port("loop-a")] == [(peer_name, "br1")]
    assert snap.find_port("vnet0", netns=peer_name) == []
    assert [(n, b.name) for n, b in snap.bridges()] == [(hv_name, "br0"), (peer_name, "br1")]

    # br_netfilter: per namespace
    if br_netfilter_set:
        assert hv.br_netfilter is not None and hv.br_netfilter.call_iptables
        assert peer.br_netfilter is not None and not peer.br_netfilter.call_iptables
        assert hv.br_netfilter_note().startswith("bridged frames cross iptables")
        assert not peer.br_netfilter_note().startswith("bridged frames cross iptables")
    else:
        assert hv.br_netfilter is None and "not loaded" in hv.br_netfilter_note()

    # nftables: the bridge drop rule and the iptables-nft rule, in hv only
    assert hv.nftables.status == "ok" and peer.nftables.status == "ok"
    tables = {(t["family"], t["name"]) for t in hv.nftables.tables()}
    assert {("bridge", "tapttrace_lab"), ("ip", "filter")} <= tables
    drops = {(r["family"], r["table"], r["chain"]) for r in hv.nftables.drop_rules()}
    assert drops == {("bridge", "tapttrace_lab", "forward"), ("ip", "filter", "FORWARD")}
    assert peer.nftables.tables() == []


# ------------------------------------------------------------------ without root: the recording


@pytest.fixture(scope="module")
def recorded() -> Snapshot:
    return Snapshot.from_json(RECORDING.read_text())


def test_recording_is_the_lab(recorded: Snapshot) -> None:
    check_lab(recorded)


def test_json_round_trip_is_exact(recorded: Snapshot) -> None:
    text = RECORDING.read_text()
    assert recorded.to_json() == text
    assert Snapshot.from_json(recorded.to_json()) == recorded


def test_recording_devices_are_records(recorded: Snapshot) -> None:
    devices = recorded.devices()
    assert devices and all(isinstance(d, Device) for d in devices)
    assert all(d.netns_name == ns.name for ns in recorded.namespaces for d in ns.devices)
    assert len({d.key for d in devices}) == len(devices)


def test_unknown_namespace_is_a_usage_error(recorded: Snapshot) -> None:
    with pytest.raises(UsageError, match="unknown network namespace 'nope'"):
        recorded.netns("nope")


def test_other_format_is_refused(recorded: Snapshot) -> None:
    data = json.loads(recorded.to_json())
    data["format"] = 99
    with pytest.raises(UsageError, match="format 99"):
        Snapshot.from_json(json.dumps(data))


def test_unknown_mac_lives_nowhere(recorded: Snapshot) -> None:
    where = recorded.find_mac("02-00-5e-00-00-99")
    assert (where.mac, where.fdb, where.devices) == ("02:00:5e:00:00:99", (), ())


def test_normalize_mac() -> None:
    assert normalize_mac("52:54:00:AA:BB:01") == normalize_mac("5254.00aa.bb01") == VM_MAC
    with pytest.raises(UsageError, match="not a MAC"):
        normalize_mac("52:54:00")


# ------------------------------------------------------------------ netns listing on a fixture tree


@pytest.fixture
def ns_tree(tmp_path: Path) -> tuple[str, str]:
    proc, run = tmp_path / "proc", tmp_path / "run"
    for pid, inode in ((1, 100), (5, 200), (7, 200), (9, 100), (12, 300)):
        (proc / str(pid) / "ns").mkdir(parents=True)
        os.symlink(f"net:[{inode}]", proc / str(pid) / "ns" / "net")
    (proc / "self").mkdir()
    run.mkdir()
    (run / "blue").write_text("")  # stands for a bind mount: its inode is the namespace's
    return str(proc), str(run)


def test_list_netns_names_and_dedups(ns_tree: tuple[str, str]) -> None:
    proc, run = ns_tree
    blue = os.stat(os.path.join(run, "blue")).st_ino
    assert list_netns(run_dir=run, proc_root=proc) == [
        Netns("root", 100, f"{proc}/1/ns/net"), Netns("blue", blue, f"{run}/blue")]
    assert [n.name for n in list_netns(True, run_dir=run, proc_root=proc)] == ["root", "blue", "pid:5", "pid:12"]


def test_resolve_netns(ns_tree: tuple[str, str]) -> None:
    proc, run = ns_tree
    assert resolve_netns("root", run_dir=run, proc_root=proc).inode == 100
    assert resolve_netns("blue", run_dir=run, proc_root=proc).path == f"{run}/blue"
    assert resolve_netns("pid:7", run_dir=run, proc_root=proc) == Netns("pid:7", 200, f"{proc}/7/ns/net")
    assert resolve_netns("pid:9", run_dir=run, proc_root=proc).name == "root"  # a pid in a known ns
    assert resolve_netns("net:[300]", run_dir=run, proc_root=proc).name == "pid:12"
    assert resolve_netns("300", run_dir=run, proc_root=proc).name == "pid:12"
    for bad in ("nope", "pid:4", "pid:x", "999"):
        with pytest.raises(UsageError, match=rf"unknown network namespace '{bad}' \(see `ip netns list`\)"):
            resolve_netns(bad, run_dir=run, proc_root=proc)


def test_root_falls_back_to_kthreadd(ns_tree: tuple[str, str]) -> None:
    proc, run = ns_tree
    os.unlink(f"{proc}/1/ns/net")  # pid 1 may refuse us its ns link in a sandbox
    (Path(proc) / "2" / "ns").mkdir(parents=True)
    os.symlink("net:[100]", f"{proc}/2/ns/net")
    assert list_netns(run_dir=run, proc_root=proc)[0] == Netns("root", 100, f"{proc}/2/ns/net")


# ------------------------------------------------------------------ with root: the real lab


def require_root() -> None:
    """Skip without root, except in CI where a kernel test must run."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("kernel tests need root")
        pytest.skip("needs root")


@contextmanager
def child(ns: Netns, argv: list[str]) -> Iterator[tuple[subprocess.Popen, str]]:
    """A process started in `ns` that lives until its stdin closes; yields it and its first line."""
    with entered(ns):
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc, proc.stdout.readline()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_in(ns: Netns, argv: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    """Run a command inside `ns` and require it to succeed."""
    with entered(ns):
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True, timeout=30)


@contextmanager
def inside(ns: Netns) -> Iterator[IPRoute]:
    """An rtnetlink handle for setting `ns` up, with this thread inside `ns` meanwhile."""
    # pyroute2 creates tuntap devices by ioctl on /dev/net/tun, which lands in the calling
    # thread's namespace, not the netlink socket's: without this, taps would appear in root
    with entered(ns), iproute(ns) as ipr:
        yield ipr


def wait_for_blocking(ipr, bridge: int, timeout: float = 60.0) -> None:
    """Wait until kernel STP has put a port of `bridge` into blocking (it takes about a hello time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in ipr.get_links():
            data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_SLAVE_DATA")
            if msg.get_attr("IFLA_MASTER") == bridge and data is not None and data.get_attr("IFLA_BRPORT_STATE") == 4:
                return
        time.sleep(0.1)
    raise RuntimeError("kernel STP blocked no port of the looped bridge")


def build_lab(stack: ExitStack) -> tuple[Netns, Netns, Optional[bool]]:
    """Build the hv/peer lab; everything is undone when `stack` closes."""
    hv, peer = stack.enter_context(lab_namespaces("hv", "peer"))
    holder, line = stack.enter_context(child(hv, [sys.executable, "-c", HOLDER, "vnet0", "vnet1"]))
    if len(line.split()) != 2:
        raise RuntimeError(f"tap holder failed (exit {holder.wait()})")

    with inside(hv) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        ipr.link("add", ifname="uplink", kind="veth", peer="eth0")
        ipr.link("add", ifname="vnet2", kind="tuntap", mode="tap")  # a VM that is off: no carrier
        ipr.link("add", ifname="vnet9", kind="tuntap", mode="tap")  # persistent, unheld, unbridged
        idx = {n: ipr.link_lookup(ifname=n)[0] for n in ("br0", "uplink", "eth0", "vnet0", "vnet1", "vnet2")}
        ipr.link("set", index=idx["eth0"], net_ns_fd=peer.path)
        for port in ("uplink", "vnet0", "vnet1", "vnet2"):
            ipr.link("set", index=idx[port], master=idx["br0"])
        for name in ("lo", "br0", "uplink", "vnet0", "vnet1", "vnet2"):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        ipr.addr("add", index=idx["br0"], address="198.51.100.1", prefixlen=24)
        ipr.brport("set", index=idx["vnet0"], unicast_flood=0)
        ipr.brport("set", index=idx["vnet1"], isolated=1, mode=1)
        ipr.fdb("add", ifindex=idx["vnet0"], lladdr=VM_MAC, master=idx["br0"], state=NUD_NOARP)
        ipr.fdb("add", ifindex=idx["vnet0"], lladdr=VM2_MAC, state=NUD_NOARP, flags=NTF_MASTER | NTF_STICKY)

    with inside(peer) as ipr:
        # kernel STP (the only kind outside init_net) with a loop: one of the looped ports blocks.
        # Port states cannot be set by hand while STP is off (the kernel forwards again at once).
        ipr.link("add", ifname="br1", kind="bridge", br_stp_state=1, br_ageing_time=6000,
                 br_forward_delay=200, br_hello_time=100)
        ipr.link("add", ifname="loop-a", kind="veth", peer="loop-b")
        br1 = ipr.link_lookup(ifname="br1")[0]
        for name in ("loop-a", "loop-b"):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], master=br1)
        for name in ("lo", "eth0", "br1", "loop-a", "loop-b"):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        ipr.addr("add", index=ipr.link_lookup(ifname="eth0")[0], address="198.51.100.2", prefixlen=24)
        wait_for_blocking(ipr, br1)

    run_in(hv, ["nft", "-f", "-"], NFT_RULES)
    run_in(hv, ["iptables", "-A", "FORWARD", "-s", "203.0.113.0/24", "-j", "DROP"])

    # br_netfilter's sysctls are per namespace: on in hv, off in peer
    br_nf: Optional[bool] = None
    if os.path.isdir("/proc/sys/net/bridge"):
        for ns, value in ((hv, "1"), (peer, "0")):
            with entered(ns), open("/proc/sys/net/bridge/bridge-nf-call-iptables", "w") as f:
                f.write(value)
        br_nf = True

    # one ping makes br0 learn the peer's MAC on uplink (the ARP request floods in by it)
    run_in(peer, ["ping", "-c", "1", "-W", "5", "198.51.100.1"])
    return hv, peer, br_nf


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Netns, Netns, Optional[bool]]]:
    require_root()
    with ExitStack() as stack:
        yield build_lab(stack)


@pytest.mark.kernel
def test_live_snapshot_sees_the_lab(lab: tuple[Netns, Netns, Optional[bool]]) -> None:
    hv, peer, br_nf = lab
    snap = collect_snapshot([hv, peer])
    check_lab(snap, br_netfilter_set=bool(br_nf))
    assert Snapshot.from_json(snap.to_json()) == snap
    if os.environ.get("TAPTTRACE_RECORD") == "1":
        RECORDING.write_text(snap.to_json())


@pytest.mark.kernel
def test_collect_devices_matches_snapshot(lab: tuple[Netns, Netns, Optional[bool]]) -> None:
    hv, peer, _ = lab
    devices = collect_devices([hv, peer])
    snap = collect_snapshot([hv, peer], taps=False)
    assert devices == snap.devices()
    assert {d.name for d in devices if d.netns_name == hv.name} == {
        "lo", "br0", "uplink", "vnet0", "vnet1", "vnet2", "vnet9"}
    assert {d.name for d in devices if d.netns_name == peer.name} == {"lo", "eth0", "br1", "loop-a", "loop-b"}


@pytest.mark.kernel
def test_lookup_device(lab: tuple[Netns, Netns, Optional[bool]]) -> None:
    hv, _, _ = lab
    with iproute(hv) as ipr:
        (index,) = ipr.link_lookup(ifname="vnet0")
    dev = lookup_device(hv, index)
    assert dev is not None and (dev.name, dev.master_name, dev.is_tap) == ("vnet0", "br0", True)
    assert dev in collect_devices([hv])
    assert lookup_device(hv, 999999) is None


@pytest.mark.kernel
def test_a_namespace_being_deleted_is_skipped(tmp_path) -> None:
    """Between `ip netns del`'s unmount and its unlink the name is an empty file: setns() refuses it
    (EINVAL). Other work deleting its namespaces must not fail a whole inventory (found as the
    exporter's refresh errors while other test suites ran)."""
    require_root()
    root = list_netns()[0]
    unmounted = tmp_path / "te-unmounted"
    unmounted.touch()
    devices = collect_devices([Netns("te-unmounted", 1, str(unmounted)), root])
    assert devices and all(d.netns == root.inode for d in devices)


@pytest.mark.kernel
def test_lab_namespaces_are_listed_and_resolved(lab: tuple[Netns, Netns, Optional[bool]]) -> None:
    hv, peer, _ = lab
    listed = list_netns()
    assert listed[0].name == "root" and hv in listed and peer in listed
    assert resolve_netns(hv.name) == hv
    assert resolve_netns(str(peer.inode)) == peer


@pytest.mark.kernel
def test_unnamed_namespace_held_by_a_process() -> None:
    require_root()
    me = os.readlink("/proc/thread-self/ns/net")
    root = list_netns()[0]
    with child(root, ["unshare", "--net", sys.executable, "-c",
                      "import sys; print('up', flush=True); sys.stdin.read()"]) as (proc, line):
        assert line.strip() == "up"
        inode = ns_inode(f"/proc/{proc.pid}/ns/net")
        found = [ns for ns in list_netns(True) if ns.inode == inode]
        assert [ns.name for ns in found] == [f"pid:{proc.pid}"]
        assert inode not in {ns.inode for ns in list_netns()}
        (dev,) = collect_devices(found)  # a fresh namespace: only lo
        assert (dev.name, dev.netns, dev.netns_name) == ("lo", inode, f"pid:{proc.pid}")
    assert os.readlink("/proc/thread-self/ns/net") == me


@pytest.mark.kernel
def test_entered_returns_home_on_error() -> None:
    require_root()
    me = os.readlink("/proc/thread-self/ns/net")
    with lab_namespaces("enter") as (ns,):
        with pytest.raises(RuntimeError):
            with entered(ns):
                assert os.readlink("/proc/thread-self/ns/net") == f"net:[{ns.inode}]"
                raise RuntimeError("boom")
    assert os.readlink("/proc/thread-self/ns/net") == me


@pytest.mark.kernel
def test_five_namespaces_of_devices() -> None:
    """What they cost is measured by bench/startup.py (the same namespaces), not asserted here."""
    require_root()
    with ExitStack() as stack:
        spaces = stack.enter_context(lab_namespaces(*(f"perf{i}" for i in range(5))))
        for ns in spaces:
            with inside(ns) as ipr:
                ipr.link("add", ifname="br0", kind="bridge")
                for i in range(4):
                    ipr.link("add", ifname=f"vnet{i}", kind="tuntap", mode="tap")
                    ipr.link("set", index=ipr.link_lookup(ifname=f"vnet{i}")[0],
                             master=ipr.link_lookup(ifname="br0")[0])
                ipr.link("add", ifname="uplink", kind="veth", peer="peer")
        devices = collect_devices(spaces)
        snap = collect_snapshot(spaces)
        assert len(devices) == 5 * 8 and len(snap.namespaces) == 5


@pytest.mark.kernel
def test_machine_devices_feeds_a_device_table(lab: tuple[Netns, Netns, Optional[bool]]) -> None:
    hv, peer, _ = lab
    names, devices = machine_devices()
    assert names[hv.inode] == hv.name and names[peer.inode] == peer.name and "root" in names.values()
    assert {d.netns for d in devices} <= set(names)
    assert any(d.name == "vnet0" and d.netns == hv.inode and d.is_tap for d in devices)


def test_a_namespace_deleted_after_it_was_listed_is_skipped(tmp_path) -> None:
    """`ip netns del` unmounts a namespace before it unlinks its name: a snapshot or device refresh
    that listed it just before opens a plain file, and setns says EINVAL. Seen as a traceback from
    diagnose on a machine where other runs delete their namespaces; it is a namespace gone."""
    gone = Netns("ttsnap-deleted", 1, str(tmp_path / "ttsnap-deleted"))
    Path(gone.path).write_text("")
    with pytest.raises(FileNotFoundError, match="went away"):
        with entered(gone):
            pass
    assert collect_devices([gone]) == []
    assert collect_snapshot([gone], taps=False).namespaces == ()
