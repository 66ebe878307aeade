"""The rules: each a small function from Context to a Finding (or None), tried most specific first.

The order is the order a frame for the guest meets the problems: no tap at all, a tap outside
the bridge or on another one, a bridge that keeps the frames for itself, ports that don't
forward, an FDB pointing elsewhere, ports that don't get floods, then drops on the way (the
tap's own filter, netfilter, MTU), a guest that doesn't read, and last what no rule explains.
`ok` and `no-traffic` come after every cause: they only hold when nothing is wrong.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Optional

from ..libvirt_xml import bridge_interface_xml
from . import journeys as jv
from .context import Context
from .locate import libvirt_tap_mac
from .model import Finding
from .netfilter import Culprit, Probe, Ruleset

Rule = Callable[[Context], Optional[Finding]]

NETFILTER_LOCATIONS = ("nf_hook_slow", "nft_do_chain", "ipt_do_table", "ip6t_do_table", "ebt_do_table",
                       "arpt_do_table")


def _loc(location: str) -> str:
    """The function part of 'func+0x1b3'."""
    return location.split("+", 1)[0]


def _n(count: int, what: str) -> str:
    return f"{count} {what}" + ("" if count == 1 else "s")


def _were(count: int) -> str:
    return "was" if count == 1 else "were"


def _basis(config: bool, traffic: bool) -> str:
    return "configuration+traffic" if config and traffic else ("traffic" if traffic else "configuration")


# -- 1. where is the guest? -------------------------------------------------------------------------


def rule_tap_not_found(ctx: Context) -> Optional[Finding]:
    """No tap belongs to the MAC: nothing else can be checked."""
    t = ctx.target
    if t.tap is not None:
        return None
    fe = libvirt_tap_mac(t.mac)
    evidence = [f"no tap carries {t.mac} or libvirt's {fe}, no libvirt domain XML names one for it, and no "
                "bridge learned the MAC on a tap (pass --tap DEV to name it)"]
    evidence += [f"FDB of {h.entry.master or h.entry.dev}{' in ' + h.netns if h.netns != 'root' else ''}: "
                 f"{t.mac} on {h.entry.dev} ({h.entry.state})" for h in t.fdb]
    evidence += list(t.notes)
    fix: tuple[str, ...] = ()
    if t.libvirt is not None and not t.libvirt.live:
        evidence.append(f"libvirt domain {t.libvirt.domain} has an interface with this MAC but is not running")
        fix = (f"virsh start {t.libvirt.domain}",)
    return Finding("tap-not-found", f"no tap on this host belongs to {t.mac}, so no bridge here can deliver "
                   "frames to the guest", tuple(evidence), fix,
                   advice=("name the guest's tap with --tap DEV (`ip -d link show type tun` lists taps)",),
                   facts={"fdb": [{"netns": h.netns, "bridge": h.entry.master, "dev": h.entry.dev,
                                   "state": h.entry.state} for h in t.fdb]})


def rule_port_not_in_bridge(ctx: Context) -> Optional[Finding]:
    """The tap exists but is no port of a bridge."""
    t = ctx.target
    if t.tap is None or t.port is not None:
        return None
    tap, ns = t.tap, ctx.ns
    bridges = list(ns.bridges) if ns else []
    crossed = sorted({j.bridge for j in ctx.toward if j.bridge})
    evidence = [f"{tap.name}{ctx.where()} is a tap held by {ctx.holders_text()}, but it is not a port of any bridge"]
    want, why = "", ""
    if t.libvirt is not None and t.libvirt.source_bridge and ns and ns.bridge(t.libvirt.source_bridge):
        want, why = t.libvirt.source_bridge, f"libvirt domain {t.libvirt.domain} puts it on {t.libvirt.source_bridge}"
    elif len(bridges) == 1:
        want, why = bridges[0].name, f"{bridges[0].name} is the only bridge in that namespace"
    elif len(crossed) == 1 and ns and ns.bridge(crossed[0]):
        want, why = crossed[0], f"frames for the guest cross {crossed[0]}"
    if why:
        evidence.append(why)
    elif bridges:
        evidence.append("bridges in that namespace: " + ", ".join(b.name for b in bridges)
                        + ": tapttrace can't tell which one the guest belongs on")
    else:
        evidence.append("there is no bridge in that namespace")
    if tap.kind in ("macvtap", "macvlan", "ipvtap", "ipvlan"):
        evidence.append(f"{tap.name} is a {tap.kind} device: it hangs off its lower device, no bridge is involved "
                        "(libvirt type='direct'); tapttrace follows bridges")
    if tap.master is not None and tap.master_name:
        master = ns.device(tap.master) if ns else None
        evidence.append(f"{tap.name} is enslaved to {tap.master_name} ({master.kind if master else '?'}), "
                        "which is not a Linux bridge")
    if crossed:
        evidence.append(f"{_n(len(ctx.lost), 'frame')} for the guest crossed {', '.join(crossed)} and never "
                        f"reached {tap.name}")
    fix: list[str] = []
    if tap.mac == t.mac:
        fix.append(ctx.cmd("ip", "link", "set", "dev", tap.name, "address", libvirt_tap_mac(t.mac)))
        evidence.append(f"{tap.name} also carries the guest's own MAC: once in a bridge, that bridge would keep "
                        "the guest's frames for itself (local-mac), so the fix changes it first")
    if want:
        fix.append(ctx.cmd("ip", "link", "set", "dev", tap.name, "master", want))
    summary = f"{tap.name} is not attached to a bridge, so no bridge can send the guest's frames to it"
    return Finding("port-not-in-bridge", summary, tuple(evidence), tuple(fix),
                   libvirt_xml=bridge_interface_xml(t.mac, want) if want and t.libvirt is not None else "",
                   facts={"tap": tap.name, "netns": ctx.netns, "bridge": want or None,
                          "bridges": [b.name for b in bridges]},
                   journeys=jv.ids_of(ctx.lost), basis=_basis(True, bool(ctx.lost)))


def rule_wrong_bridge(ctx: Context) -> Optional[Finding]:
    """The tap is a port of one bridge, but the guest's frames (or its domain XML) use another."""
    t, br = ctx.target, ctx.bridge
    if br is None or t.tap is None or ctx.ns is None:
        return None
    want, evidence = "", []
    if t.libvirt is not None and t.libvirt.source_bridge and t.libvirt.source_bridge != br.name \
            and ctx.ns.bridge(t.libvirt.source_bridge):
        want = t.libvirt.source_bridge
        evidence.append(f"libvirt domain {t.libvirt.domain} puts {t.mac} on {want} ({t.libvirt.path}), but "
                        f"{ctx.tap} is a port of {br.name}")
    crossed = Counter(j.bridge for j in ctx.lost if j.bridge and j.bridge != br.name and ctx.ns.bridge(j.bridge))
    if not ctx.got and crossed and not any(j.bridge == br.name for j in ctx.toward):
        other = crossed.most_common(1)[0][0]
        want = want or other
        evidence.append(f"{_n(sum(crossed.values()), 'frame')} for the guest crossed {other}, none {br.name}")
    if not want:
        return None
    return Finding("wrong-bridge", f"{ctx.tap} is a port of {br.name}, but the guest's frames arrive on {want}, so "
                   "they never reach it", tuple(evidence),
                   (ctx.cmd("ip", "link", "set", "dev", ctx.tap, "master", want),),
                   facts={"tap": ctx.tap, "bridge": br.name, "expected_bridge": want},
                   journeys=jv.ids_of(ctx.lost), basis=_basis(t.libvirt is not None, bool(crossed)))


