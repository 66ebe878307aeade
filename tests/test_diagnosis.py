"""tracer.diagnosis without root: recorded snapshots and journeys of real lab scenarios, and hand-made ones.

Recordings (tests/recordings/diag-*.json) hold the lab namespaces' snapshot taken after the
window, the journeys `follow` saw, the cause expected, and for those made by
`python -m tracer.diagnosis.record` the fix printed and whether applying it made the guest answer.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Optional

import jsonschema
import pytest
from rich.console import Console

from tracer.diagnosis import (
    CAUSES,
    RULES,
    Target,
    diagnose,
    in_ns,
    journey_path,
    load_journeys,
    locate,
    parse_domain_xml,
    read_process_states,
    render_text,
    to_json,
)
from tracer.diagnosis import rules as R
from tracer.diagnosis.context import Context
from tracer.diagnosis.netfilter import Probe, Ruleset
from tracer.diagnosis.record import trimmed
from tracer.errors import UsageError
from tracer.records import Copy, Hop, Journey
from tracer.sinks.jsonl import journey_from_dict, journey_to_dict
from tracer.snapshot import FdbEntry, Nftables, Snapshot
from tracer.taps import TapHolder, qemu_guest_name

ROOT = Path(__file__).resolve().parent.parent
LAB_GUEST_IP = ("198.51.100.10",)  # the lab's guest address (recordings made before "ips" was kept lack it)
REC = ROOT / "tests" / "recordings"
RECORDINGS = sorted(p.stem[len("diag-"):] for p in REC.glob("diag-*.json"))
REMOTE_MAC = "02:00:00:00:09:09"


def load(name: str) -> tuple[dict, Snapshot, list[Journey]]:
    d = json.loads((REC / f"diag-{name}.json").read_text())
    return d, Snapshot.from_json(json.dumps(d["snapshot"])), [journey_from_dict(j) for j in d["journeys"]]


def run(name: str, journeys: Optional[list[Journey]] = None, **kw):
    """Diagnose a recording as `tapttrace diagnose` would have (its journeys unless others are given)."""
    d, snap, recorded = load(name)
    target = locate(snap, d["mac"], ips=d.get("ips", LAB_GUEST_IP), domains=kw.pop("domains", ()))
    states = {int(k): v for k, v in d.get("process_states", {}).items()}
    return diagnose(snap, target, recorded if journeys is None else journeys, d.get("window_s", 3.0),
                    process_states=kw.pop("process_states", states), lost_events=kw.pop("lost_events",
                                                                                        d.get("lost_events", 0)))


def context(name: str, journeys: Optional[list[Journey]] = None, **kw) -> Context:
    d, snap, recorded = load(name)
    target = locate(snap, d["mac"], ips=d.get("ips", LAB_GUEST_IP), domains=kw.pop("domains", ()))
    return Context(snap, target, tuple(recorded if journeys is None else journeys), 3.0, **kw)


def ping(jid: int, target: Target, *, copies: list[Copy], hops: Optional[list[Hop]] = None, frame_len: int = 98,
         dst: Optional[str] = None, summary: str = "", ethertype: int = 0x0800, verdict: str = "") -> Journey:
    """A hand-made ICMP echo toward the guest through its namespace."""
    ns = target.netns
    hops = hops if hops is not None else [Hop(jid * 1000, 0, "received", ns, "up0", "port of br0")]
    return Journey(jid, jid * 1000, jid * 1000 + 500, REMOTE_MAC, dst or target.mac, ethertype,
                   summary or f"ICMP echo 198.51.100.1 > 198.51.100.10 seq {jid}", frame_len, b"", hops, copies,
                   verdict or (copies[0].outcome if len(copies) == 1 else "flooded"), bridge="br0",
                   toward_guest=True)


def flooded_arp(target: Target, offered: Hop, end: Copy) -> Journey:
    """A hand-made broadcast ARP for the guest's address that br0 floods, as the bridge's own hops
    (fentry/kprobes) show it: received on up0, the flood decision, then `offered` (a flood-port hop)."""
    ns = target.netns
    hops = [Hop(1000, 0, "received", ns, "up0", "port of br0"),
            Hop(1100, 0, "flood-decision", ns, "br0", "bridge", "broadcast"), offered]
    return ping(1, target, copies=[end], hops=hops, dst="ff:ff:ff:ff:ff:ff",
                summary="ARP who-has 198.51.100.10 tell 198.51.100.1", ethertype=0x0806)


def dropped(target: Target, dev: str, reason: str, location: str) -> Copy:
    return Copy(0, "dropped", dev, target.netns, reason, location)


# -- every recording gets its cause -----------------------------------------------------------------


@pytest.mark.parametrize("name", RECORDINGS)
def test_each_recorded_scenario_gets_its_cause(name):
    d, _, _ = load(name)
    r = run(name)
    assert r.cause == d["expected"], r.summary
    assert r.summary and "\n" not in r.summary
    assert r.cause in CAUSES
    if r.cause != "ok":
        assert r.evidence and r.exit_code == 1
    else:
        assert r.exit_code == 0 and not r.fix


@pytest.mark.parametrize("name", [n for n in RECORDINGS if "found" in json.loads((REC / f"diag-{n}.json").read_text())])
def test_the_fix_printed_on_the_real_kernel_made_the_guest_answer(name):
    d, _, _ = load(name)
    assert d["found"] == d["expected"] and d["fix_worked"], d["applied"]
    assert all(a["rc"] == 0 for a in d["applied"]), d["applied"]
    assert list(run(name).fix) == d["fix"]  # the replay prints what the real run printed


CONFIG_CAUSES = {
    "local-mac": "local-mac", "not-in-bridge": "port-not-in-bridge", "stp": "port-not-forwarding",
    "tap-listening": "port-not-forwarding", "flood-off": "flood-blocked", "isolated": "flood-blocked",
    "admin-down": "port-not-forwarding", "bridge-down": "port-not-forwarding", "no-holder": "port-not-forwarding",
    "fdb-ingress": "fdb-wrong-port", "netfilter": "netfilter-drop", "ebtables": "netfilter-drop",
    "nft-bridge-policy": "netfilter-drop", "stopped": "guest-not-reading",
}


@pytest.mark.parametrize("name, cause", sorted(CONFIG_CAUSES.items()))
def test_causes_found_from_configuration_need_no_traffic(name, cause):
    r = run(name, journeys=[])
    assert r.cause == cause and r.basis == "configuration"
    assert r.fix or r.advice


@pytest.mark.parametrize("name", ["healthy", "mtu", "not-reading", "iptables-rule", "ingress-listening",
                                  "wrong-bridge"])
def test_causes_that_need_traffic_say_which_traffic_is_missing(name):
    r = run(name, journeys=[], process_states={})
    assert r.cause == "no-traffic" and r.basis == "none" and not r.fix
    assert "198.51.100.10" in r.evidence[0] and "crossed" in r.evidence[0]
    assert any("ping 198.51.100.10" in a for a in r.advice)


# -- locating the guest --------------------------------------------------------------------------------


def test_tap_found_by_libvirt_convention_by_name_or_not_at_all():
    d, snap, _ = load("healthy")
    t = locate(snap, d["mac"])
    assert t.found_by == "libvirt-convention" and t.tap.name == "vnet0" and t.bridge.name == "br0"
    assert [h.comm for h in t.holders] == ["python"]
    assert locate(snap, d["mac"], tap="vnet0").found_by == "--tap"
    with pytest.raises(UsageError, match="nonexistent0"):
        locate(snap, d["mac"], tap="nonexistent0")
    with pytest.raises(UsageError):
        locate(snap, "not-a-mac")


def test_tap_carrying_the_guest_mac_is_found_and_is_local_mac():
    d, snap, _ = load("local-mac")
    t = locate(snap, d["mac"])
    assert t.found_by == "carries-guest-mac" and t.tap.name == "vnet0"


def _retag_tap(snap: Snapshot, mac: str) -> Snapshot:
    """The snapshot with vnet0 given an address that says nothing about the guest."""
    spaces = []
    for ns in snap.namespaces:
        devices = tuple(dataclasses.replace(x, mac=mac) if x.name == "vnet0" else x for x in ns.devices)
        spaces.append(dataclasses.replace(ns, devices=devices))
    return dataclasses.replace(snap, namespaces=tuple(spaces))


def test_tap_found_by_the_fdb_when_its_address_says_nothing():
    d, snap, _ = load("healthy")
    t = locate(_retag_tap(snap, "02:99:00:00:00:01"), d["mac"])
    assert t.found_by == "fdb" and t.tap.name == "vnet0"


DOMSTATUS = """<domstatus state='{state}' reason='user' pid='4242'>
  <domain type='kvm' id='7'>
    <name>web1</name>
    <devices>
      <interface type='bridge'>
        <mac address='{mac}'/>
        <source bridge='br0'/>
        <target dev='{dev}'/>
        <model type='virtio'/>
        {extra}
      </interface>
    </devices>
  </domain>
