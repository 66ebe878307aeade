"""The diagnosis rules, replayed on snapshots and journeys recorded from real lab scenarios (no root).

Each recording (tests/recordings/diag-*.json) holds the lab namespaces' snapshot taken after the
window, the journeys diagnose saw, and the cause it named on the real kernel.
"""
import dataclasses
import json
from pathlib import Path

import pytest

from tracer import causes
from tracer.causes import Target, diagnose, in_ns, locate
from tracer.errors import UsageError
from tracer.sinks.jsonl import journey_from_dict
from tracer.snapshot import Snapshot

REC = Path(__file__).parent / "recordings"


def load(name):
    d = json.loads((REC / f"diag-{name}.json").read_text())
    snap = Snapshot.from_json(json.dumps(d["snapshot"]))
    return d, snap, [journey_from_dict(j) for j in d["journeys"]]


@pytest.mark.parametrize("name, cause", [
    ("healthy", "ok"), ("local-mac", "local-mac"), ("not-in-bridge", "port-not-in-bridge"),
    ("stp", "port-not-forwarding"), ("netfilter", "netfilter-drop"), ("not-reading", "guest-not-reading"),
    ("mtu", "mtu"), ("flood-off", "flood-blocked"),
])
def test_each_recorded_scenario_gets_its_cause(name, cause):
    d, snap, journeys = load(name)
    assert d["expected"] == cause  # what the real run said
    result = diagnose(locate(snap, d["mac"]), journeys)
    assert result.cause == cause
    assert result.summary and "\n" not in result.summary
    if cause != "ok":
        assert result.evidence


def test_local_mac_names_bridge_tap_and_the_libvirt_fix():
    d, snap, journeys = load("local-mac")
    target = locate(snap, d["mac"])
    assert target.found_by == "carries-guest-mac" and target.tap.name == "vnet0"
    r = diagnose(target, journeys)
    assert r.summary.startswith(f"br0 holds {d['mac']} as its own address because vnet0 carries the guest's MAC")
    hv = target.ns.name
    assert r.fix == (f"ip -n {hv} link set dev vnet0 address fe{d['mac'][2:]}",)
    assert "<interface type='bridge'>" in r.libvirt_xml and d["mac"] in r.libvirt_xml
    assert any("passed up to br0's host stack" in e and "OTHERHOST" in e for e in r.evidence)


def test_config_causes_need_no_traffic():
    for name, cause in (("local-mac", "local-mac"), ("not-in-bridge", "port-not-in-bridge"),
                        ("stp", "port-not-forwarding"), ("flood-off", "flood-blocked")):
        d, snap, _ = load(name)
        assert diagnose(locate(snap, d["mac"]), []).cause == cause


def test_without_traffic_a_healthy_guest_is_no_traffic():
    d, snap, _ = load("healthy")
    r = diagnose(locate(snap, d["mac"]), [])
    assert r.cause == "no-traffic" and "--ip" in r.evidence[0]


def test_tap_is_found_by_libvirt_convention_or_by_name():
    d, snap, _ = load("healthy")
    assert locate(snap, d["mac"]).found_by == "libvirt-convention"
    assert locate(snap, d["mac"], tap="vnet0").found_by == "--tap"
    with pytest.raises(UsageError):
        locate(snap, d["mac"], tap="nonexistent0")


def test_unknown_mac_has_no_tap():
    _, snap, _ = load("healthy")
    r = diagnose(locate(snap, "52:54:00:00:00:99"), [])
    assert r.cause == "tap-not-found" and "--tap" in r.evidence[0]


def test_fixes_are_exact_commands_in_the_right_namespace():
    d, snap, journeys = load("netfilter")
    target = locate(snap, d["mac"])
    r = diagnose(target, journeys)
    assert r.fix == (f"ip netns exec {target.ns.name} iptables -I FORWARD -i br0 -o br0 -j ACCEPT",)
    assert "FORWARD" in r.summary and "policy DROP" in r.summary
    d, snap, journeys = load("mtu")
    r = diagnose(locate(snap, d["mac"]), journeys)
    assert r.fix[0].endswith("link set dev vnet0 mtu 1500") and "576" in r.summary


def test_guest_not_reading_names_the_holder():
    d, snap, journeys = load("not-reading")
    target = locate(snap, d["mac"])
    r = diagnose(target, journeys)
    pid = target.holders[0].pid
    assert any(str(pid) in e for e in r.evidence) and any("FULL_RING" in e for e in r.evidence)


def test_in_ns_wording():
    root = type("NS", (), {"name": "root"})()
    named = type("NS", (), {"name": "hv1"})()
    pid = type("NS", (), {"name": "pid:42"})()
    assert in_ns(root, "ip", "link", "set", "dev", "tap10", "up") == "ip link set dev tap10 up"
    assert in_ns(named, "ip", "link", "set", "dev", "tap10", "up") == "ip -n hv1 link set dev tap10 up"
    assert in_ns(named, "iptables", "-L") == "ip netns exec hv1 iptables -L"
    assert in_ns(pid, "bridge", "link") == "nsenter -t 42 -n bridge link"


def test_rule_order_most_specific_first():
    names = [r.__name__ for r in causes.RULES]
    assert names.index("rule_local_mac") < names.index("rule_ok") < names.index("rule_no_traffic")
    assert names[0] == "rule_tap_not_found" and names[-1] == "rule_no_traffic"
    # every code the rules can give is in the documented vocabulary
    doc = (Path(__file__).parent.parent / "docs" / "causes.md").read_text()
    for code in causes.CAUSES:
        assert f"`{code}`" in doc


def test_a_target_without_bridge_facts_never_crashes_a_rule():
    d, snap, journeys = load("healthy")
    bare = dataclasses.replace(locate(snap, d["mac"]), bridge=None, port=None, ns=None)
    for rule in causes.RULES[2:]:
        rule(bare, journeys)
    assert isinstance(bare, Target)