# -- 2. the bridge keeps the frames, or won't send them ------------------------------------------------


def rule_local_mac(ctx: Context) -> Optional[Finding]:
    """The guest's MAC is a local (permanent) FDB entry: the bridge takes the frames as its own."""
    t, br, ns = ctx.target, ctx.bridge, ctx.ns
    if br is None or ns is None or t.tap is None:
        return None
    local = [e for e in ns.fdb_of(br.name, t.mac) if e.permanent]
    if not local:
        return None
    holder = local[0].dev
    fe = libvirt_tap_mac(t.mac)
    fix: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()
    if holder == ctx.tap or t.tap.mac == t.mac:
        why = f"because {ctx.tap} carries the guest's MAC"
        fix = (ctx.cmd("ip", "link", "set", "dev", ctx.tap, "address", fe),)
    elif holder == br.name:
        why = f"because {br.name} itself was given the guest's MAC"
        uplinks = [p for p in br.ports if not p.is_tap and p.mac and p.mac != t.mac]
        if uplinks:
            fix = (ctx.cmd("ip", "link", "set", "dev", br.name, "address", uplinks[0].mac),)
        advice = (f"give {br.name} an address of its own (a NIC's, as the bridge would take by itself)",)
    else:
        why = f"because its port {holder} carries the guest's MAC"
        advice = (f"give {holder} another address: only the guest may use {t.mac}",)
    up = [j for j in ctx.lost if jv.passed_up(j)]
    evidence = [f"FDB of {br.name}{ctx.where()}: {t.mac} is a local (permanent) entry on {holder}",
                f"{ctx.tap}'s MAC is {t.tap.mac}; libvirt gives the taps it creates {fe}, never the guest's own MAC"]
    lv = t.libvirt
    # a tap libvirt uses as it finds it: <interface type='ethernet'> or <target managed='no'/>
    if lv is not None and (lv.type == "ethernet" or not lv.target_managed) and holder == ctx.tap:
        why = f"because {ctx.tap}, the tap of vm {lv.domain}, carries the guest's MAC"
        managed = "" if lv.target_managed else " managed='no'"
        evidence += [
            f"vm {lv.domain}'s <interface type='{lv.type}'> uses {ctx.tap} as it finds it (<target dev='{ctx.tap}'"
            f"{managed}/>): libvirt opened it and handed the fd to "
            f"{ctx.holders_text()}, but left its MAC as whoever created it set it",
            f"with <interface type='bridge'> libvirt creates the tap itself, gives it {fe} and adds it to the "
            f"bridge, so the bridge never holds the guest's MAC: that is why type='bridge' works and this doesn't"]
    if up:
        drop = jv.first_drop(up)
        how = f"; dropped there as {drop.reason} at {drop.location}" if drop else "; consumed there"
        evidence.append(f"{_n(len(up), 'frame')} for the guest {_were(len(up))} passed up to {br.name}'s host stack "
                        f"instead of {ctx.tap}{how}")
    elif not ctx.toward:
        evidence.append("found from the configuration alone: no frame for the guest was needed")
    xml = bridge_interface_xml(t.mac, br.name)
    if t.libvirt is not None and (t.libvirt.type == "ethernet" or not t.libvirt.target_managed):
        xml += (f"\n<!-- or keep {t.libvirt.domain}'s type='{t.libvirt.type}' interface, but create {ctx.tap} "
                f"with address {fe}: libvirt uses a managed='no' tap as it finds it -->")
    summary = (f"{br.name} holds {t.mac} as its own address {why}, so frames for the guest go to the host's IP "
               f"stack instead of {ctx.tap}")
    return Finding("local-mac", summary, tuple(evidence), fix, advice, xml,
                   facts={"bridge": br.name, "tap": ctx.tap, "tap_mac": t.tap.mac, "local_entry_dev": holder,
                          "passed_up": len(up), "vm": t.vm or None,
                          "interface_type": lv.type if lv is not None else None},
                   journeys=jv.ids_of(up), basis=_basis(True, bool(up)))