</domstatus>"""


def domain(mac: str, dev: str = "vnet0", state: str = "running", extra: str = "", path: str = "/run/libvirt/qemu/x"):
    return parse_domain_xml(DOMSTATUS.format(mac=mac, dev=dev, state=state, extra=extra), path)


def test_libvirt_xml_names_the_tap_and_the_domain():
    d, snap, _ = load("healthy")
    t = locate(_retag_tap(snap, "02:99:00:00:00:01"), d["mac"], domains=domain(d["mac"]))
    assert t.found_by == "libvirt-xml" and t.tap.name == "vnet0" and t.domain == "web1"


def test_libvirt_xml_naming_a_missing_device_is_noted_and_other_ways_are_tried():
    d, snap, _ = load("healthy")
    t = locate(snap, d["mac"], domains=domain(d["mac"], dev="vnet9"))
    assert t.found_by == "libvirt-convention"
    assert any("vnet9" in n for n in t.notes)
    assert any("vnet9" in r for r in run("healthy", domains=domain(d["mac"], dev="vnet9")).remarks)


def test_parse_domain_xml():
    [i] = domain("52:54:00:E4:2E:C1", extra="<mtu size='9000'/><port isolated='yes'/><link state='down'/>"
                                             "<filterref filter='clean-traffic'/>", state="paused")
    assert (i.domain, i.mac, i.target_dev, i.source_bridge, i.mtu, i.live, i.state) == (
        "web1", "52:54:00:e4:2e:c1", "vnet0", "br0", 9000, True, "paused")
    assert i.isolated and i.link_down and i.filterref == "clean-traffic" and "<interface" in i.xml
    persistent = "<domain><name>db</name><devices><interface type='ethernet'><mac address='52:54:00:00:00:02'/>" \
                 "<target dev='tap10' managed='no'/></interface></devices></domain>"
    [p] = parse_domain_xml(persistent, "/etc/libvirt/qemu/db.xml")
    assert not p.live and p.type == "ethernet" and not p.target_managed and p.target_dev == "tap10"
    assert parse_domain_xml("<not xml") == [] and parse_domain_xml("<network/>") == []


def test_qemu_names_the_guest():
    assert qemu_guest_name(("qemu-system-x86_64", "-name", "guest=web1,debug-threads=on", "-m", "1")) == "web1"
    assert qemu_guest_name(("qemu-system-x86_64", "-name", "web2")) == "web2"
    assert qemu_guest_name(("python",)) == ""


def test_unknown_mac_has_no_tap():
    d, snap, _ = load("healthy")
    t = locate(snap, "52:54:00:00:00:99")
    r = diagnose(snap, t, [])
    assert r.cause == "tap-not-found" and "--tap" in r.evidence[0] and not r.fix


def test_a_stopped_domain_with_the_mac_is_started():
    d, snap, _ = load("healthy")
    xml = parse_domain_xml("<domain><name>web3</name><devices><interface type='bridge'>"
                           "<mac address='52:54:00:00:00:99'/><source bridge='br0'/></interface></devices></domain>",
                           "/etc/libvirt/qemu/web3.xml")
    r = diagnose(snap, locate(snap, "52:54:00:00:00:99", domains=xml), [])
    assert r.cause == "tap-not-found" and r.fix == ("virsh start web3",)


# -- each rule on its own -----------------------------------------------------------------------------


def test_rule_port_not_in_bridge_also_fixes_a_tap_carrying_the_guest_mac():
    d, snap, _ = load("not-in-bridge")
    bad = _retag_tap(snap, d["mac"])
    t = locate(bad, d["mac"])
    f = R.rule_port_not_in_bridge(Context(bad, t))
    hv = t.netns
    assert f.fix == (f"ip -n {hv} link set dev vnet0 address fe{d['mac'][2:]}",
                     f"ip -n {hv} link set dev vnet0 master br0")


def test_rule_local_mac_names_bridge_tap_the_drop_and_the_libvirt_fix():
    d, snap, journeys = load("local-mac")
    r = run("local-mac")
    assert r.summary == (f"br0 holds {d['mac']} as its own address because vnet0 carries the guest's MAC, so frames "
                         "for the guest go to the host's IP stack instead of vnet0")
    hv = r.target.netns
    assert r.fix == (f"ip -n {hv} link set dev vnet0 address fe{d['mac'][2:]}",)
    assert "<interface type='bridge'>" in r.libvirt_xml and d["mac"] in r.libvirt_xml
    assert any("passed up to br0's host stack" in e and "OTHERHOST at ip_rcv_core" in e for e in r.evidence)
    assert r.basis == "configuration+traffic" and r.sample is not None


def test_rule_local_mac_is_silent_on_a_healthy_bridge():
    assert R.rule_local_mac(context("healthy")) is None


def test_rule_port_not_forwarding_stp_fix_turns_stp_off_and_the_port_forwarding():
    r = run("stp")
    hv = r.target.netns
    assert r.fix == (f"ip -n {hv} link set dev br0 type bridge stp_state 0",
                     f"bridge -n {hv} link set dev vnet0 state 3")
    assert "listening" in r.summary


def test_rule_port_not_forwarding_ingress_port_from_its_drops():
    r = run("ingress-listening")
    assert r.cause == "port-not-forwarding" and "up0" in r.summary and r.basis == "traffic"
    assert any("BRIDGE_INGRESS_STP_STATE" in e for e in r.evidence)


def test_rule_fdb_wrong_port_back_to_the_ingress_port():
    _, _, journeys = load("fdb-ingress")
    r = run("fdb-ingress")
    assert "back to up0" in r.summary
    sample = next(j for j in journeys if j.id == r.sample)
    assert sample.copies[0].location.startswith("br_handle_frame_finish+")  # the bridge won't send it back
    assert r.fix[0].startswith("bridge -n ") and " fdb del " in r.fix[0] and r.fix[0].endswith("dev up0 master")


def test_rule_fdb_wrong_port_from_traffic_sent_out_of_another_port():
    ctx = context("healthy")
    t = ctx.target
    away = ping(1, t, copies=[Copy(0, "forwarded", "up1", t.netns, port="up1")])
    ctx = dataclasses.replace(ctx, journeys=(away,))
    f = R.rule_fdb_wrong_port(ctx)
    assert f.cause == "fdb-wrong-port" and "to up1" in f.summary and f.basis == "traffic"


def test_rule_fdb_wrong_port_ignores_a_stale_learned_entry_when_frames_get_through():
    d, snap, journeys = load("healthy")
    moved = []
    for ns in snap.namespaces:
        fdb = tuple(dataclasses.replace(e, dev="up0") if e.mac == d["mac"] and e.master else e for e in ns.fdb)
        moved.append(dataclasses.replace(ns, fdb=fdb))
    snap2 = dataclasses.replace(snap, namespaces=tuple(moved))
    r = diagnose(snap2, locate(snap2, d["mac"], tap="vnet0"), journeys)
    assert r.cause == "ok" and any("on up0 (dynamic)" in x for x in r.remarks)
    assert diagnose(snap2, locate(snap2, d["mac"], tap="vnet0"), []).cause == "fdb-wrong-port"


def test_rule_fdb_wrong_port_fix_removes_the_entry_in_force():
    """`bridge fdb add` without a VLAN, on a kernel with VLAN support, adds the entry for VLAN 0 and
    for the port's VLAN 1 (6.1): without VLAN filtering the VLAN-0 one is in force, and one `fdb del`
    without a VLAN removes both. With VLAN filtering, each entry by its VLAN."""
    d, snap, _ = load("healthy")
    moved = []
    for ns in snap.namespaces:
        fdb: list = []
        for e in ns.fdb:
            if e.mac == d["mac"] and e.master:
                fdb += [dataclasses.replace(e, dev="up0", vlan=v, state="static", sticky=True) for v in (1, None)]
            else:
                fdb.append(e)
        moved.append(dataclasses.replace(ns, fdb=tuple(fdb)))
    snap2 = dataclasses.replace(snap, namespaces=tuple(moved))
    r = diagnose(snap2, locate(snap2, d["mac"], tap="vnet0"), [])
    hv = r.target.netns
    assert r.cause == "fdb-wrong-port" and r.fix == (f"bridge -n {hv} fdb del {d['mac']} dev up0 master",)
    assert f"{d['mac']} on up0 (static, sticky)," in r.evidence[0]
    filtering = dataclasses.replace(snap2, namespaces=tuple(
        dataclasses.replace(ns, bridges=tuple(dataclasses.replace(b, vlan_filtering=True) for b in ns.bridges))
        for ns in snap2.namespaces))
    r = diagnose(filtering, locate(filtering, d["mac"], tap="vnet0"), [])
    assert r.fix == (f"bridge -n {hv} fdb del {d['mac']} dev up0 master vlan 1",
                     f"bridge -n {hv} fdb del {d['mac']} dev up0 master")


def test_rule_flood_blocked_bcast_and_isolated():
    r = run("flood-off")
    assert "bcast_flood off" in r.summary and r.fix[0].endswith("link set dev vnet0 bcast_flood on")
    r = run("isolated")
    assert "isolated" in r.summary and r.fix[0].endswith("link set dev vnet0 isolated off")
    assert any("up0 is isolated too" in e for e in r.evidence)


def test_rule_flood_blocked_ignores_an_isolated_tap_the_uplink_can_reach():
    d, snap, journeys = load("healthy")
    spaces = []
    for ns in snap.namespaces:
        bridges = tuple(dataclasses.replace(b, ports=tuple(dataclasses.replace(p, isolated=p.name == "vnet0")
                                                            for p in b.ports)) for b in ns.bridges)
        spaces.append(dataclasses.replace(ns, bridges=bridges))
    snap2 = dataclasses.replace(snap, namespaces=tuple(spaces))
    r = diagnose(snap2, locate(snap2, d["mac"]), journeys)
    assert r.cause == "ok" and any("isolated" in x for x in r.remarks)


def test_rule_tap_filter():
    ctx = context("healthy")
    t = ctx.target
    j = ping(1, t, copies=[dropped(t, "vnet0", "TAP_TXFILTER", "tun_net_xmit+0x2e2")])
    f = R.rule_tap_filter(dataclasses.replace(ctx, journeys=(j,)))
    assert f.cause == "tap-filter" and "TUNSETTXFILTER" in f.summary and "python (pid" in f.summary
    assert R.rule_guest_not_reading(dataclasses.replace(ctx, journeys=(j,))) is None


def test_rule_netfilter_drop_names_policy_rule_and_family():
    r = run("netfilter")
    assert "the iptables FORWARD chain (table ip filter) has policy DROP" in r.summary
    assert r.fix == (f"ip netns exec {r.target.netns} iptables -I FORWARD -i br0 -o br0 -j ACCEPT",)
    assert r.facts["family"] == "ip" and r.facts["kind"] == "policy"
    r = run("iptables-rule")
    assert "rule 1 of the iptables FORWARD chain" in r.summary and "ip daddr 198.51.100.10" in r.summary
    assert r.fix == (f"ip netns exec {r.target.netns} nft delete rule ip filter FORWARD handle 2",)
    r = run("ebtables")
    assert "ebtables FORWARD chain (table bridge filter)" in r.summary and r.facts["family"] == "bridge"
    r = run("nft-bridge-policy")
    assert "nftables chain fw (table bridge vmfw, hook forward) has policy drop" in r.summary
    assert r.fix == (f"ip netns exec {r.target.netns} nft 'insert rule bridge vmfw fw oifname \"vnet0\" accept'",)


def test_rule_netfilter_drop_when_the_ruleset_shows_nothing():
    ctx = context("healthy")
    t = ctx.target
    j = ping(1, t, copies=[dropped(t, "vnet0", "NETFILTER_DROP", "nf_hook_slow+0x44")])
    f = R.rule_netfilter_drop(dataclasses.replace(ctx, journeys=(j,)))
    assert f.cause == "netfilter-drop" and not f.fix and "iptables-legacy" in f.summary
    assert any("iptables-legacy -S" in a for a in f.advice)


def test_rule_mtu_from_a_drop_at_a_bridge_transmit_location():
    r = run("mtu")
    assert r.fix[0].endswith("link set dev vnet0 mtu 1500") and "576" in r.summary and "1042" in r.summary
    ctx = context("healthy")
    t = ctx.target
    small = ping(1, t, copies=[dropped(t, "vnet0", "PKT_TOO_BIG", "__dev_forward_skb+0x10")], frame_len=1400)
    assert R.rule_mtu(dataclasses.replace(ctx, journeys=(small,))) is None  # 1386 fits vnet0's 1500
    big = ping(2, t, copies=[dropped(t, "vnet0", "PKT_TOO_BIG", "__dev_forward_skb+0x10")], frame_len=9014)
    f = R.rule_mtu(dataclasses.replace(ctx, journeys=(big,)))
    assert f.cause == "mtu" and f.fix[0].endswith("mtu 9000")


def test_rule_mtu_from_evidence_whatever_function_freed_the_frame():
    """With br_netfilter the oversized frame is freed in br_nf_dev_queue_xmit, on 5.10 without a
    reason: the cause is the frame's size against the tap's MTU, not the freeing function."""
    ctx = context("mtu")
    t = ctx.target
    for reason, location in (("NOT_SPECIFIED", "br_nf_dev_queue_xmit+0x1a3"), ("", "kfree_skb_list+0x2c"),
                             ("PKT_TOO_BIG", "br_dev_queue_push_xmit+0x40")):
        big = ping(1, t, copies=[dropped(t, "vnet0", reason, location)], frame_len=1042)
        f = R.rule_mtu(dataclasses.replace(ctx, journeys=(big,)))
        assert f is not None and f.cause == "mtu" and f.facts["tap_mtu"] == 576, (reason, location)
    # an oversized frame dropped for another reason was not dropped for its size
    nf = ping(2, t, copies=[dropped(t, "vnet0", "NETFILTER_DROP", "nft_do_chain+0x1")], frame_len=1042)
    assert R.rule_mtu(dataclasses.replace(ctx, journeys=(nf,))) is None


def test_rule_mtu_from_the_bridges_egress_hop():
    ctx = context("mtu")
    t = ctx.target
    ns = t.netns
    hops = [Hop(1000, 0, "received", ns, "up0", "port of br0"),
            Hop(1100, 0, "egress", ns, "vnet0", "tap, port of br0", location="br_nf_dev_queue_xmit",
                detail="too big: 1028 bytes > MTU 576", fault="too-big")]
    j = ping(1, t, copies=[dropped(t, "vnet0", "NOT_SPECIFIED", "br_nf_dev_queue_xmit+0x1a3")], hops=hops,
             frame_len=1042)
    f = R.rule_mtu(dataclasses.replace(ctx, journeys=(j,)))
    assert f is not None and any("too big: 1028 bytes > MTU 576" in e for e in f.evidence)


def test_rule_port_not_forwarding_from_the_bridges_refusal_while_the_frames_came():
    """The tap forwards by the time the snapshot is read, but the bridge's own hop refused it as
    listening when the frames came (STP after a flap): that is the cause, with the state seen."""
    ctx = context("healthy")
    t = ctx.target
    offered = Hop(1200, 0, "flood-port", t.netns, "vnet0", "tap, port of br0", location="maybe_deliver",
                  detail="refused: port listening", fault="port-listening")
    arp = flooded_arp(t, offered, dropped(t, "up0", "NOT_SPECIFIED", "br_flood+0x1"))
    f = R.rule_port_not_forwarding(dataclasses.replace(ctx, journeys=(arp,)))
    assert f is not None and f.cause == "port-not-forwarding" and "listening" in f.summary
    assert f.facts["stp_state_seen"] == "listening" and f.journeys == (1,)


def test_rule_port_not_forwarding_on_the_way_in_without_a_drop_reason():
    """5.10 gives no reason and 6.1/6.12 NOT_SPECIFIED for a frame dropped on a port that doesn't
    forward: the port it came in by and that port's state say it."""
    ctx = context("healthy")
    t = ctx.target
    assert ctx.bridge is not None
    up0 = ctx.bridge.port("up0")
    assert up0 is not None
    listening = dataclasses.replace(up0, stp_state="listening")
    br = dataclasses.replace(ctx.bridge, ports=tuple(listening if q.name == "up0" else q for q in ctx.bridge.ports))
    j = ping(1, t, copies=[dropped(t, "up0", "", "br_handle_frame+0x2f")])
    f = R._ingress_not_forwarding(dataclasses.replace(ctx, journeys=(j,), target=dataclasses.replace(t, bridge=br)))
    assert f is not None and f.facts["port"] == "up0" and f.facts["stp_state"] == "listening"


