"""`tapttrace diagnose`: snapshot the configuration, watch live traffic, name the cause, print the fix."""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Optional

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from .config import FollowConfig, parse_mac
from .causes import Diagnosis, Target, diagnose, locate
from .records import Journey
from .runtime import follow_session, machine_features, wall_offset_ns
from .sinks.jsonl import journey_to_dict

SCHEMA_ID = "tapttrace.diagnosis/1"


def render_text(d: Diagnosis, target: Target) -> Group:
    style = "bold green" if d.cause == "ok" else "bold red"
    parts = [Text.assemble((f"{d.cause}: ", style), d.summary)]
    if target.tap is not None:
        where = f"{target.tap.name} in {target.ns.name if target.ns else '?'}"
        parts.append(Text(f"guest tap: {where} (found by {target.found_by})", style="dim"))
    if d.evidence:
        parts.append(Text("\nevidence:", style="bold"))
        parts += [Text(f"  • {e}") for e in d.evidence]
    if d.counts:
        parts.append(Text("  • frames for the guest during the window: " +
                          ", ".join(f"{n} {v}" for v, n in sorted(d.counts.items(), key=lambda kv: -kv[1]))))
    if d.fix:
        parts.append(Text("\nfix:", style="bold"))
        parts += [Text(f"  $ {c}", style="cyan") for c in d.fix]
    if d.libvirt_xml:
        parts.append(Text("\nlibvirt domain XML:", style="bold"))
        parts.append(Text("  " + d.libvirt_xml.replace("\n", "\n  "), style="cyan"))
    return Group(Panel(Group(*parts), title=f"tapttrace diagnose {d.mac}", expand=False))


def to_json(d: Diagnosis, target: Target, journeys: list[Journey], offset_ns: int) -> dict:
    return {
        "schema": SCHEMA_ID,
        "mac": d.mac,
        "cause": d.cause,
        "summary": d.summary,
        "evidence": list(d.evidence),
        "fix": list(d.fix),
        "libvirt_xml": d.libvirt_xml or None,
        "tap": target.tap.name if target.tap else None,
        "netns": target.ns.name if target.ns else None,
        "bridge": target.bridge.name if target.bridge else None,
        "tap_found_by": target.found_by,
        "holders": [{"pid": h.pid, "fd": h.fd, "comm": h.comm} for h in target.holders],
        "counts": d.counts,
        "sample_journey": d.sample,
        "journeys": [journey_to_dict(j, offset_ns) for j in journeys],
    }


def _countdown(console: Console, seconds: float, done: threading.Event) -> None:
    end = time.monotonic() + seconds
    with console.status("") as status:
        while not done.wait(0.1):
            status.update(f"watching for {max(0.0, end - time.monotonic()):4.1f} s more: reproduce the problem "
                          "now (e.g. ping the VM from another host)")


def run_diagnose(mac: str, ips: tuple[str, ...], tap: Optional[str], duration: float, as_json: bool,
                 stop: threading.Event, console: Optional[Console] = None) -> int:
    """Exit code: 0 when nothing is wrong, 1 when a cause was found."""
    from .features import require
    from .netns import list_netns
    from .snapshot import collect_snapshot

    mac = parse_mac(mac)
    console = console or Console(stderr=as_json)
    require(machine_features())
    before = locate(collect_snapshot(list_netns(True)), mac, tap)  # a bad --tap fails before we watch
    # Only journeys through the guest's namespace: another bridge elsewhere may reuse its address.
    config = FollowConfig(mac=mac, ips=ips, duration=duration, netns=(before.ns.name,) if before.ns else ())
    journeys: list[Journey] = []
    with follow_session(config, sinks=[], on_journey=journeys.append, stop=stop) as session:
        done = threading.Event()
        ticker = threading.Thread(target=_countdown, args=(console, duration, done), daemon=True)
        ticker.start()
        try:
            summary = session.run()
        finally:
            done.set()
            ticker.join()
    # After the window: queues have filled and addresses have been learned meanwhile.
    target = locate(collect_snapshot(list_netns(True)), mac, tap)
    result = diagnose(target, journeys, lost_events=summary.lost_events)
    if as_json:
        sys.stdout.write(json.dumps(to_json(result, target, journeys, wall_offset_ns()), indent=2) + "\n")
    else:
        console.print(render_text(result, target))
    return 0 if result.cause == "ok" else 1