def rule_port_not_forwarding(ctx: Context) -> Optional[Finding]:
    """The bridge, the tap port or the ingress port is down, carrier-less, or not STP-forwarding."""
    t, br, p = ctx.target, ctx.bridge, ctx.port
    if br is None or p is None or t.tap is None:
        return None
    skipped = [j for j in ctx.lost if not jv.dropped_copies(j)]
    seen = (f"{_n(len(skipped), 'frame')} for the guest {_were(len(skipped))} never sent to {ctx.tap} "
            "(the bridge skips ports that don't forward; nothing is dropped)",) if skipped else ()
    facts = {"bridge": br.name, "port": p.name, "admin_up": p.admin_up, "carrier": p.carrier,
             "stp_state": p.stp_state, "stp_mode": br.stp_mode}
    ids, basis = jv.ids_of(skipped), _basis(True, bool(skipped))

    def found(summary: str, evidence: list[str], fix: tuple[str, ...] = (), advice: tuple[str, ...] = ()) -> Finding:
        return Finding("port-not-forwarding", summary, tuple(evidence) + seen, fix, advice, facts=facts,
                       journeys=ids, basis=basis)

    if not br.admin_up:
        return found(f"{br.name} is down, so it forwards nothing", [f"{br.name}{ctx.where()}: state DOWN"],
                     (ctx.cmd("ip", "link", "set", "dev", br.name, "up"),))
    if not p.admin_up:
        return found(f"{ctx.tap} is administratively down, so {br.name} sends it nothing",
                     [f"{ctx.tap}{ctx.where()}: state DOWN (port state {p.stp_state})"],
                     (ctx.cmd("ip", "link", "set", "dev", ctx.tap, "up"),))
    if not p.carrier:
        if not t.holders:
            fix = (f"virsh start {t.libvirt.domain}",) if t.libvirt is not None and not t.libvirt.live else ()
            return found(f"{ctx.tap} has no carrier because no process holds it open: the VM isn't running (or uses "
                         "another tap)", [f"{ctx.tap}{ctx.where()}: NO-CARRIER, no process has it open"], fix,
                         () if fix else ("start the VM that uses this tap",))
        return found(f"{ctx.tap} has no carrier although {ctx.holders_text()} holds it: the holder switched the "
                     "carrier off or detached its queue", [f"{ctx.tap}{ctx.where()}: NO-CARRIER, held by "
                                                           f"{ctx.holders_text()}"],
                     advice=("restart the guest's NIC (or the VM): qemu attaches the queue when the guest's "
                             "driver comes up",))
    if p.stp_state != "forwarding":
        return _stp_finding(ctx, found)
    # The bridge's own hops (fentry/kprobes) saw it refuse the tap for its state while the frames
    # came, though the port forwards by now (STP's listening and learning pass in seconds).
    refused = [(j, h) for j in ctx.lost for h in j.hops
               if h.event in ("to-port", "flood-port") and h.dev == ctx.tap and h.fault.startswith("port-")]
    if refused:
        state = refused[0][1].fault.removeprefix("port-")
        ids = tuple(dict.fromkeys(j.id for j, _ in refused))
        evidence = [f"{_n(len(ids), 'frame')} for the guest: {br.name} refused {ctx.tap} at "
                    f"{refused[0][1].location}: port {state}",
                    f"{ctx.tap} is {p.stp_state} now (STP {br.stp_mode}, forward delay {br.forward_delay_s:g} s)"]
        stp_fix = _stp_off(ctx, p.name) if br.stp_mode == "kernel" else ()
        return Finding("port-not-forwarding", f"{ctx.tap} was {state}, not forwarding, when the guest's frames came, "
                       f"so {br.name} sent it nothing", tuple(evidence), stp_fix,
                       () if stp_fix else ("a port (re)enabled under STP listens and learns before it forwards: "
                                       "ports of VMs rarely need STP",),
                       facts={**facts, "stp_state_seen": state}, journeys=ids, basis="traffic")
    return _ingress_not_forwarding(ctx)


def _stp_finding(ctx: Context, found: Callable[..., Finding]) -> Finding:
    br, p = ctx.bridge, ctx.port
    assert br is not None and p is not None
    evidence = [f"{ctx.tap} is in STP state {p.stp_state} on {br.name} (STP {br.stp_mode}, forward delay "
                f"{br.forward_delay_s:g} s)"]
    fix: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()
    if p.stp_state in ("listening", "learning") and br.stp_mode == "kernel":
        evidence.append(f"it would forward after {2 * br.forward_delay_s:g} s at most; a bridge for VMs rarely "
                        "needs STP")
        fix = _stp_off(ctx, p.name)
    elif p.stp_state == "blocking":
        evidence.append("STP blocks this port to break a loop: BPDUs reach the bridge through it (does the guest "
                        "bridge its NICs?)")
        advice = ("find the loop before changing anything: `bridge -d link show` on this host and in the guest",)
    elif br.stp_mode == "user":
        advice = ("a user-space STP daemon (mstpd) decides the port state: ask it (`mstpctl showport`)",)
    else:
        advice = (f"the port is {p.stp_state}: bring {ctx.tap} and {br.name} down and up",)
    return found(f"{ctx.tap} is {p.stp_state}, not forwarding, so {br.name} sends it nothing", evidence, fix, advice)


def _stp_off(ctx: Context, port: str) -> tuple[str, ...]:
    """Kernel STP off, then the port to forwarding: turning STP off alone leaves ports in the state they are in."""
    assert ctx.bridge is not None
    return (ctx.cmd("ip", "link", "set", "dev", ctx.bridge.name, "type", "bridge", "stp_state", "0"),
            ctx.cmd("bridge", "link", "set", "dev", port, "state", "3"))  # 3: forwarding


def _ingress_not_forwarding(ctx: Context) -> Optional[Finding]:
    """Frames dropped on the way in because the port they came in by doesn't forward."""
    br = ctx.bridge
    assert br is not None
    def not_forwarding(dev: str) -> bool:
        port = br.port(dev)
        return port is not None and port.stp_state != "forwarding"

    # The kernel's reason (6.8+), else the evidence: dropped on the port it came in by, which
    # doesn't forward (5.10 has no reasons; 6.1 and 6.12 say NOT_SPECIFIED at br_handle_frame).
    hits = [(j, c) for j in ctx.lost for c in jv.dropped_copies(j)
            if c.reason == "BRIDGE_INGRESS_STP_STATE"
            or (c.reason in ("", "NOT_SPECIFIED") and c.dev and c.dev == jv.ingress_port(j) and not_forwarding(c.dev))]
    if not hits:
        return None
    dev = hits[0][1].dev or jv.ingress_port(hits[0][0])
    port = br.port(dev)
    state = port.stp_state if port else "not forwarding"
    fix: tuple[str, ...] = ()
    if port is not None and port.stp_state in ("listening", "learning") and br.stp_mode == "kernel":
        fix = _stp_off(ctx, dev)

    return Finding("port-not-forwarding", f"{dev}, the port the guest's frames come in by, is {state}, so {br.name} "
                   "drops them on arrival",
                   (f"{_n(len(hits), 'frame')} for the guest dropped as {hits[0][1].reason or 'a drop'} at "
                    f"{hits[0][1].location} on {dev}, which is {state}",),
                   fix, facts={"bridge": br.name, "port": dev, "stp_state": state},
                   journeys=jv.ids_of(j for j, _ in hits), basis="traffic")


