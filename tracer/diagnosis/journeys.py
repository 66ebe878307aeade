"""Reading journeys from the guest's point of view: did one reach the tap, where did it stop, what was it."""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from .. import frames
from ..records import Copy, Journey
from ..sinks.jsonl import SCHEMA_ID, journey_from_dict

REACHED = ("delivered", "queued")  # a copy that got into the tap's queue (read, or still waiting)

# follow's summary line for IP frames: "ICMP echo 198.51.100.1 > 198.51.100.10 seq 1", "TCP a:1 > b:2"
_SUMMARY_IP = re.compile(r"^(?:vlan \d+ )?(\S+) .*?([0-9a-f.:]+?)(?::\d+)? > ([0-9a-f.:]+?)(?::\d+)?(?: seq \d+)?$")
_VLAN = re.compile(r"^vlan \d+ ")
_PROTOS = {"ICMP": "icmp", "ICMPv6": "ipv6-icmp", "TCP": "tcp", "UDP": "udp"}


def load_journeys(lines: Iterable[str]) -> list[Journey]:
    """Journeys from `follow --json` / journey_to_dict JSON lines (other lines, e.g. the summary, are skipped)."""
    found = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        d = json.loads(line)
        if d.get("schema") == SCHEMA_ID:
            found.append(journey_from_dict(d))
    return found


def touches(j: Journey, netns: str) -> bool:
    """Was the frame seen in namespace `netns`?"""
    return any(h.netns == netns for h in j.hops) or any(c.netns == netns for c in j.copies)


def copies_on(j: Journey, dev: str, netns: str = "") -> list[Copy]:
    """Copies whose outcome happened on `dev` (in `netns`, when given)."""
    return [c for c in j.copies if c.dev == dev and (not netns or not c.netns or c.netns == netns)]


def reached(j: Journey, tap: str, netns: str = "", is_tap: bool = True) -> bool:
    """Did a copy get into the tap's queue (or, for a --tap that is no tap, e.g. a veth, out through it)?"""
    if any(c.outcome in REACHED for c in copies_on(j, tap, netns)):
        return True
    return not is_tap and any(c.outcome == "forwarded" and tap in (c.dev, c.port) for c in j.copies)


def delivered(j: Journey, tap: str, netns: str = "") -> bool:
    """Did a copy get read from the tap?"""
    return any(c.outcome == "delivered" for c in copies_on(j, tap, netns))


def queued(j: Journey, tap: str, netns: str = "") -> bool:
    """Is a copy still waiting in the tap's queue at the end?"""
    return any(c.outcome == "queued" for c in copies_on(j, tap, netns))


def dropped_copies(j: Journey) -> list[Copy]:
    """The copies the kernel dropped."""
    return [c for c in j.copies if c.outcome == "dropped"]


def first_drop(js: Sequence[Journey]) -> Optional[Copy]:
    """The first dropped copy among the journeys."""
    return next((c for j in js for c in dropped_copies(j)), None)


def readers(js: Sequence[Journey], tap: str) -> list[str]:
    """Who read the tap, as follow names them ("qemu-system-x86 (pid 812)")."""
    seen: list[str] = []
    for j in js:
        for h in j.hops:
            if h.event == "read" and h.dev == tap and h.reader and h.reader not in seen:
                seen.append(h.reader)
    return seen


def ingress_port(j: Journey) -> str:
    """The bridge port the frame entered its bridge by ("" when it came from the host itself)."""
    for h in j.hops:
        if h.event == "received" and "port of" in h.role:
            return h.dev
    return ""


def passed_up(j: Journey) -> bool:
    """Was (a copy of) the frame handed to the bridge device, i.e. the host's own stack?"""
    return any(h.event == "passed-up" for h in j.hops)


def is_group(j: Journey) -> bool:
    """Broadcast or multicast destination: the bridge floods these."""
    return bool(j.dst_mac) and int(j.dst_mac[:2], 16) & 1 == 1


def ids_of(js: Iterable[Journey]) -> tuple[int, ...]:
    """The journeys' ids."""
    return tuple(j.id for j in js)


@dataclass(frozen=True)
class Packet:
    """What netfilter matches on, as far as a journey tells (None: not known)."""

    family: str  # ip | ip6 | arp | other
    src_ip: Optional[str] = None
    dst_ip: Optional[str] = None
    l4proto: Optional[str] = None  # icmp | ipv6-icmp | tcp | udp


def packet(j: Journey) -> Packet:
    """The journey's L3 facts: from the captured bytes when present, else from its summary line."""
    family = {frames.ETH_P_IP: "ip", frames.ETH_P_IPV6: "ip6", frames.ETH_P_ARP: "arp"}.get(j.ethertype, "other")
    if j.frame:
        info = frames.decode(j.frame)
        words = _VLAN.sub("", info.summary).split(" ", 1)
        return Packet(family, info.src_ip, info.dst_ip, _PROTOS.get(words[0]))
    m = _SUMMARY_IP.match(j.summary) if family in ("ip", "ip6") else None
    if m is None:
        return Packet(family)
    return Packet(family, m.group(2), m.group(3), _PROTOS.get(m.group(1)))
