"""Why don't frames for this MAC reach the guest? Snapshot + journeys in, one cause out (the rules of `diagnose`).

Pure: it reads a Snapshot (tracer.snapshot) and the Journeys follow produced, and decides. The
rules are small functions tried in order, most specific first; the first that fires is the
cause. Codes are a stable vocabulary documented in docs/causes.md.
"""
from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import UsageError
from .records import Device, Journey
from .snapshot import Bridge, BridgePort, NetnsSnapshot, Snapshot, normalize_mac
from .taps import TapHolder

CAUSES = ("ok", "local-mac", "tap-not-found", "port-not-in-bridge", "port-not-forwarding", "netfilter-drop",
          "guest-not-reading", "mtu", "fdb-wrong-port", "flood-blocked", "no-traffic", "unknown-drop")


def libvirt_tap_mac(mac: str) -> str:
    return "fe" + mac[2:]


@dataclass(frozen=True)
class Target:
    """Where the guest should be: its tap, the bridge port it is (or isn't), who holds it."""

    mac: str
    tap: Optional[Device]
    found_by: str  # --tap | carries-guest-mac | libvirt-convention | fdb | none
    ns: Optional[NetnsSnapshot] = None
    bridge: Optional[Bridge] = None
    port: Optional[BridgePort] = None
    holders: tuple[TapHolder, ...] = ()


@dataclass(frozen=True)
class Diagnosis:
    mac: str
    cause: str
    summary: str
    evidence: tuple[str, ...] = ()
    fix: tuple[str, ...] = ()
    libvirt_xml: str = ""
    counts: dict = field(default_factory=dict)  # verdict -> journeys toward the guest
    sample: Optional[int] = None  # id of a journey that shows it


# -- locating the guest ---------------------------------------------------------------------

def locate(snapshot: Snapshot, mac: str, tap: Optional[str] = None) -> Target:
    """Find the guest's tap: --tap, a tap carrying its MAC or libvirt's fe:…, or the FDB."""
    mac = normalize_mac(mac)
    devices = snapshot.devices()
    if tap is not None:
        named = [d for d in devices if d.name == tap]
        if not named:
            raise UsageError(f"no network interface named {tap!r} in any namespace (see `ip link`)")
        return _target(snapshot, mac, sorted(named, key=lambda d: not d.is_tap)[0], "--tap")
    for how, wanted in (("carries-guest-mac", mac), ("libvirt-convention", libvirt_tap_mac(mac))):
        hits = [d for d in devices if d.is_tap and d.mac == wanted]
        if hits:
            return _target(snapshot, mac, hits[0], how)
    for hit in snapshot.find_mac(mac).fdb:
        if hit.entry.learned and hit.entry.master:
            dev = snapshot.netns(hit.netns).device(hit.entry.dev)
            if dev is not None and dev.is_tap:
                return _target(snapshot, mac, dev, "fdb")
    return Target(mac, None, "none")


def _target(snapshot: Snapshot, mac: str, dev: Device, how: str) -> Target:
    ns = snapshot.netns(dev.netns)
    found = ns.port(dev.name)
    bridge, port = found if found else (None, None)
    holders = tuple(h for h in snapshot.taps if h.iff == dev.name and h.tap_netns == dev.netns)
    return Target(mac, dev, how, ns, bridge, port, holders)


# -- command wording --------------------------------------------------------------------------

def in_ns(ns: Optional[NetnsSnapshot], *argv: str) -> str:
    """A pasteable command run in the namespace: `ip -n NS …`, `ip netns exec NS …`, nsenter for pid:N."""
    name = ns.name if ns else "root"
    if name == "root":
        return shlex.join(argv)
    if name.startswith("pid:"):
        return shlex.join(["nsenter", "-t", name[4:], "-n", *argv])
    if argv[0] in ("ip", "bridge"):
        return shlex.join([argv[0], "-n", name, *argv[1:]])
    return shlex.join(["ip", "netns", "exec", name, *argv])


def _where(t: Target) -> str:
    return "" if t.ns is None or t.ns.name == "root" else f" (namespace {t.ns.name})"


def _holder_text(holders: Sequence[TapHolder]) -> str:
    return ", ".join(f"{h.comm} (pid {h.pid}, fd {h.fd})" for h in holders) or "no process"