def test_rule_fdb_wrong_port_from_the_bridges_fdb_decision():
    ctx = context("healthy")
    t = ctx.target
    j = ping(1, t, copies=[Copy(0, "forwarded", "up1", t.netns, port="up1")])
    j.fdb = "up1"
    f = R.rule_fdb_wrong_port(dataclasses.replace(ctx, journeys=(j,)))
    assert f is not None and f.facts["fdb_port"] == "up1"


def test_rule_guest_link_down():
    d, _, _ = load("healthy")
    xml = domain(d["mac"], extra="<link state='down'/>")
    r = run("healthy", domains=xml)
    assert r.cause == "guest-link-down" and r.fix == ("virsh domif-setlink web1 vnet0 up",)


def test_rule_guest_not_reading_names_the_stopped_holder_and_resumes_it():
    d, _, _ = load("stopped")
    r = run("stopped")
    pid = r.target.holders[0].pid
    assert r.fix == (f"kill -CONT {pid}",) and str(pid) in r.summary
    assert any("FULL_RING at tun_net_xmit" in e for e in r.evidence)
    assert run("stopped", process_states={}).fix == ()  # no state given: no command, advice instead


def test_rule_guest_not_reading_paused_domain():
    d, _, _ = load("healthy")
    r = run("healthy", journeys=[], domains=domain(d["mac"], state="paused"))
    assert r.cause == "guest-not-reading" and r.fix == ("virsh resume web1",)


