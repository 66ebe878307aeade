"""diagnose(): run the rules in order, keep the first cause, note the others and what else is worth knowing."""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional, Union

from ..records import Journey
from ..snapshot import Snapshot
from ..taps import TapHolder
from . import journeys as jv
from .context import Context
from .model import Diagnosis, Finding, Target
from .rules import RULES

NOT_CAUSES = ("ok", "no-traffic", "unknown-drop")  # verdicts and the catch-all, not causes of their own


def diagnose(snapshot: Union[Snapshot, Target], target: Union[Target, Sequence[Journey], None] = None,
             journeys: Sequence[Journey] = (), window_s: float = 0.0, *,
             process_states: Optional[Mapping[int, str]] = None, lost_events: int = 0,
             not_analysed: int = 0) -> Diagnosis:
    """The cause, its proof and its fix, from the snapshot, the located target and the journeys seen.

    Also accepts the older form diagnose(target, journeys).
    """
    if isinstance(snapshot, Target):
        # the older form: no snapshot, and the holders' process states read here (the new form takes them
        # as data, from read_process_states)
        journeys = list(target or ()) if not isinstance(target, Target) else journeys
        target = snapshot
        snapshot = Snapshot(0.0, "", (target.ns,) if target.ns is not None else ())
        if process_states is None:
            process_states = read_process_states(target.holders)
    assert isinstance(target, Target)
    ctx = Context(snapshot, target, tuple(journeys), window_s, dict(process_states or {}), lost_events)
    found = [f for f in (rule(ctx) for rule in RULES) if f is not None]
    first = found[0]  # rule_unknown_drop, rule_ok and rule_no_traffic together cover every case
    others = tuple(dict.fromkeys(f.cause for f in found[1:] if f.cause not in NOT_CAUSES and f.cause != first.cause))
    used = tuple(dict.fromkeys(jv.ids_of(ctx.toward) + first.journeys))
    evidence = first.evidence
    if lost_events and first.basis != "configuration":
        evidence += (f"{lost_events} kernel events were lost during the window: some journeys are incomplete",)
    if not_analysed:
        evidence += (f"{not_analysed} later journeys were seen but not analysed (the first {len(journeys)} were)",)
    return Diagnosis(
        mac=target.mac, cause=first.cause, summary=first.summary, evidence=evidence, fix=first.fix,
        libvirt_xml=first.libvirt_xml, counts=dict(Counter(j.verdict for j in ctx.toward)),
        sample=first.journeys[0] if first.journeys else None, advice=first.advice, facts=dict(first.facts),
        basis=first.basis, also=others, remarks=tuple(remarks(ctx, first)), journeys_used=used,
        window_s=window_s, lost_events=lost_events, target=target,
    )


def remarks(ctx: Context, first: Finding) -> list[str]:
    """Configuration worth knowing that is not the cause (yet)."""
    t, br, p = ctx.target, ctx.bridge, ctx.port
    out = list(t.notes)
    if ctx.lost_events and first.basis == "configuration":
        out.append(f"{ctx.lost_events} kernel events were lost during the window: some journeys are incomplete")
    if br is not None and p is not None:
        others = [q for q in br.ports if q.name != p.name and q.mtu]
        if others and p.mtu < max(q.mtu for q in others) and first.cause != "mtu":
            big = max(others, key=lambda q: q.mtu)
            out.append(f"{p.name}'s MTU ({p.mtu}) is smaller than {big.name}'s ({big.mtu}): frames for the guest "
                       f"larger than {p.mtu + 14} bytes will be dropped")
        if not p.learning and first.cause != "fdb-wrong-port":
            out.append(f"{p.name} has learning off: {br.name} never learns the guest's MAC there and floods "
                       "unicast for it")
        if not p.mcast_flood and first.cause != "flood-blocked":
            out.append(f"{p.name} has mcast_flood off: IPv6 neighbour discovery for the guest won't reach it")
        if p.isolated and first.cause != "flood-blocked":
            out.append(f"{p.name} is isolated: frames from other isolated ports of {br.name} never reach it")
        if br.vlan_filtering:
            out.append(f"{br.name} filters VLANs; the snapshot doesn't hold VLAN membership: "
                       + ctx.cmd("bridge", "vlan", "show", "dev", p.name))
        if ctx.ns is not None and first.cause != "fdb-wrong-port":
            for e in ctx.ns.fdb_of(br.name, t.mac):
                if not e.permanent and e.dev != p.name:
                    out.append(f"{br.name} has {t.mac} on {e.dev} ({e.state}), not on {p.name}")
        if ctx.ns is not None and first.cause != "netfilter-drop" and (
                (ctx.ns.br_netfilter and ctx.ns.br_netfilter.call_iptables) or br.nf_call_iptables):
            out.append(f"bridged IPv4 on {br.name} crosses iptables/nftables ip hooks (br_netfilter)")
    if t.libvirt is not None and t.libvirt.filterref and first.cause != "netfilter-drop":
        out.append(f"libvirt applies nwfilter '{t.libvirt.filterref}' to {t.libvirt.domain}'s interface")
    return out


def read_process_states(holders: Iterable[TapHolder], proc_root: str = "/proc") -> dict[int, str]:
    """pid -> state letter from /proc/PID/stat (R, S, D, T, ...) for the tap holders; the one impure helper."""
    states = {}
    for h in holders:
        try:
            with open(os.path.join(proc_root, str(h.pid), "stat")) as f:
                # comm may hold spaces and parentheses: the state follows the last ')'
                states[h.pid] = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
    return states