# -- journeys ---------------------------------------------------------------------------------

def toward(journeys: Sequence[Journey]) -> list[Journey]:
    return [j for j in journeys if j.toward_guest]


def _reached_tap(j: Journey, tap: str) -> bool:
    return any(c.dev == tap and c.outcome in ("delivered", "queued") for c in j.copies)


def _sample(js: Sequence[Journey]) -> Optional[int]:
    return js[0].id if js else None


def _drops(js: Sequence[Journey]) -> list[tuple[Journey, object]]:
    return [(j, c) for j in js for c in j.copies if c.outcome == "dropped"]


# -- the rules, most specific first -----------------------------------------------------------

Rule = Callable[[Target, Sequence[Journey]], Optional[Diagnosis]]


def rule_tap_not_found(t: Target, js: Sequence[Journey]) -> Optional[Diagnosis]:
    if t.tap is not None:
        return None
    return Diagnosis(t.mac, "tap-not-found",
                     f"no tap belongs to {t.mac}: none carries it or libvirt's {libvirt_tap_mac(t.mac)}, and no "
                     "bridge has learned it on a tap",
                     ("name the guest's tap with --tap DEV",), ())


def rule_port_not_in_bridge(t: Target, js: Sequence[Journey]) -> Optional[Diagnosis]:
    if t.tap is None or t.port is not None:
        return None
    bridges = t.ns.bridges if t.ns else ()
    evidence = [f"{t.tap.name}{_where(t)} is a tap held by {_holder_text(t.holders)} but is not a port of any bridge"]
    fix: tuple[str, ...] = ()
    if len(bridges) == 1:
        fix = (in_ns(t.ns, "ip", "link", "set", "dev", t.tap.name, "master", bridges[0].name),)
        evidence.append(f"the only bridge in that namespace is {bridges[0].name}")
    elif bridges:
        evidence.append("bridges in that namespace: " + ", ".join(b.name for b in bridges))
    else:
        evidence.append("there is no bridge in that namespace")
    return Diagnosis(t.mac, "port-not-in-bridge",
                     f"{t.tap.name} is not attached to a bridge, so no bridge can send the guest's frames to it",
                     tuple(evidence), fix)


def rule_local_mac(t: Target, js: Sequence[Journey]) -> Optional[Diagnosis]:
    if t.bridge is None or t.ns is None:
        return None
    local = [e for e in t.ns.fdb_of(t.bridge.name, t.mac) if e.permanent]
    if not local:
        return None
    tap, br = t.tap.name, t.bridge.name
    why = f"because {tap} carries the guest's MAC" if t.tap.mac == t.mac else \
        f"because {local[0].dev} carries the guest's MAC"
    up = [j for j in toward(js) if any(h.event == "passed-up" for h in j.hops) and not _reached_tap(j, tap)]
    evidence = [f"FDB of {br}: {t.mac} is a local (permanent) entry on {local[0].dev}",
                f"{tap}'s MAC is {t.tap.mac}; libvirt gives the taps it creates {libvirt_tap_mac(t.mac)}"]
    if up:
        d = _drops(up)
        evidence.append(f"{len(up)} frame(s) for the guest were passed up to {br}'s host stack instead of {tap}"
                        + (f"; dropped there as {d[0][1].reason} at {d[0][1].location}" if d else ""))
    fix = (in_ns(t.ns, "ip", "link", "set", "dev", tap, "address", libvirt_tap_mac(t.mac)),)
    xml = (f"<interface type='bridge'>\n  <mac address='{t.mac}'/>\n  <source bridge='{br}'/>\n"
           f"  <model type='virtio'/>\n</interface>\n"
           f"<!-- or keep type='ethernet' with <target dev='{tap}' managed='no'/>, but create {tap} with "
           f"address {libvirt_tap_mac(t.mac)}, never the guest's own MAC -->")
    return Diagnosis(t.mac, "local-mac",
                     f"{br} holds {t.mac} as its own address {why}, so frames for the guest go to the host's "
                     f"IP stack instead of {tap}", tuple(evidence), fix, xml, sample=_sample(up))


