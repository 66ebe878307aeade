"""Property-based tests of what diagnose and follow read about the machine's configuration (issue
14): `nft -j list ruleset` output, rtnetlink link and FDB messages, libvirt domain XML,
/proc/kallsyms, /proc/PID/fdinfo, snapshot recordings, and the values users type. Pure: no root.

Whatever they say, nothing may crash: what can't be read is a clear error (UsageError, one line)
or is left out and counted where the output shows it."""
from __future__ import annotations

import json
import math
import string
from pathlib import Path

import pytest
from fuzzing import FUZZ
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from tracer import snapshot
from tracer.config import FollowConfig, mac_to_int, parse_ip, parse_mac
from tracer.diagnosis.netfilter import HOOK_ORDER, Probe, Ruleset, rule_text
from tracer.errors import UsageError
from tracer.kallsyms import Kallsyms
from tracer.libvirt_xml import LibvirtInterface, parse_domain_xml
from tracer.netns import Netns
from tracer.taps import parse_fdinfo_iff, qemu_guest_name

FIXTURES = Path(__file__).parent / "fixtures"

json_scalars = st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=False) | st.text(max_size=8)
any_json = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                        st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def maybe(strategy):
    """What nft prints there, or anything JSON can hold."""
    return st.one_of(strategy, strategy, strategy, any_json)


# ---------------------------------------------------------------------------- nft -j

FAMILIES = ["ip", "ip6", "inet", "bridge", "netdev", "arp"]
names = st.sampled_from(["filter", "FORWARD", "fw", "vmfw", "INPUT", "sub"])
ips = st.sampled_from(["198.51.100.10", "198.51.100.0", "203.0.113.7", "2001:db8::1", "::", "not-an-ip"])
left = maybe(st.one_of(
    st.fixed_dictionaries({"meta": maybe(st.fixed_dictionaries({"key": st.sampled_from(
        ["iifname", "oifname", "l4proto", "protocol", "nfproto", "ibrname", "mark"])}))}),
    st.fixed_dictionaries({"payload": maybe(st.fixed_dictionaries({
        "protocol": st.sampled_from(["ether", "ip", "ip6", "tcp"]),
        "field": st.sampled_from(["saddr", "daddr", "type", "protocol", "nexthdr", "dport"])}))})))
right = st.recursive(maybe(st.one_of(
    st.sampled_from(["vnet*", "br0", "ip", "ip6", "icmp", "52:54:00:e4:2e:c1", "@blocked"]), ips, st.integers(),
    st.fixed_dictionaries({"prefix": maybe(st.fixed_dictionaries({"addr": maybe(ips), "len": maybe(
        st.integers(-1, 200))}))}),
    st.fixed_dictionaries({"range": maybe(st.lists(maybe(ips), max_size=3))}))),
    lambda inner: st.fixed_dictionaries({"set": maybe(st.lists(inner, max_size=3))}), max_leaves=6)
expressions = maybe(st.one_of(
    st.fixed_dictionaries({"match": maybe(st.fixed_dictionaries(
        {"op": st.sampled_from(["==", "!=", "in", "<", "&"]), "left": left, "right": right}))}),
    st.sampled_from([{"accept": None}, {"drop": None}, {"reject": None}, {"return": None}, {"queue": {"num": 1}},
                     {"limit": {"rate": 1}}, {}]),
    st.builds(lambda k, v: {k: v}, st.sampled_from(["jump", "goto"]), maybe(st.fixed_dictionaries({"target": names}))),
    st.fixed_dictionaries({"counter": maybe(st.fixed_dictionaries({"packets": maybe(st.integers(0, 10**6)),
                                                                   "bytes": st.integers(0, 10**9)}))}),
    st.fixed_dictionaries({"xt": maybe(st.fixed_dictionaries({"type": st.sampled_from(["match", "target"]),
                                                              "name": st.sampled_from(["DROP", "ACCEPT", "LOG",
                                                                                       "physdev"])}))}),
))
chain = st.fixed_dictionaries({"family": maybe(st.sampled_from(FAMILIES)), "table": maybe(names),
                               "name": maybe(names)},
                              optional={"hook": maybe(st.sampled_from(HOOK_ORDER + ("input",))),
                                        "prio": maybe(st.integers(-400, 400) | st.sampled_from(["filter", "raw"])),
                                        "policy": maybe(st.sampled_from(["accept", "drop"])),
                                        "dev": maybe(st.sampled_from(["eth0", "up0"]) | st.lists(
                                            st.sampled_from(["eth0", "vnet0"]))),
                                        "type": st.just("filter")})