def test_queued_frames_at_the_window_end_are_not_guest_not_reading_when_the_guest_read():
    ctx = context("healthy")
    t = ctx.target
    read = [ping(i, t, copies=[Copy(0, "delivered", "vnet0", t.netns)]) for i in range(1, 5)]
    waiting = [ping(i, t, copies=[Copy(0, "queued", "vnet0", t.netns)]) for i in range(5, 15)]
    assert R.rule_guest_not_reading(dataclasses.replace(ctx, journeys=tuple(read + waiting))) is None
    # with lost events even a queue nobody was seen reading proves nothing
    assert R.rule_guest_not_reading(dataclasses.replace(ctx, journeys=tuple(waiting), lost_events=5)) is None
    assert R.rule_guest_not_reading(dataclasses.replace(ctx, journeys=tuple(waiting))).cause == "guest-not-reading"


def test_a_guest_reading_too_slowly():
    ctx = context("healthy")
    t = ctx.target
    read = [ping(i, t, copies=[Copy(0, "delivered", "vnet0", t.netns)]) for i in range(1, 5)]
    full = [ping(9, t, copies=[dropped(t, "vnet0", "FULL_RING", "tun_net_xmit+0x2e2")])]
    f = R.rule_guest_not_reading(dataclasses.replace(ctx, journeys=tuple(read + full)))
    assert "too slowly" in f.summary