def rule_fdb_wrong_port(ctx: Context) -> Optional[Finding]:
    """The FDB sends the guest's MAC to another port, possibly the very port the frames came in by."""
    t, br, ns = ctx.target, ctx.bridge, ctx.ns
    if br is None or ns is None or t.tap is None:
        return None
    wrong = [e for e in ns.fdb_of(br.name, t.mac) if not e.permanent and e.dev not in (ctx.tap, br.name)]
    sent_away = [j for j in ctx.lost if not jv.is_group(j) and j.bridge == br.name and (
        j.fdb not in ("", "local", "miss", ctx.tap)  # the bridge's own hops: its FDB named another port
        or any(c.port and c.port != ctx.tap and c.outcome == "forwarded" for c in j.copies)
        or any(_loc(c.location) in ("br_forward", "br_handle_frame_finish") for c in jv.dropped_copies(j)))]
    sticky = [e for e in wrong if e.state == "static" or e.sticky or e.extern_learn]
    if not (sticky or sent_away or (wrong and not ctx.got)):
        return None
    ingress = {jv.ingress_port(j) for j in ctx.lost} - {""}
    evidence, fix, advice = [], [], []
    if wrong:
        # Without VLAN filtering the bridge looks up VLAN 0: that entry is the one in force. A kernel
        # with VLAN support gives every port VLAN 1 even then, and `bridge fdb add` without a VLAN
        # adds the entry for it too; `bridge fdb del` without a VLAN removes them all (6.1: the fix
        # "del … vlan 1" left the VLAN-0 entry, and the frames still went to the uplink).
        if not br.vlan_filtering:
            wrong.sort(key=lambda e: bool(e.vlan))
        e = wrong[0]
        kind = ", ".join(x for x in (e.state, "sticky" if e.sticky else "", "extern_learn" if e.extern_learn else "",
                                     f"vlan {e.vlan}" if e.vlan else "") if x)
        evidence.append(f"FDB of {br.name}{ctx.where()}: {t.mac} on {e.dev} ({kind}), not on {ctx.tap}")
        deletes = (dict.fromkeys((x.dev, None) for x in wrong) if not br.vlan_filtering
                   else dict.fromkeys((x.dev, x.vlan) for x in wrong))
        for dev, vlan in deletes:
            fix.append(ctx.cmd("bridge", "fdb", "del", t.mac, "dev", dev, "master",
                               *(["vlan", str(vlan)] if vlan else [])))
        if e.learned:
            advice.append(f"the bridge learned it: frames with the guest's MAC as source came in by {e.dev} "
                          "(a loop, a duplicate VM, or the guest's frames reflected back); if it comes back, find "
                          "who sends them")
        if e.extern_learn:
            advice.append("a driver or controller added the entry (extern_learn): it may add it again")
    dest = wrong[0].dev if wrong else next((j.fdb for j in sent_away if j.fdb), "") or next(
        (c.port for j in sent_away for c in j.copies if c.port), "another port")
    back = dest in ingress
    if sent_away:
        evidence.append(f"{_n(len(sent_away), 'frame')} for the guest " + (
            f"were dropped: {dest} is the port they came in by" if back else f"were sent out of {dest}"))
    if ctx.port is not None and not ctx.port.learning:
        evidence.append(f"{ctx.tap} has learning off, so the guest's own frames can't correct the entry")
        fix.append(ctx.cmd("bridge", "link", "set", "dev", ctx.tap, "learning", "on"))
    where = f"back to {dest}, the port the frames come in by" if back else f"to {dest}"
    return Finding("fdb-wrong-port", f"{br.name}'s FDB sends {t.mac} {where}, not to {ctx.tap}", tuple(evidence),
                   tuple(fix), tuple(advice),
                   facts={"bridge": br.name, "fdb_port": dest, "tap": ctx.tap, "ingress": sorted(ingress)},
                   journeys=jv.ids_of(sent_away), basis=_basis(bool(wrong), bool(sent_away)))


def rule_flood_blocked(ctx: Context) -> Optional[Finding]:
    """The tap doesn't get flooded frames: broadcast ARP, multicast ND, frames for an unlearned MAC."""
    t, br, p, ns = ctx.target, ctx.bridge, ctx.port, ctx.ns
    if br is None or p is None or ns is None or t.tap is None:
        return None
    learned = any(not e.permanent and e.dev == ctx.tap for e in ns.fdb_of(br.name, t.mac))
    v6 = any(":" in ip for ip in t.ips) or any(j.ethertype == 0x86DD for j in ctx.toward)
    blocking: list[tuple[str, str]] = []  # (flag to turn back, why it matters)
    if not p.bcast_flood:
        blocking.append(("bcast_flood", "broadcasts (ARP requests for the guest's address) never reach it"))
    if not p.mcast_flood and v6:
        blocking.append(("mcast_flood", "multicasts (IPv6 neighbour solicitations) never reach it"))
    if not p.flood and not learned:
        blocking.append(("flood", f"{br.name} hasn't learned {t.mac} on {ctx.tap}, so unicast for it is flooded "
                                  "and skips the tap"))
    others = [q for q in br.ports if q.name != ctx.tap]
    ingress = {jv.ingress_port(j) for j in ctx.lost} - {""}
    isolated_from = [q.name for q in others if q.isolated and (q.name in ingress or not ingress)]
    if p.isolated and isolated_from and (ingress or all(q.isolated for q in others)):
        blocking.append(("isolated", f"{', '.join(isolated_from)} {'is' if len(isolated_from) == 1 else 'are'} "
                                     "isolated too, and isolated ports never talk to each other"))
    if not blocking:
        return None
    skipped = [j for j in ctx.lost if not jv.dropped_copies(j) and (jv.is_group(j) or not learned)]
    evidence = [f"{ctx.tap} on {br.name}{ctx.where()}: " + "; ".join(f"{_flag_text(f)}: {why}" for f, why in blocking)]
    if skipped:
        evidence.append(f"{_n(len(skipped), 'flooded frame')} for the guest skipped {ctx.tap}")
        offered = sorted({h.dev for j in skipped for h in j.hops if h.event == "flood-port" and h.dev})
        if offered and ctx.tap not in offered:  # the bridge's own hops: the ports its floods went to
            evidence.append(f"{br.name}'s floods offered them to {', '.join(offered)}, never to {ctx.tap} "
                            "(a port whose flood flag is off is passed over before that)")
    args = [a for f, _ in blocking for a in ((f, "off") if f == "isolated" else (f, "on"))]
    xml = ""
    if any(f == "isolated" for f, _ in blocking) and t.libvirt is not None and t.libvirt.isolated:
        xml = f"<!-- in {t.libvirt.domain}'s <interface>, drop <port isolated='yes'/> -->\n" + t.libvirt.xml.replace(
            "<port isolated=\"yes\" />", "").replace("<port isolated='yes'/>", "")
    what = ", ".join(_flag_text(f) for f, _ in blocking)
    return Finding("flood-blocked", f"{ctx.tap} doesn't receive flooded frames ({what}), so ARP requests and frames "
                   "for a MAC the bridge hasn't learned never reach the guest", tuple(evidence),
                   (ctx.cmd("bridge", "link", "set", "dev", ctx.tap, *args),), libvirt_xml=xml,
                   facts={"port": ctx.tap, "flags_off": [f for f, _ in blocking if f != "isolated"],
                          "isolated": p.isolated, "guest_mac_learned": learned},
                   journeys=jv.ids_of(skipped), basis=_basis(True, bool(skipped)))