rule = st.fixed_dictionaries({"family": maybe(st.sampled_from(FAMILIES)), "table": maybe(names),
                              "chain": maybe(names)},
                             optional={"handle": maybe(st.integers(0, 100)),
                                       "expr": maybe(st.lists(expressions, max_size=5))})
ruleset_items = st.lists(maybe(st.one_of(
    st.fixed_dictionaries({"chain": maybe(chain)}), st.fixed_dictionaries({"rule": maybe(rule)}),
    st.fixed_dictionaries({"table": maybe(st.fixed_dictionaries({"family": st.sampled_from(FAMILIES),
                                                                 "name": names}))}),
    st.just({"metainfo": {"version": "1.0.6", "json_schema_version": 1}}))), max_size=12)
probes = st.builds(Probe, family=st.sampled_from(["bridge", "ip", "ip6", "netdev"]), hook=st.sampled_from(HOOK_ORDER),
                   iifname=st.sampled_from([None, "up0", "vnet0"]), oifname=st.sampled_from([None, "vnet0"]),
                   ether_saddr=st.sampled_from([None, "52:54:00:e4:2e:c1"]), ether_type=st.sampled_from(
                       [None, "ip", "ip6", "arp"]), saddr=st.sampled_from([None, "198.51.100.1", "2001:db8::2"]),
                   daddr=st.sampled_from([None, "198.51.100.10"]), l4proto=st.sampled_from([None, "icmp", "tcp"]),
                   bridge=st.sampled_from([None, "br0"]))


@FUZZ
@given(ruleset_items, st.lists(probes, min_size=1, max_size=4))
def test_any_nft_ruleset_is_evaluated_or_its_unreadable_items_counted(items, probe_list):
    ruleset = Ruleset(items)
    decision = ruleset.decide(probe_list)
    assert decision.verdict in ("accept", "drop", "unknown")
    if decision.culprit is not None:
        assert decision.culprit.describe()
    for c in decision.candidates:
        c.describe()
    assert 0 <= ruleset.skipped <= len(items)
    for rules in ruleset.rules.values():
        for r in rules:
            rule_text(r)
    wellformed = [i for i in items if isinstance(i, dict) and (isinstance(i.get("chain"), dict) or
                                                              isinstance(i.get("rule"), dict))]
    assert ruleset.skipped >= len([i for i in items if isinstance(i, dict) and (
        "chain" in i or "rule" in i)]) - len(wellformed)


@FUZZ
@given(st.one_of(ruleset_items.map(lambda items: json.dumps({"nftables": items})), any_json.map(json.dumps),
                 st.text(max_size=40)))
def test_nft_output_of_any_shape_is_a_ruleset_or_an_error(stdout):
    nft = snapshot.parse_nft_json(stdout)
    assert nft.status in ("ok", "error")
    if nft.status == "error":
        assert nft.detail and nft.ruleset == []
    nft.tables(), nft.rules(), nft.drop_rules()  # what diagnose reads of it


# ---------------------------------------------------------------------------- rtnetlink

u8, u32 = st.integers(0, 255), st.integers(0, 2**32 - 1)
ifnames = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=15)


def attrs(*pairs):
    """A random subset of netlink attributes, each (name, value strategy)."""
    return st.lists(st.sampled_from(pairs), unique_by=lambda p: p[0]).flatmap(
        lambda chosen: st.tuples(*(st.tuples(st.just(n), v) for n, v in chosen)).map(list))