def test_rule_unknown_drop_shows_reason_location_and_a_hint():
    ctx = context("healthy")
    t = ctx.target
    j = ping(1, t, copies=[dropped(t, "vnet0", "TC_EGRESS", "tcf_classify+0x55")])
    f = R.rule_unknown_drop(dataclasses.replace(ctx, journeys=(j,)))
    assert "TC_EGRESS at tcf_classify+0x55 on vnet0" in f.summary
    assert f.advice == ("a tc filter drops it on the way out: `tc -s filter show dev vnet0 egress`",)
    r = diagnose(ctx.snapshot, t, [j])
    assert r.cause == "unknown-drop" and r.sample == 1


def test_rule_ok_ignores_other_namespaces_asking_for_the_same_address():
    d, snap, journeys = load("healthy")
    t = locate(snap, d["mac"])
    other = Journey(99, 1, 2, REMOTE_MAC, "ff:ff:ff:ff:ff:ff", 0x0806, "ARP who-has 198.51.100.10 tell 198.51.100.1",
                    42, b"", [Hop(1, 0, "received", "elsewhere-hv", "up0", "port of br0")],
                    [Copy(0, "local", "br0", "elsewhere-hv")], "local", toward_guest=True)
    r = diagnose(snap, t, journeys + [other])
    assert r.cause == "ok" and 99 not in r.journeys_used