def _flag_text(flag: str) -> str:
    return "isolated" if flag == "isolated" else f"{flag} off"


# -- 3. dropped on the way --------------------------------------------------------------------------


def rule_tap_filter(ctx: Context) -> Optional[Finding]:
    """tun drops the frames itself: a filter set by the process holding the tap (TUNSETTXFILTER, a BPF filter)."""
    if not ctx.tap:
        return None
    hits = [(j, c) for j in ctx.lost for c in jv.dropped_copies(j) if c.reason in ("TAP_FILTER", "TAP_TXFILTER")]
    if not hits:
        return None
    c = hits[0][1]
    kind = ("its MAC filter (TUNSETTXFILTER) doesn't list the destination" if c.reason == "TAP_TXFILTER"
            else "a BPF filter attached to it (TUNATTACHFILTER / TUNSETFILTEREBPF) rejects them")
    return Finding("tap-filter", f"{ctx.tap} drops the guest's frames itself: {kind}; {ctx.holders_text()} set it",
                   (f"{_n(len(hits), 'frame')} for the guest dropped as {c.reason} at {c.location} on {ctx.tap}",),
                   advice=(f"the filter belongs to {ctx.holders_text()}: check its network options (e.g. a MAC filter "
                           "or socket filter configured for the guest NIC)",),
                   facts={"reason": c.reason, "location": c.location}, journeys=jv.ids_of(j for j, _ in hits),
                   basis="traffic")


def rule_netfilter_drop(ctx: Context) -> Optional[Finding]:
    """NETFILTER_DROP on the bridge path, or a ruleset that certainly drops bridged frames for the guest."""
    t, br, ns = ctx.target, ctx.bridge, ctx.ns
    if br is None or ns is None or t.tap is None:
        return None
    # dropped by netfilter, as the free says (reason, else where), or as nft_do_chain's verdict said
    nf = [j for j in ctx.lost if any(c.reason == "NETFILTER_DROP" or _loc(c.location) in NETFILTER_LOCATIONS
                                     for c in jv.dropped_copies(j))
          or any(h.fault == "netfilter-drop" for h in j.hops)]
    ruleset = Ruleset(ns.nftables.ruleset or [])
    sample = nf[0] if nf else None
    decision = ruleset.decide(_probes(ctx, sample))
    if not nf and not (decision.verdict == "drop" and decision.culprit is not None and decision.culprit.certain):
        return None
    culprit = decision.culprit
    evidence = []
    if nf:
        drop = jv.first_drop(nf)
        evidence.append(f"{_n(len(nf), 'frame')} for the guest dropped as NETFILTER_DROP at {drop.location} on "
                        f"{drop.dev}" if drop else f"{_n(len(nf), 'frame')} for the guest dropped by netfilter")
        verdict = next((h for j in nf for h in j.hops if h.fault == "netfilter-drop"), None)
        if verdict is not None:  # the chain itself, as the kernel named it (fexit on nft_do_chain, 5.11+)
            evidence.append(f"the netfilter hop ({verdict.location}) saw it on {verdict.dev}: {verdict.detail}")
    else:
        evidence.append("found from the configuration alone: this ruleset drops every such frame")
    via = _via_br_netfilter(ctx, culprit)
    if via:
        evidence.append(via)
    if ruleset.skipped:  # never silently: the answer may lie in what could not be read
        evidence.append(f"{ruleset.skipped} chain(s) or rule(s) of nft's output could not be read and were left out")
    fix: tuple[str, ...] = ()
    advice: list[str] = []
    if culprit is not None:
        evidence.append(culprit.describe() + ("" if culprit.certain else " (the likeliest: some rules before it "
                                              "match on things tapttrace can't evaluate)"))
        fix = (_nf_fix(ctx, culprit, sample),)
        if via:
            advice.append("or, if nothing on this host needs iptables to see bridged frames, stop sending them there: "
                          + ctx.cmd("sysctl", "-w", f"net.bridge.bridge-nf-call-{_tables(culprit.family)}=0")
                          + " (Docker and Kubernetes need it on)")
        advice.append("make the change persistent the way this host loads its firewall (iptables-save, "
                      "/etc/nftables.conf, firewalld, ...)")
        where = culprit.describe()
    else:
        status = ns.nftables.status
        evidence.append("the nftables ruleset shows nothing that drops them" if status == "ok"
                        else f"the ruleset could not be read ({status}: {ns.nftables.detail})")
        advice.append("rules made with iptables-legacy or ebtables-legacy don't show in nft: "
                      + ctx.cmd("iptables-legacy", "-S") + "; " + ctx.cmd("ebtables-legacy", "-L"))
        where = "by a rule tapttrace can't see (iptables-legacy or ebtables-legacy?)"
    if t.libvirt is not None and t.libvirt.filterref:
        evidence.append(f"libvirt applies nwfilter '{t.libvirt.filterref}' to {t.libvirt.domain}'s interface: its "
                        "rules are among these")
    summary = f"netfilter drops frames for the guest on {br.name}: {where}" + (
        f", and {via.split(':')[0]}" if via and culprit is not None and culprit.family != "bridge" else "")
    return Finding("netfilter-drop", summary, tuple(evidence), fix, tuple(advice),
                   facts={"family": culprit.family if culprit else None, "table": culprit.table if culprit else None,
                          "chain": culprit.chain if culprit else None, "kind": culprit.kind if culprit else None,
                          "handle": culprit.handle if culprit else None,
                          "certain": culprit.certain if culprit else False},
                   journeys=jv.ids_of(nf), basis=_basis(culprit is not None, bool(nf)))