@st.composite
def link_messages(draw, index: int):
    """An RTM_NEWLINK as the kernel sends it, with any subset of the attributes snapshot reads
    and any values their types hold, encoded and decoded by pyroute2 as a dump would be."""
    slave = attrs(("IFLA_BRPORT_STATE", u8), ("IFLA_BRPORT_LEARNING", u8), ("IFLA_BRPORT_UNICAST_FLOOD", u8),
                  ("IFLA_BRPORT_MCAST_FLOOD", u8), ("IFLA_BRPORT_BCAST_FLOOD", u8), ("IFLA_BRPORT_ISOLATED", u8),
                  ("IFLA_BRPORT_MODE", u8), ("IFLA_BRPORT_NEIGH_SUPPRESS", u8), ("IFLA_BRPORT_LOCKED", u8),
                  ("IFLA_BRPORT_PROXYARP", u8), ("IFLA_BRPORT_COST", u32), ("IFLA_BRPORT_PRIORITY",
                                                                              st.integers(0, 0xFFFF)))
    bridge_data = attrs(("IFLA_BR_STP_STATE", u32), ("IFLA_BR_VLAN_FILTERING", u8), ("IFLA_BR_AGEING_TIME", u32),
                        ("IFLA_BR_FORWARD_DELAY", u32), ("IFLA_BR_NF_CALL_IPTABLES", u8))
    # The kernel sends a kind before its data, and pyroute2 decodes the data by that kind (a kind it
    # doesn't know, like "wireguard" here, it hands back as hex).
    kind = draw(st.sampled_from(["bridge", "tun", "veth", "wireguard", None]))
    info = []
    if kind is not None:
        info.append(("IFLA_INFO_KIND", kind))
        if kind == "bridge" and draw(st.booleans()):
            info.append(("IFLA_INFO_DATA", {"attrs": draw(bridge_data)}))
        elif kind == "tun" and draw(st.booleans()):
            info.append(("IFLA_INFO_DATA", {"attrs": draw(attrs(("IFLA_TUN_TYPE", u8)))}))
        elif kind == "wireguard" and draw(st.booleans()):
            info.append(("IFLA_INFO_DATA", draw(st.binary(max_size=8))))
    if draw(st.booleans()):
        info.append(("IFLA_INFO_SLAVE_KIND", "bridge"))
        if draw(st.booleans()):
            info.append(("IFLA_INFO_SLAVE_DATA", {"attrs": draw(slave)}))
    info = st.just(info)
    top = draw(attrs(("IFLA_IFNAME", ifnames), ("IFLA_MTU", u32), ("IFLA_MASTER", st.integers(0, 6)),
                     ("IFLA_ADDRESS", st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))),
                     ("IFLA_OPERSTATE", st.sampled_from(["UP", "DOWN", "UNKNOWN", "LOWERLAYERDOWN", "DORMANT"])),
                     ("IFLA_CARRIER", u8), ("IFLA_LINKINFO", info.map(lambda a: {"attrs": a}))))
    msg = ifinfmsg()
    msg["index"], msg["flags"], msg["attrs"] = index, draw(u32), top
    msg.encode()
    out = ifinfmsg(msg.data)
    out.decode()
    return out


@st.composite
def fdb_messages(draw):
    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["state"], msg["flags"] = 7, draw(st.integers(0, 6)), draw(
        st.integers(0, 0xFFFF)), draw(u8)
    msg["attrs"] = draw(attrs(("NDA_LLADDR", st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))),
                              ("NDA_MASTER", st.integers(0, 6)), ("NDA_VLAN", st.integers(0, 4095)),
                              ("NDA_FLAGS_EXT", u32), ("NDA_DST", st.sampled_from(["198.51.100.9", "2001:db8::9"]))))
    msg.encode()
    out = ndmsg(msg.data)
    out.decode()
    return out


@FUZZ
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(*(link_messages(i + 1) for i in range(n)))),
       st.lists(fdb_messages(), max_size=4))
def test_any_link_and_fdb_dump_makes_a_snapshot(links, neighbours):
    ns = Netns("tfuzz", 4026531840, "/proc/self/ns/net")
    devices = snapshot._devices(ns, links)
    bridges = snapshot._bridges(list(links))
    names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in links}
    fdb = [snapshot._fdb_entry(m, names) for m in neighbours]
    assert [d.ifindex for d in devices] == [m["index"] for m in links]
    for b in bridges:
        assert b.stp_mode and all(p.stp_state for p in b.ports)
    snap = snapshot.Snapshot(0.0, "6.18", (snapshot.NetnsSnapshot(ns, tuple(devices), tuple(bridges), tuple(fdb),
                                                                  None, snapshot.Nftables("ok", "", [])),))
    assert snapshot.Snapshot.from_json(snap.to_json()) == snap  # recordings replay what was seen


@FUZZ
@given(st.one_of(any_json.map(json.dumps), st.text(max_size=30),
                 any_json.map(lambda j: json.dumps({"format": snapshot.FORMAT, "namespaces": j, "taken_at": 0,
                                                    "kernel": "x"}))))
def test_a_snapshot_recording_of_any_shape_is_read_or_refused_in_one_line(text):
    try:
        snapshot.Snapshot.from_json(text)
    except UsageError as err:
        assert "\n" not in err.message


# ---------------------------------------------------------------------------- libvirt XML

attr_values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
mtu_sizes = st.one_of(st.integers(0, 70000).map(str), st.sampled_from(["", "²", "٣", "1e3", "-1", " 1500", "9" * 5000]),
                      attr_values)