def test_rule_no_traffic_says_what_is_missing_and_that_the_guest_is_alive():
    d, snap, _ = load("healthy")
    t = dataclasses.replace(locate(snap, d["mac"]), ips=())
    own = Journey(5, 1, 2, d["mac"], REMOTE_MAC, 0x0806, "ARP reply", 42, b"",
                  [Hop(1, 0, "received", t.netns, "vnet0", "tap, port of br0")], [], "forwarded")
    r = diagnose(snap, t, [own], 5.0)
    assert r.cause == "no-traffic" and "--ip ADDR" in r.evidence[0] and "5 s window" in r.evidence[0]
    assert any("the guest itself sent 1 frame" in e for e in r.evidence)


def test_every_rule_copes_with_a_target_without_tap_or_bridge():
    d, snap, journeys = load("healthy")
    bare = Target(d["mac"], None, "none")
    for rule in RULES:
        rule(Context(snap, bare, tuple(journeys)))
    no_bridge = dataclasses.replace(locate(snap, d["mac"]), bridge=None, port=None)
    for rule in RULES:
        rule(Context(snap, no_bridge, tuple(journeys)))


# -- order and combination -----------------------------------------------------------------------------


def test_rule_order_most_specific_first():
    names = [r.__name__.replace("rule_", "").replace("_", "-") for r in RULES]
    assert names[0] == "tap-not-found" and names[-2:] == ["ok", "no-traffic"]
    assert names.index("port-not-in-bridge") < names.index("local-mac") < names.index("port-not-forwarding")
    assert names.index("netfilter-drop") < names.index("guest-not-reading") < names.index("unknown-drop")
    assert [n for n in names] == [c for c in CAUSES]  # the documented vocabulary is the rule order


def test_the_first_cause_wins_and_the_others_are_listed_as_also():
    d, snap, journeys = load("local-mac")
    policy = [{"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "prio": 0,
                         "policy": "drop"}}]
    spaces = []
    for ns in snap.namespaces:
        nf = dataclasses.replace(ns.br_netfilter, call_iptables=True) if ns.br_netfilter else ns.br_netfilter
        spaces.append(dataclasses.replace(ns, nftables=Nftables("ok", "", policy), br_netfilter=nf))
    snap2 = dataclasses.replace(snap, namespaces=tuple(spaces))
    r = diagnose(snap2, locate(snap2, d["mac"]), journeys)
    assert r.cause == "local-mac" and "netfilter-drop" in r.also


def test_older_call_form_still_works():
    d, snap, journeys = load("healthy")
    assert diagnose(locate(snap, d["mac"]), journeys).cause == "ok"
    assert diagnose(locate(snap, d["mac"]), journeys, lost_events=3).lost_events == 3