def _tables(family: str) -> str:
    return {"ip6": "ip6tables", "arp": "arptables"}.get(family, "iptables")


def _br_nf_on(ctx: Context, family: str) -> bool:
    """Does br_netfilter send this family's bridged frames through the ip/ip6 hooks on the guest's bridge?"""
    nf, br = ctx.ns.br_netfilter if ctx.ns else None, ctx.bridge
    if family == "ip6":
        return bool((nf and nf.call_ip6tables) or (br and br.nf_call_ip6tables))
    return bool((nf and nf.call_iptables) or (br and br.nf_call_iptables))


def _via_br_netfilter(ctx: Context, culprit: Optional[Culprit]) -> str:
    if culprit is None or culprit.family not in ("ip", "ip6", "inet"):
        return ""
    fam = "ip6" if culprit.family == "ip6" else "ip"
    if not _br_nf_on(ctx, fam):
        return ""
    return (f"br_netfilter sends bridged {'IPv6' if fam == 'ip6' else 'IPv4'} through it: "
            f"bridge-nf-call-{_tables(fam)}=1")


def _probes(ctx: Context, j) -> list[Probe]:
    """The hooks a frame for the guest crosses from its ingress port to the tap, in order."""
    br, t = ctx.bridge, ctx.target
    assert br is not None
    pkt = jv.packet(j) if j is not None else jv.Packet("ip", None, next((i for i in t.ips if ":" not in i), None),
                                                       None)
    ingress = jv.ingress_port(j) if j is not None else ""
    if not ingress:
        uplinks = [p.name for p in br.ports if p.name != ctx.tap and not p.is_tap]
        ingress = uplinks[0] if len(uplinks) == 1 else ""
    common = dict(ether_daddr=j.dst_mac if j is not None else t.mac, ether_saddr=j.src_mac if j is not None else None,
                  ether_type=pkt.family if pkt.family != "other" else None, saddr=pkt.src_ip, daddr=pkt.dst_ip,
                  l4proto=pkt.l4proto, bridge=br.name)
    iif = ingress or None
    on_way_in = [Probe("netdev", "ingress", iifname=iif, **common),
                 Probe("bridge", "prerouting", iifname=iif, **common)]
    on_way_out = [Probe("bridge", "forward", iifname=iif, oifname=ctx.tap, **common),
                  Probe("bridge", "postrouting", oifname=ctx.tap, **common)]
    if pkt.family in ("ip", "ip6") and _br_nf_on(ctx, pkt.family):
        # br_netfilter shows the bridge device as in/out interface to iptables (physdev names the ports)
        on_way_in.append(Probe(pkt.family, "prerouting", iifname=br.name, **common))
        on_way_out.insert(1, Probe(pkt.family, "forward", iifname=br.name, oifname=br.name, **common))
        on_way_out.append(Probe(pkt.family, "postrouting", oifname=br.name, **common))
    on_way_out.append(Probe("netdev", "egress", oifname=ctx.tap, **common))
    drop = jv.first_drop([j]) if j is not None else None
    if drop is not None and drop.dev and drop.dev == ingress:
        return on_way_in
    if drop is not None and drop.dev == ctx.tap:
        return on_way_out
    return on_way_in + on_way_out


def _nf_fix(ctx: Context, c: Culprit, j) -> str:
    """Delete the dropping rule, or let the guest's frames through ahead of a dropping policy."""
    if c.kind == "rule":
        return ctx.cmd("nft", "delete", "rule", c.family, c.table, c.chain, "handle", str(c.handle))
    br = ctx.bridge.name if ctx.bridge else ""
    ingress = jv.ingress_port(j) if j is not None else ""
    hook = c.hook
    if c.tool in ("iptables", "ip6tables"):
        table = [] if c.table == "filter" else ["-t", c.table]
        match = (["-i", br] if hook in ("prerouting", "forward", "input") else []) + \
                (["-o", br] if hook in ("forward", "postrouting", "output") else [])
        return ctx.cmd(c.tool, *table, "-I", c.chain, *match, "-j", "ACCEPT")
    if c.tool == "ebtables":
        table = [] if c.table == "filter" else ["-t", c.table]
        match = ["-o", ctx.tap] if hook in ("forward", "postrouting", "output") else (
            ["-i", ingress] if ingress else ["-d", ctx.mac])
        return ctx.cmd("ebtables", *table, "-I", c.chain, *match, "-j", "ACCEPT")
    if c.family == "bridge" or c.family == "netdev":
        nft_match = f'oifname "{ctx.tap}"' if hook in ("forward", "postrouting", "egress") else (
            f'iifname "{ingress}"' if ingress else f"ether daddr {ctx.mac}")
    else:
        nft_match = {"forward": f'iifname "{br}" oifname "{br}"', "postrouting": f'oifname "{br}"'}.get(
            hook, f'iifname "{br}"')
    return ctx.cmd("nft", f"insert rule {c.family} {c.table} {c.chain} {nft_match} accept")


def rule_mtu(ctx: Context) -> Optional[Finding]:
    """Frames larger than the tap's MTU: the bridge refuses to send them out of it."""
    # Found from evidence, not from which function freed the frame (br_dev_queue_push_xmit, or
    # br_nf_dev_queue_xmit with br_netfilter, or the tap's own check, by kernel): the bridge's
    # egress hop on the tap says "too big" where the kernel lets us see it; elsewhere, a frame that
    # crossed the bridge (so it got in), is larger than the tap's MTU and was lost.
    t, br, p = ctx.target, ctx.bridge, ctx.port
    if br is None or p is None or t.tap is None:
        return None
    mtu = p.mtu or t.tap.mtu
    big = []
    for j in ctx.lost:
        if any(h.event == "egress" and h.dev == ctx.tap and h.fault == "too-big" for h in j.hops):
            big.append(j)
            continue
        if _l3_len(j) <= mtu or j.bridge != br.name:
            continue
        if any(c.reason in _EXPLAINED_ELSEWHERE for c in jv.dropped_copies(j)):
            continue
        big.append(j)
    if not big:
        return None
    largest = max(_l3_len(j) for j in big)
    others = [q.mtu for q in br.ports if q.name != ctx.tap and q.mtu]
    want = max(others + [largest])
    drop = jv.first_drop(big)
    seen = next((h for j in big for h in j.hops if h.event == "egress" and h.dev == ctx.tap), None)
    evidence = [f"{_n(len(big), 'frame')} for the guest carried up to {largest} bytes after the Ethernet header, more "
                f"than {ctx.tap}'s MTU of {mtu}" + (f"; dropped as {drop.reason or 'a drop'} at {drop.location}"
                                                    if drop else ""),
                f"the other ports of {br.name} have MTU {max(others)}" if others else f"{br.name} has no other port"]
    if seen is not None:
        evidence.append(f"the bridge's egress to {ctx.tap} ({seen.location}) saw it: {seen.detail}")
    return Finding("mtu", f"frames of up to {largest + 14} bytes don't fit {ctx.tap}'s MTU of {mtu}, so {br.name} "
                   "drops them", tuple(evidence), (ctx.cmd("ip", "link", "set", "dev", ctx.tap, "mtu", str(want)),),
                   advice=("the guest's own interface MTU should match (libvirt passes <mtu size=…/> to virtio-net)",),
                   libvirt_xml=bridge_interface_xml(t.mac, br.name, mtu=want) if t.libvirt is not None else "",
                   facts={"tap_mtu": mtu, "largest_l3": largest, "wanted_mtu": want},
                   journeys=jv.ids_of(big), basis="configuration+traffic")