@st.composite
def domain_xml(draw) -> str:
    from xml.sax.saxutils import quoteattr
    ifaces = []
    for _ in range(draw(st.integers(0, 3))):
        mac = draw(st.sampled_from(['52:54:00:e4:2e:c1', '52-54-00-E4-2E-C1', 'x', '']))
        parts = [f"<mac address={quoteattr(mac)}/>"]
        if draw(st.booleans()):
            managed = draw(st.sampled_from(['no', 'yes', '']))
            parts.append(f"<target dev={quoteattr(draw(attr_values))} managed={quoteattr(managed)}/>")
        if draw(st.booleans()):
            parts.append(f"<mtu size={quoteattr(draw(mtu_sizes))}/>")
        if draw(st.booleans()):
            parts.append(f"<source bridge={quoteattr(draw(attr_values))}/>")
        parts += draw(st.lists(st.sampled_from(["<port isolated='yes'/>", "<link state='down'/>",
                                                "<filterref filter='clean-traffic'/>", "<mtu/>", "<mac/>"])))
        ifaces.append(f"<interface type={quoteattr(draw(attr_values))}>{''.join(parts)}</interface>")
    dom = f"<domain type='kvm'><name>{draw(st.sampled_from(['guest1', '', 'a&amp;b']))}</name><devices>" \
          f"{''.join(ifaces)}</devices></domain>"
    if draw(st.booleans()):
        dom = f"<domstatus state={quoteattr(draw(attr_values))} pid='1'>{dom}</domstatus>"
    prolog = draw(st.sampled_from(["", "<?xml version='1.0'?>", "<?xml version='1.0' encoding='UTF-8'?>",
                                   "<?xml version='1.0' encoding='utf-16'?>",
                                   "<?xml version='1.0' encoding='latin-1'?>",
                                   "<!DOCTYPE domain [<!ENTITY a 'aaaa'>]>"]))
    text = prolog + dom
    if draw(st.booleans()):  # cut anywhere, as a file libvirt was rewriting
        text = text[:draw(st.integers(0, len(text)))]
    return text


@FUZZ
@given(st.one_of(domain_xml(), st.text(max_size=60)))
def test_any_domain_xml_gives_its_interfaces_or_none(text):
    found = parse_domain_xml(text, "fuzz.xml")
    for i in found:
        assert isinstance(i, LibvirtInterface)
        assert i.mtu is None or i.mtu >= 0
        assert i.mac == "" or parse_mac(i.mac) == i.mac


# ---------------------------------------------------------------------------- /proc


kallsyms_lines = st.one_of(
    st.builds(lambda a, t, n, m: f"{a:016x} {t} {n}{m}", st.integers(0, 2**64 - 1), st.sampled_from("tTwWdDbBrRA"),
              st.text(string.ascii_letters + "_.$", min_size=1, max_size=12),
              st.sampled_from(["", "\t[bridge]", "\t[tun", "\t"])),
    st.text(max_size=30))


@FUZZ
@given(lines=st.lists(kallsyms_lines, max_size=30), addresses=st.lists(st.integers(-1, 2**65), max_size=5))
def test_any_kallsyms_text_symbolizes_every_address(lines, addresses, tmp_path_factory):
    path = tmp_path_factory.mktemp("kallsyms") / "kallsyms"
    path.write_text("\n".join(lines) + "\n")
    table = Kallsyms(path)
    len(table), table.restricted
    for a in addresses:
        assert table.symbolize(a)
        if a >= 0:
            table.lookup(a)
    for line in lines:
        name = line.split(" ")[-1].split("\t")[0]
        name in table  # noqa: B015


@FUZZ
@given(st.text(max_size=200), st.lists(st.text(max_size=20), max_size=6))
def test_any_fdinfo_and_cmdline_name_a_tap_and_a_guest_or_nothing(fdinfo, cmdline):
    assert "\n" not in parse_fdinfo_iff(fdinfo)
    parse_fdinfo_iff("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1\n" + fdinfo)
    assert isinstance(qemu_guest_name(tuple(cmdline)), str)


# ---------------------------------------------------------------------------- what users type


@FUZZ
@given(st.text(max_size=24), st.lists(st.text(max_size=20), max_size=3),
       st.one_of(st.none(), st.integers(-5, 5)), st.one_of(st.none(), st.floats()),
       st.integers(-4, 4096))
def test_follow_config_is_valid_or_refused_in_one_line(mac, ip_list, count, duration, pages):
    try:
        config = FollowConfig(mac, ips=tuple(ip_list), count=count, duration=duration, ringbuf_pages=pages)
    except UsageError as err:
        assert "\n" not in err.message
        return
    assert config.mac == parse_mac(config.mac) and 0 <= mac_to_int(config.mac) < 2**48
    assert all(parse_ip(i) == i for i in config.ips)
    assert config.duration is None or (config.duration > 0 and math.isfinite(config.duration))
    assert config.count is None or config.count >= 1


@pytest.mark.parametrize("duration", [math.nan, math.inf, -math.inf, 0.0])
def test_a_duration_that_is_no_positive_number_is_refused(duration):
    with pytest.raises(UsageError, match="--duration"):
        FollowConfig("52:54:00:e4:2e:c1", duration=duration)