def test_lost_events_are_evidence():
    r = run("healthy", lost_events=7)
    assert any("7 kernel events were lost" in e for e in r.evidence)


# -- netfilter evaluation -------------------------------------------------------------------------------


def _rule(family, table, chain, handle, *expr):
    return {"rule": {"family": family, "table": table, "chain": chain, "handle": handle, "expr": list(expr)}}


def _chain(family, table, name, hook=None, policy="accept", prio=0):
    c = {"family": family, "table": table, "name": name, "handle": 1}
    if hook:
        c.update(type="filter", hook=hook, prio=prio, policy=policy)
    return {"chain": c}


def _m(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


IIF = {"meta": {"key": "iifname"}}
OIF = {"meta": {"key": "oifname"}}
FWD = Probe("ip", "forward", iifname="br0", oifname="br0", ether_type="ip", daddr="198.51.100.10", l4proto="icmp")


def test_netfilter_accept_rule_before_a_drop_policy():
    rs = Ruleset([_chain("ip", "filter", "FORWARD", "forward", "drop"),
                  _rule("ip", "filter", "FORWARD", 2, _m(IIF, "br0"), _m(OIF, "br0"), {"accept": None})])
    assert rs.decide([FWD]).verdict == "accept"
    other = Probe("ip", "forward", iifname="br1", oifname="br1", ether_type="ip")
    d = rs.decide([other])
    assert d.verdict == "drop" and d.culprit.kind == "policy" and d.culprit.tool == "iptables"


def test_netfilter_docker_like_forward_is_likely_not_certain():
    rs = Ruleset([
        _chain("ip", "filter", "FORWARD", "forward", "drop"), _chain("ip", "filter", "DOCKER-USER"),
        _rule("ip", "filter", "FORWARD", 2, {"counter": {"packets": 9, "bytes": 1}},
              {"jump": {"target": "DOCKER-USER"}}),
        _rule("ip", "filter", "DOCKER-USER", 3, {"return": None}),
        _rule("ip", "filter", "FORWARD", 4, {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                                       "right": ["established", "related"]}}, {"accept": None}),
        _rule("ip", "filter", "FORWARD", 5, _m(OIF, "docker0"), {"accept": None}),
    ])
    d = rs.decide([FWD])
    assert d.verdict == "unknown" and d.culprit.kind == "policy" and not d.culprit.certain


def test_netfilter_drop_rule_with_prefix_set_and_wildcard():
    rs = Ruleset([
        _chain("inet", "fw", "fwd", "forward", "accept"),
        _rule("inet", "fw", "fwd", 7, _m({"payload": {"protocol": "ip", "field": "daddr"}},
                                         {"prefix": {"addr": "198.51.100.0", "len": 24}}),
              _m(IIF, {"set": ["br*", "virbr0"]}), {"counter": {"packets": 3, "bytes": 1}}, {"drop": None}),
    ])
    d = rs.decide([FWD])
    assert d.verdict == "drop" and (d.culprit.family, d.culprit.chain, d.culprit.handle, d.culprit.position) == (
        "inet", "fwd", 7, 1)
    assert d.culprit.tool == "nft" and "198.51.100.0/24" in d.culprit.text and d.culprit.packets == 3
    assert rs.decide([dataclasses.replace(FWD, daddr="203.0.113.5")]).verdict == "accept"


def test_netfilter_address_ranges():
    daddr = {"payload": {"protocol": "ip", "field": "daddr"}}
    for rng, verdict in ((["198.51.100.1", "198.51.100.20"], "drop"), (["198.51.100.11", "198.51.100.20"], "accept"),
                         # another IP version's range never holds the address (comparing them raised TypeError)
                         (["2001:db8::1", "2001:db8::ff"], "accept")):
        rs = Ruleset([_chain("inet", "fw", "fwd", "forward", "accept"),
                      _rule("inet", "fw", "fwd", 7, _m(daddr, {"range": rng}), {"drop": None})])
        assert rs.decide([FWD]).verdict == verdict, rng


def test_netfilter_unknown_expressions_and_netdev_chains():
    rs = Ruleset([
        {"chain": {"family": "netdev", "table": "t", "name": "eg", "hook": "egress", "prio": 0, "policy": "accept",
                   "dev": "vnet0"}},
        _rule("netdev", "t", "eg", 2, _m({"meta": {"key": "mark"}}, 1), {"drop": None}),
    ])
    out = Probe("netdev", "egress", oifname="vnet0", ether_type="ip")
    d = rs.decide([out])
    assert d.verdict == "unknown" and d.culprit.handle == 2 and not d.culprit.certain
    assert rs.decide([dataclasses.replace(out, oifname="vnet1")]).verdict == "accept"


# -- output ---------------------------------------------------------------------------------------------


def _schema() -> dict:
    text = (ROOT / "docs" / "causes.md").read_text()
    block = re.search(r"JSON schema:\s*```json\n(.*?)```", text, re.S)
    return json.loads(block.group(1))


@pytest.mark.parametrize("name", RECORDINGS)
def test_json_output_follows_the_documented_schema(name):
    _, _, journeys = load(name)
    r = run(name)
    out = json.loads(json.dumps(to_json(r, journeys, 0)))
    jsonschema.validate(out, _schema())
    journey_schema = json.loads((ROOT / "docs" / "journey.schema.json").read_text())
    jsonschema.validators.validator_for(journey_schema).check_schema(journey_schema)
    journey = jsonschema.validators.validator_for(journey_schema)(journey_schema)  # the schema checked once
    for j in out["journeys"]:
        journey.validate(j)
    assert out["cause"] == r.cause and out["fix"] == list(r.fix)
    assert {j["id"] for j in out["journeys"]} <= set(out["journeys_used"])
    if r.sample is not None:
        assert r.sample in out["journeys_used"]


