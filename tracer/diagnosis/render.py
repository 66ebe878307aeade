"""A Diagnosis for people (rich text) and for programs (one JSON object, docs/causes.md)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from rich.console import Group
from rich.panel import Panel
from rich.text import Text

from ..libvirt_xml import LibvirtInterface
from ..records import Journey
from ..sinks.jsonl import journey_to_dict
from .model import Diagnosis

SCHEMA_ID = "tapttrace.diagnosis/1"
MAX_JOURNEYS = 500  # a flood of pings makes thousands; the first ones show the same


def to_json(d: Diagnosis, journeys: Sequence[Journey] = (), wall_offset_ns: int = 0) -> dict:
    """The diagnosis with the journeys it used (as journey_to_dict prints them)."""
    used = set(d.journeys_used)
    picked = [j for j in journeys if j.id in used]
    t = d.target
    return {
        "schema": SCHEMA_ID,
        "mac": d.mac,
        "cause": d.cause,
        "summary": d.summary,
        "basis": d.basis,
        "evidence": list(d.evidence),
        "facts": dict(d.facts),
        "fix": list(d.fix),
        "advice": list(d.advice),
        "libvirt_xml": d.libvirt_xml or None,
        "also": list(d.also),
        "remarks": list(d.remarks),
        "tap": t.tap.name if t and t.tap else None,
        "netns": (t.netns or None) if t and t.tap else None,
        "bridge": t.bridge.name if t and t.bridge else None,
        "tap_found_by": t.found_by if t else "none",
        "holders": [{"pid": h.pid, "fd": h.fd, "comm": h.comm} for h in (t.holders if t else ())],
        "vm": (t.vm or None) if t else None,
        "libvirt_domain": (t.domain or None) if t else None,
        "libvirt_interface": _interface_json(t.libvirt) if t and t.libvirt else None,
        "ips": list(t.ips) if t else [],
        "fdb": [{"netns": h.netns, "bridge": h.entry.master or None, "dev": h.entry.dev, "state": h.entry.state,
                 "vlan": h.entry.vlan} for h in (t.fdb if t else ())],
        "window_s": d.window_s,
        "lost_events": d.lost_events,
        "counts": dict(d.counts),
        "sample_journey": d.sample,
        "journeys_used": list(d.journeys_used),
        "journeys_omitted": max(0, len(picked) - MAX_JOURNEYS),
        "journeys": [journey_to_dict(j, wall_offset_ns) for j in picked[:MAX_JOURNEYS]],
    }


def render_text(d: Diagnosis, journeys: Sequence[Journey] = ()) -> Group:
    """What the terminal shows: the cause in one sentence, the proof, the commands to paste."""
    style = "bold green" if d.cause == "ok" else "bold red"
    parts: list = [Text.assemble((f"{d.cause}: ", style), d.summary)]
    where = _target_line(d)
    if where:
        parts.append(Text(where, style="dim"))
    if d.evidence or d.counts:
        parts.append(Text("\nevidence:", style="bold"))
        parts += [Text(f"  • {e}") for e in d.evidence]
        if d.counts:
            parts.append(Text(f"  • frames toward the guest during the {d.window_s:g} s window: " + ", ".join(
                f"{n} {v}" for v, n in sorted(d.counts.items(), key=lambda kv: -kv[1]))))
    t = d.target
    if t is not None and t.libvirt is not None:
        lv = t.libvirt
        parts.append(Text(f"\nvm {lv.domain}'s interface ({lv.state or 'defined'}; from {lv.path}):", style="bold"))
        parts.append(Text("  " + lv.xml.replace("\n", "\n  "), style="dim"))
    sample = _journey(journeys, d.sample)
    if sample is not None:
        parts.append(Text(f"\nsample journey #{sample.id}: {sample.summary} ({sample.verdict})", style="bold"))
        parts.append(Text("  " + journey_path(sample), style="dim"))
    if d.fix:
        parts.append(Text("\nfix:", style="bold"))
        parts += [Text(f"  $ {c}", style="cyan") for c in d.fix]
    if d.advice:
        parts.append(Text("\nwhat to do:" if not d.fix else "\nalso:", style="bold"))
        parts += [Text(f"  • {a}") for a in d.advice]
    if d.libvirt_xml:
        domain = d.target.domain if d.target is not None and d.target.libvirt is not None else "DOMAIN"
        parts.append(Text(f"\nlibvirt domain XML (virsh edit {domain}):", style="bold"))
        parts.append(Text("  " + d.libvirt_xml.replace("\n", "\n  "), style="cyan"))
    if d.also:
        parts.append(Text("\nafter that, also: " + ", ".join(d.also), style="yellow"))
    if d.remarks:
        parts.append(Text("\nworth knowing:", style="bold"))
        parts += [Text(f"  • {r}", style="dim") for r in d.remarks]
    return Group(Panel(Group(*parts), title=Text(f"tapttrace diagnose {d.mac}"), expand=False))


def journey_path(j: Journey) -> str:
    """One line: where the frame was seen, in order ('up0 received → br0 passed-up → br0 dropped OTHERHOST ...')."""
    steps = []
    for h in j.hops:
        if h.event == "flood-decision":
            continue
        step = f"{h.dev or '?'} {h.event}"
        if h.event == "dropped":  # no reason before 5.17: the function alone
            step += f" {h.reason} at {h.location}" if h.reason else f" at {h.location}"
        elif h.event == "read" and h.reader:
            step += f" by {h.reader}"
        elif h.detail:  # a decision inside the bridge or the tap
            step += f" ({h.detail})"
        steps.append(step + (f" [copy {h.copy}]" if h.copy else ""))
    return " → ".join(steps) or "(no hops)"


def _target_line(d: Diagnosis) -> str:
    t = d.target
    if t is None or t.tap is None:
        return ""
    ns = "" if t.netns in ("", "root") else f" in namespace {t.netns}"
    port = f", port of {t.bridge.name}" if t.bridge else ", in no bridge"
    held = ", ".join(f"{h.comm} (pid {h.pid}, fd {h.fd})" for h in t.holders) or "no process"
    kind = f" <interface type='{t.libvirt.type}'>" if t.libvirt is not None else ""
    guest = f"; vm {t.vm}{kind}" if t.vm else ""
    return f"guest tap: {t.tap.name}{ns}{port} (found by {t.found_by}); held by {held}{guest}"


def _interface_json(lv: LibvirtInterface) -> dict:
    return {"domain": lv.domain, "type": lv.type, "mac": lv.mac, "target_dev": lv.target_dev or None,
            "managed": lv.target_managed, "source_bridge": lv.source_bridge or None, "state": lv.state or None,
            "running": lv.live, "from": lv.path, "xml": lv.xml}


def _journey(journeys: Sequence[Journey], jid: Optional[int]) -> Optional[Journey]:
    return next((j for j in journeys if j.id == jid), None) if jid is not None else None