def rule_port_not_forwarding(t: Target, js: Sequence[Journey]) -> Optional[Diagnosis]:
    p, tap = t.port, t.tap
    if p is None or t.bridge is None:
        return None
    if not p.admin_up:
        return Diagnosis(t.mac, "port-not-forwarding", f"{tap.name} is administratively down, so {t.bridge.name} "
                         "sends it nothing", (f"{tap.name}{_where(t)}: state DOWN",),
                         (in_ns(t.ns, "ip", "link", "set", "dev", tap.name, "up"),))
    if not p.carrier:
        return Diagnosis(t.mac, "port-not-forwarding", f"{tap.name} has no carrier: {_holder_text(t.holders)} "
                         "holds it open, so the guest isn't attached (is the VM running?)",
                         (f"{tap.name}{_where(t)}: NO-CARRIER, holders: {_holder_text(t.holders)}",),
                         ("start the VM (the process that opens the tap)",))
    if p.stp_state != "forwarding":
        evidence = [f"{tap.name} is in STP state {p.stp_state} on {t.bridge.name} (STP {t.bridge.stp_mode}, "
                    f"forward delay {t.bridge.forward_delay_s:g} s)"]
        if p.stp_state in ("listening", "learning") and t.bridge.stp:
            # With STP off the kernel leaves ports where STP had them: set the port forwarding too.
            fix = (in_ns(t.ns, "ip", "link", "set", "dev", t.bridge.name, "type", "bridge", "stp_state", "0"),
                   in_ns(t.ns, "bridge", "link", "set", "dev", tap.name, "state", "3"))
            evidence.append("it will forward after the forward delay; a bridge to VMs rarely needs STP")
        else:
            fix = ()
            evidence.append("STP blocks this port to break a loop: find the loop before changing anything")
        return Diagnosis(t.mac, "port-not-forwarding", f"{tap.name} is {p.stp_state}, not forwarding, so "
                         f"{t.bridge.name} sends it nothing", tuple(evidence), fix)
    return None


def rule_guest_not_reading(t: Target, js: Sequence[Journey]) -> Optional[Diagnosis]:
    if t.tap is None:
        return None
    full = [j for j, c in _drops(js) if c.reason == "FULL_RING" or c.location.startswith("tun_net_xmit")]
    queued = [j for j in js if any(c.outcome == "queued" and c.dev == t.tap.name for c in j.copies)]
    read = any(h.event == "read" and h.dev == t.tap.name for j in js for h in j.hops)
    # Frames still queued when the window closes are normal under load; only a queue that
    # overflows, or one nobody read from at all, says the guest isn't reading.
    if not full and (len(queued) < 2 or read):
        return None
    stopped = [h for h in t.holders if _process_state(h.pid) == "T"]
    evidence = [f"{len(full)} frame(s) dropped with FULL_RING at tun_net_xmit: {t.tap.name}'s queue is full",
                f"{len(queued)} frame(s) still unread in {t.tap.name}'s queue at the end of the window",
                f"{t.tap.name} is held by {_holder_text(t.holders)}"]
    if stopped:
        evidence.append(f"process {stopped[0].pid} ({stopped[0].comm}) is stopped (state T)")
        fix = tuple(f"kill -CONT {h.pid}" for h in stopped)
    else:
        fix = ()
    who = _holder_text(t.holders)
    return Diagnosis(t.mac, "guest-not-reading", f"{who} holds {t.tap.name} but does not read it, so its queue "
                     "fills and the kernel drops what the bridge sends", tuple(evidence), fix,
                     sample=_sample(full or queued))


def rule_mtu(t: Target, js: Sequence[Journey]) -> Optional[Diagnosis]:
    if t.tap is None or t.port is None:
        return None
    big = [j for j in toward(js) if j.frame_len - 14 > t.port.mtu and not _reached_tap(j, t.tap.name)]
    if not big:
        return None
    others = [p.mtu for p in t.bridge.ports if p.name != t.tap.name] or [1500]
    want = max(max(others), max(j.frame_len - 14 for j in big))
    return Diagnosis(t.mac, "mtu", f"frames of up to {max(j.frame_len for j in big)} bytes don't fit {t.tap.name}'s "
                     f"MTU of {t.port.mtu}, so {t.bridge.name} drops them",
                     (f"{len(big)} frame(s) for the guest larger than {t.tap.name}'s MTU {t.port.mtu} were not "
                      "delivered" + _drop_suffix(big),
                      f"the other ports of {t.bridge.name} have MTU {max(others)}"),
                     (in_ns(t.ns, "ip", "link", "set", "dev", t.tap.name, "mtu", str(want)),), sample=_sample(big))