# Drop reasons another rule (or no MTU) explains: an oversized frame dropped for one of these was
# not dropped for its size.
_EXPLAINED_ELSEWHERE = ("NETFILTER_DROP", "TAP_FILTER", "TAP_TXFILTER", "FULL_RING", "NOMEM", "QDISC_DROP",
                        "TC_INGRESS", "TC_EGRESS", "XDP", "BRIDGE_INGRESS_STP_STATE", "OTHERHOST")


def _l3_len(j) -> int:
    """Bytes after the Ethernet header (and VLAN tag): what the MTU limits."""
    return j.frame_len - 14 - (4 if j.summary.startswith("vlan ") else 0)


# -- 4. the guest's side -----------------------------------------------------------------------------


def rule_guest_link_down(ctx: Context) -> Optional[Finding]:
    """libvirt has the guest NIC's link down: qemu reads the tap and throws the frames away."""
    t = ctx.target
    if t.libvirt is None or not t.libvirt.live or not t.libvirt.link_down or not ctx.tap:
        return None
    return Finding("guest-link-down", f"libvirt set {t.libvirt.domain}'s NIC link down (<link state='down'/>), so "
                   f"qemu reads {ctx.tap} and discards what it gets", (
                       f"{t.libvirt.path}: <link state='down'/> on the interface with {t.mac}",
                       f"{_n(len(ctx.got), 'frame')} for the guest reached {ctx.tap} during the window"),
                   (f"virsh domif-setlink {t.libvirt.domain} {ctx.tap} up",),
                   facts={"domain": t.libvirt.domain}, journeys=jv.ids_of(ctx.got),
                   basis=_basis(True, bool(ctx.got)))


def rule_guest_not_reading(ctx: Context) -> Optional[Finding]:
    """The tap's queue fills (FULL_RING at tun_net_xmit) or frames sit in it: its holder doesn't read."""
    t = ctx.target
    if t.tap is None or not t.holders:
        return None
    tap, ns = ctx.tap, ctx.netns
    mine = ctx.in_namespace()
    full = [j for j in mine if any(c.dev == tap and (c.reason == "FULL_RING" or _loc(c.location) == "tun_net_xmit")
                                   and c.reason not in ("TAP_FILTER", "TAP_TXFILTER")
                                   for c in jv.dropped_copies(j))
            # the tap-xmit hop (fentry, with tun's BTF) saw the ring full as tun_net_xmit weighed it
            or any(h.event == "tap-xmit" and h.dev == tap and h.fault == "queue-full" for h in j.hops)]
    waiting = [j for j in mine if jv.queued(j, tap, ns)]
    reads = [j for j in mine if jv.delivered(j, tap, ns)]
    # Frames still queued when the window closes are normal under load, and with lost events a
    # missing "read" proves nothing: only a queue nobody read from at all, with a complete
    # stream, or one that overflowed (FULL_RING), says the guest isn't reading.
    stuck = len(waiting) >= 3 and not reads and not ctx.lost_events
    stopped = [h for h in t.holders if ctx.process_states.get(h.pid, "") in ("T", "t")]
    paused = t.libvirt is not None and t.libvirt.live and t.libvirt.state == "paused"
    if not (full or stuck or stopped or paused):
        return None
    evidence = []
    if full:
        drop = jv.first_drop(full)
        reason = drop.reason if drop else "FULL_RING"  # "" before 5.17: no drop reasons
        evidence.append(f"{_n(len(full), 'frame')} dropped" + (f" as {reason}" if reason else "") +
                        f" at {drop.location if drop else 'tun_net_xmit'}: {tap}'s queue is full")
        seen = next((h for j in full for h in j.hops if h.event == "tap-xmit" and h.fault == "queue-full"), None)
        if seen is not None:
            evidence.append(f"the tap's own hop ({seen.location}) saw it: {seen.detail}")
    if waiting:
        evidence.append(f"{_n(len(waiting), 'frame')} still unread in {tap}'s queue at the end of the window"
                        + (f"; {_n(len(reads), 'frame')} read during it" if reads else ", none read during it"))
    evidence.append(f"{tap} is held by {ctx.holders_text()}" + (f", guest {t.domain}" if t.domain else ""))
    fix: list[str] = []
    for h in stopped:
        evidence.append(f"process {h.pid} ({h.comm}) is stopped (state T): it was sent SIGSTOP")
        fix.append(f"kill -CONT {h.pid}")
    if paused and t.libvirt is not None:
        evidence.append(f"libvirt domain {t.libvirt.domain} is paused")
        fix.append(f"virsh resume {t.libvirt.domain}")
    advice = () if fix else (
        "the guest isn't taking frames from its NIC: inside the guest, check the interface is up and its driver "
        "loaded; on the host, check the VM is running (`virsh domstate`) and qemu isn't stuck "
        f"(`cat /proc/{t.holders[0].pid}/stack`)",)
    who = ctx.holders_text()
    summary = (f"{who} reads {tap} too slowly: its queue overflowed and the kernel dropped {_n(len(full), 'frame')}"
               if reads and full and not (stopped or paused) else
               f"{who} holds {tap} open but does not read it, so its queue fills and the kernel drops what the "
               "bridge sends")
    return Finding("guest-not-reading", summary, tuple(evidence), tuple(fix), advice,
                   facts={"holders": [h.pid for h in t.holders], "full_ring_drops": len(full),
                          "queued": len(waiting), "stopped": [h.pid for h in stopped], "paused": paused},
                   journeys=jv.ids_of(full or waiting), basis=_basis(bool(stopped or paused), bool(full or waiting)))