def test_render_text_shows_cause_evidence_sample_and_fix():
    _, _, journeys = load("local-mac")
    r = run("local-mac")
    console = Console(width=200, record=True)
    console.print(render_text(r, journeys))
    text = console.export_text()
    assert "local-mac:" in text and "evidence:" in text and f"$ {r.fix[0]}" in text
    assert f"sample journey #{r.sample}" in text and "dropped OTHERHOST at ip_rcv_core" in text
    assert "<interface type='bridge'>" in text


def test_journey_path():
    _, _, journeys = load("mtu")
    j = next(j for j in journeys if j.verdict == "dropped")
    assert journey_path(j).endswith("vnet0 dropped NOT_SPECIFIED at br_dev_queue_push_xmit+0x46")


def test_docs_document_every_code():
    doc = (ROOT / "docs" / "causes.md").read_text()
    for code in CAUSES:
        assert f"### `{code}`" in doc
    assert _schema()["$defs"]["cause"]["enum"] == list(CAUSES)


def test_every_rule_says_what_it_decides():
    for rule in RULES:
        assert rule.__doc__ and "\n" not in rule.__doc__.strip()


# -- helpers ---------------------------------------------------------------------------------------------


def test_in_ns_wording():
    assert in_ns("root", "ip", "link", "set", "dev", "tap10", "up") == "ip link set dev tap10 up"
    assert in_ns(None, "iptables", "-L") == "iptables -L"
    assert in_ns("hv1", "ip", "link", "set", "dev", "tap10", "up") == "ip -n hv1 link set dev tap10 up"
    assert in_ns("hv1", "bridge", "link") == "bridge -n hv1 link"
    assert in_ns("hv1", "iptables", "-L") == "ip netns exec hv1 iptables -L"
    assert in_ns("pid:42", "bridge", "link") == "nsenter -t 42 -n bridge link"
    assert in_ns("hv1", "nft", 'insert rule bridge t c oifname "vnet0" accept') == \
        "ip netns exec hv1 nft 'insert rule bridge t c oifname \"vnet0\" accept'"


def test_load_journeys_reads_follow_json_lines_back():
    _, _, journeys = load("healthy")
    lines = [json.dumps(journey_to_dict(j, 0)) for j in journeys]
    lines.append(json.dumps({"schema": "tapttrace.summary/1", "journeys": len(journeys)}))
    again = load_journeys(lines + [""])
    assert [journey_to_dict(j, 0) for j in again] == [journey_to_dict(j, 0) for j in journeys]


def test_read_process_states(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_text("42 (qemu (x) y) T 1 42 42 0 -1\n")
    holders = (TapHolder(42, 31, "qemu", (), 1, "vnet0"), TapHolder(43, 3, "gone", (), 1, "vnet1"))
    assert read_process_states(holders, str(tmp_path)) == {42: "T"}


def test_trimmed_keeps_a_few_of_each_kind():
    js = [{"verdict": "queued", "copies": [{"outcome": "queued", "reason": None}]}] * 100
    js += [{"verdict": "dropped", "copies": [{"outcome": "dropped", "reason": "FULL_RING"}]}] * 3
    assert len(trimmed(js, keep=10)) == 13


def test_fdb_entry_model_used_by_the_rules():
    e = FdbEntry("52:54:00:00:00:01", 4, "up0", "br0", None, "static", sticky=True)
    assert not e.permanent and not e.learned


def test_a_tap_option_naming_a_veth_counts_frames_sent_out_of_it():
    d, snap, _ = load("healthy")
    t = locate(snap, d["mac"], tap="up0")
    assert t.found_by == "--tap" and not t.tap.is_tap and t.port is not None
    out = ping(1, t, copies=[Copy(0, "forwarded", "up0", t.netns, port="up0")])
    ctx = Context(snap, dataclasses.replace(t, fdb=()), (out,))
    assert ctx.got == [out]
    assert R.rule_ok(ctx).cause == "ok"


def test_journeys_over_the_analysed_ones_are_counted_in_the_evidence():
    """diagnose keeps the first MAX_ANALYSED journeys of a flood; the rest are said, not hidden."""
    d, snap, journeys = load("healthy")
    target = locate(snap, d["mac"], ips=d.get("ips", LAB_GUEST_IP))
    plain = diagnose(snap, target, journeys, 3.0, process_states={})
    capped = diagnose(snap, target, journeys, 3.0, process_states={}, not_analysed=12345)
    assert capped.cause == plain.cause
    assert capped.evidence[:len(plain.evidence)] == plain.evidence
    assert any(e.startswith("12345 later journeys were seen but not analysed") for e in capped.evidence)


def test_rule_flood_blocked_names_the_ports_the_floods_went_to():
    ctx = context("flood-off")
    t = ctx.target
    offered = Hop(1200, 0, "flood-port", t.netns, "up0", "port of br0", location="maybe_deliver",
                  detail="not back out the port it came in by")
    arp = flooded_arp(t, offered, Copy(0, "local", "br0", t.netns))
    f = R.rule_flood_blocked(dataclasses.replace(ctx, journeys=(arp,)))
    assert f is not None and any("offered them to up0, never to" in e for e in f.evidence), f.evidence