def rule_netfilter_drop(t: Target, js: Sequence[Journey]) -> Optional[Diagnosis]:
    nf = [j for j, c in _drops(toward(js)) if c.reason == "NETFILTER_DROP" or c.location.startswith("nf_hook")]
    if not nf or t.ns is None or t.bridge is None:
        return None
    evidence = [f"{len(nf)} frame(s) for the guest dropped with NETFILTER_DROP at {_drop_location(nf)}",
                t.ns.br_netfilter_note()]
    where, fix = _netfilter_culprit(t)
    evidence.append(where)
    return Diagnosis(t.mac, "netfilter-drop", f"netfilter drops the guest's frames on {t.bridge.name}: {where}",
                     tuple(evidence), fix, sample=_sample(nf))


def rule_fdb_wrong_port(t: Target, js: Sequence[Journey]) -> Optional[Diagnosis]:
    if t.bridge is None or t.ns is None:
        return None
    wrong = [e for e in t.ns.fdb_of(t.bridge.name, t.mac) if not e.permanent and e.dev != t.tap.name]
    if not wrong:
        return None
    e = wrong[0]
    return Diagnosis(t.mac, "fdb-wrong-port", f"{t.bridge.name}'s FDB sends {t.mac} to {e.dev}, not {t.tap.name}",
                     (f"FDB of {t.bridge.name}: {t.mac} on {e.dev} ({e.state}{', sticky' if e.sticky else ''})",),
                     (in_ns(t.ns, "bridge", "fdb", "del", t.mac, "dev", e.dev, "master"),))


def rule_flood_blocked(t: Target, js: Sequence[Journey]) -> Optional[Diagnosis]:
    p = t.port
    if p is None:
        return None
    off = [n for n, v in (("flood", p.flood), ("mcast_flood", p.mcast_flood), ("bcast_flood", p.bcast_flood)) if not v]
    if not off and not p.isolated:
        return None
    missed = [j for j in js if j.verdict == "flooded" and t.tap.name in j.flood_missed]
    known = any(not e.permanent and e.dev == t.tap.name for e in t.ns.fdb_of(t.bridge.name, t.mac))
    # Broadcast (ARP) and multicast (IPv6 ND) always need flooding; unknown unicast only until learned.
    if not (missed or p.isolated or not p.bcast_flood or not p.mcast_flood or not known):
        return None
    what = (["isolated"] if p.isolated else []) + [f"{n} off" for n in off]
    args = [a for n in off for a in (n, "on")] + (["isolated", "off"] if p.isolated else [])
    return Diagnosis(t.mac, "flood-blocked", f"{t.tap.name} doesn't receive flooded frames ({', '.join(what)}), so "
                     "ARP requests and frames for a MAC the bridge hasn't learned never reach the guest",
                     (f"{t.tap.name} on {t.bridge.name}: " + ", ".join(what),
                      f"{len(missed)} flooded frame(s) skipped {t.tap.name}"),
                     (in_ns(t.ns, "bridge", "link", "set", "dev", t.tap.name, *args),), sample=_sample(missed))


def rule_unknown_drop(t: Target, js: Sequence[Journey]) -> Optional[Diagnosis]:
    lost = [j for j in toward(js) if not _reached_tap(j, t.tap.name) and j.verdict == "dropped"]
    if not lost:
        return None
    return Diagnosis(t.mac, "unknown-drop", f"frames for the guest are dropped ({lost[0].reason} at "
                     f"{lost[0].location}) for a reason tapttrace has no rule for",
                     (f"{len(lost)} frame(s) for the guest dropped" + _drop_suffix(lost),), sample=_sample(lost))


def rule_no_traffic(t: Target, js: Sequence[Journey]) -> Optional[Diagnosis]:
    if toward(js):
        return None
    return Diagnosis(t.mac, "no-traffic", f"no frame for {t.mac} crossed a bridge during the window, and the "
                     "configuration shows nothing wrong",
                     ("send traffic to the guest while diagnose watches (e.g. ping it from another host), "
                      "or give its address with --ip so ARP requests for it count",))