# -- 5. what no rule explains, and nothing wrong ------------------------------------------------------


REASON_HINTS = {
    "TC_INGRESS": "a tc filter drops it on the way in: `tc -s filter show dev {dev} ingress`",
    "TC_EGRESS": "a tc filter drops it on the way out: `tc -s filter show dev {dev} egress`",
    "QDISC_DROP": "{dev}'s qdisc is full or drops by policy: `tc -s qdisc show dev {dev}`",
    "XDP": "an XDP program on {dev} drops it: `ip link show dev {dev}` shows it",
    "DEV_READY": "{dev} has no reader attached (the holder detached its queue)",
    "OTHERHOST": "it reached the host's IP stack addressed to a MAC the host doesn't have",
    "NOMEM": "the kernel ran out of memory for it",
    "NOT_SPECIFIED": "the kernel gives no reason: the location says where",
    "UNICAST_IN_L2_MULTICAST": "unicast IP in a multicast frame: the sender addresses the guest wrongly",
    "MAC_INVALID_SOURCE": "the frame's source MAC is invalid (multicast or zero)",
    "SECURITY_HOOK": "an LSM (SELinux, AppArmor, a BPF LSM) refused it",
    "BPF_CGROUP_EGRESS": "a cgroup BPF program refused it",
}


def rule_unknown_drop(ctx: Context) -> Optional[Finding]:
    """Frames for the guest are lost and none of the rules above explains it: say where they stopped."""
    if not ctx.lost_dropped and (ctx.got or not ctx.lost):
        return None
    if ctx.lost_dropped:
        groups = Counter((c.reason, c.location, c.dev) for j in ctx.lost_dropped for c in jv.dropped_copies(j))
        (reason, location, dev), _ = groups.most_common(1)[0]
        evidence = [f"{_n(n, 'frame')} for the guest dropped as {r} at {loc} on {d or '?'}"
                    for (r, loc, d), n in groups.most_common(3)]
        hint = REASON_HINTS.get(reason, "")
        return Finding("unknown-drop", f"frames for the guest are dropped as {reason} at {location} on {dev or '?'}, "
                       "which no tapttrace rule explains", tuple(evidence),
                       advice=(hint.format(dev=dev or "DEV"),) if hint else (),
                       facts={"reason": reason, "location": location, "dev": dev},
                       journeys=jv.ids_of(ctx.lost_dropped), basis="traffic")
    ends = Counter(f"{j.verdict}" + (f" ({j.copies[0].dev})" if j.copies else "") for j in ctx.lost)
    return Finding("unknown-drop", f"frames for the guest never reached {ctx.tap or 'a tap'}, though nothing dropped "
                   "them, and no tapttrace rule explains why",
                   (f"{_n(len(ctx.lost), 'frame')} for the guest ended: "
                    + ", ".join(f"{n} {what}" for what, n in ends.most_common()),),
                   facts={"ends": dict(ends)}, journeys=jv.ids_of(ctx.lost), basis="traffic")


def rule_ok(ctx: Context) -> Optional[Finding]:
    """Frames for the guest reach its tap and are read: nothing to fix."""
    t = ctx.target
    if t.tap is None:
        return None
    read = [j for j in ctx.got if jv.delivered(j, ctx.tap, ctx.netns) or not t.tap.is_tap]
    if not read or ctx.lost_dropped:
        return None
    who = jv.readers(read, ctx.tap)
    reader = ", ".join(who) if who else ctx.holders_text()
    evidence = [f"{_n(len(read), 'frame')} for the guest {_were(len(read))} delivered to {ctx.tap} "
                f"and read by {reader}"]
    if ctx.lost:
        evidence.append(f"{_n(len(ctx.lost), 'other frame')} for the guest didn't reach {ctx.tap} but weren't dropped "
                        "either (" + ", ".join(sorted({j.verdict for j in ctx.lost})) + ")")
    return Finding("ok", f"frames for {ctx.mac} reach {ctx.tap} and are read by {reader}", tuple(evidence),
                   facts={"delivered": len(read), "reader": reader}, journeys=jv.ids_of(read), basis="traffic")


def rule_no_traffic(ctx: Context) -> Optional[Finding]:
    """Nothing toward the guest came by during the window, and the configuration shows nothing wrong."""
    if ctx.toward:
        return None
    t = ctx.target
    where = ctx.bridge.name if ctx.bridge else "a bridge"
    asked = f" and no ARP/ND request for {', '.join(t.ips)}" if t.ips else ""
    window = f"the {ctx.window_s:g} s window" if ctx.window_s else "the window"
    evidence = [f"no frame addressed to {t.mac}{asked} crossed {where}{ctx.where()} during {window}"
                + ("" if t.ips else "; ARP requests for the guest's address only count with --ip ADDR")]
    if ctx.from_guest:
        evidence.append(f"the guest itself sent {_n(len(ctx.from_guest), 'frame')}: it is alive and its tap works "
                        "outbound")
    elsewhere = [j for j in ctx.journeys if j.toward_guest and j not in ctx.toward]
    if elsewhere:
        evidence.append(f"{_n(len(elsewhere), 'frame')} for the guest's address went through other namespaces "
                        "(another guest with the same address?)")
    target = t.ips[0] if t.ips else "<guest address>"
    return Finding("no-traffic", f"no frame for {t.mac} crossed {where} during the window, and the configuration "
                   "shows nothing wrong", tuple(evidence),
                   advice=(f"reproduce the problem while diagnose watches, e.g. `ping {target}` from another host"
                           + ("" if t.ips else ", and give the guest's address with --ip"),),
                   basis="none")


RULES: tuple[Rule, ...] = (
    rule_tap_not_found, rule_port_not_in_bridge, rule_wrong_bridge, rule_local_mac, rule_port_not_forwarding,
    rule_fdb_wrong_port, rule_flood_blocked, rule_tap_filter, rule_netfilter_drop, rule_mtu, rule_guest_link_down,
    rule_guest_not_reading, rule_unknown_drop, rule_ok, rule_no_traffic,
)