def rule_ok(t: Target, js: Sequence[Journey]) -> Optional[Diagnosis]:
    got = [j for j in toward(js) if _reached_tap(j, t.tap.name)]
    if not got or len(got) < len(toward(js)):
        return None
    read = [h for j in got for h in j.hops if h.event == "read"]
    reader = read[0].reader if read and read[0].reader else _holder_text(t.holders)
    return Diagnosis(t.mac, "ok", f"frames for {t.mac} reach {t.tap.name} and are read by {reader}",
                     (f"{len(got)} frame(s) for the guest delivered to {t.tap.name}",), sample=_sample(got))


RULES: tuple[Rule, ...] = (
    rule_tap_not_found, rule_port_not_in_bridge, rule_local_mac, rule_port_not_forwarding,
    rule_guest_not_reading, rule_mtu, rule_netfilter_drop, rule_fdb_wrong_port, rule_flood_blocked,
    rule_ok, rule_unknown_drop, rule_no_traffic,
)


def diagnose(target: Target, journeys: Sequence[Journey], lost_events: int = 0) -> Diagnosis:
    counts = dict(Counter(j.verdict for j in toward(journeys)))
    for rule in RULES:
        found = rule(target, journeys)
        if found is not None:
            evidence = found.evidence
            if lost_events:
                evidence += (f"{lost_events} kernel events were lost during the window: some journeys are "
                             "incomplete",)
            return Diagnosis(**{**found.__dict__, "counts": counts, "evidence": evidence})
    lost = [j for j in toward(journeys) if not _reached_tap(j, target.tap.name)]
    return Diagnosis(target.mac, "unknown-drop", f"{len(lost)} frame(s) for the guest never reached "
                     f"{target.tap.name}, and no rule explains why",
                     tuple(f"#{j.id} {j.summary}: {j.verdict}" for j in lost[:3]), counts=counts,
                     sample=_sample(lost))


# -- helpers ----------------------------------------------------------------------------------

def _drop_location(js: Sequence[Journey]) -> str:
    return next((c.location for j in js for c in j.copies if c.outcome == "dropped"), "?")


def _drop_suffix(js: Sequence[Journey]) -> str:
    d = [(c.reason, c.location) for j in js for c in j.copies if c.outcome == "dropped"]
    return f" (dropped as {d[0][0]} at {d[0][1]})" if d else ""


def _process_state(pid: int, proc: str = "/proc") -> str:
    try:
        return Path(proc, str(pid), "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _netfilter_culprit(t: Target) -> tuple[str, tuple[str, ...]]:
    """The chain (and its policy or rule) that drops bridged frames, from the ruleset."""
    nft = t.ns.nftables
    br = t.bridge.name
    chains = [item["chain"] for item in nft.ruleset or () if "chain" in item]
    for rule in nft.drop_rules():
        if rule.get("family") == "bridge":
            where = f"nftables bridge table {rule['table']}, chain {rule['chain']}, rule handle {rule.get('handle')}"
            return where, (in_ns(t.ns, "nft", "delete", "rule", "bridge", rule["table"], rule["chain"], "handle",
                                 str(rule.get("handle"))),)
    for chain in chains:
        if chain.get("hook") == "forward" and chain.get("policy") == "drop" and chain.get("family") in ("ip", "inet"):
            nf = t.ns.br_netfilter
            if chain.get("family") == "ip" and chain.get("table") == "filter" and chain.get("name") == "FORWARD":
                where = "iptables chain FORWARD has policy DROP, and bridged frames cross it (br_netfilter)"
            else:
                where = f"nftables {chain['family']} table {chain['table']}, chain {chain['name']}: policy drop"
            if nf is not None and nf.call_iptables:
                where += "; bridge-nf-call-iptables=1"
            return where, (in_ns(t.ns, "iptables", "-I", "FORWARD", "-i", br, "-o", br, "-j", "ACCEPT"),)
    for rule in nft.drop_rules():
        if rule.get("family") in ("ip", "inet", "ip6"):
            where = f"nftables {rule['family']} table {rule['table']}, chain {rule['chain']}, rule handle " \
                    f"{rule.get('handle')}"
            return where, (in_ns(t.ns, "nft", "delete", "rule", rule["family"], rule["table"], rule["chain"],
                                 "handle", str(rule.get("handle"))),)
    return "the ruleset shows no drop for it (ebtables legacy or a module outside nftables?)", ()
