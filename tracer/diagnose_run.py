"""`tapttrace diagnose`: snapshot the configuration, watch live traffic, name the cause, print the fix."""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Optional

from rich.console import Console

from .config import FollowConfig
from .diagnosis import diagnose, locate, read_process_states, render_text, to_json
from .errors import say_ready
from .records import Journey
from .runtime import follow_session, machine_features, wall_offset_ns
from .sinks.terminal import make_console

MAX_ANALYSED = 10_000  # journeys kept for the rules (≈ 20 MB); later ones are only counted


def _countdown(console: Console, seconds: float, done: threading.Event) -> None:
    end = time.monotonic() + seconds
    with console.status("") as status:
        while not done.wait(0.1):
            status.update(f"watching for {max(0.0, end - time.monotonic()):4.1f} s more: reproduce the problem "
                          "now (e.g. ping the VM from another host)")


def run_diagnose(mac: Optional[str], ips: tuple[str, ...], tap: Optional[str], duration: float, as_json: bool,
                 stop: threading.Event, console: Optional[Console] = None, *, vm: Optional[str] = None,
                 libvirt_uri: Optional[str] = None) -> int:
    """Exit code: 0 when nothing is wrong, 1 when a cause was found."""
    from .features import require
    from .netns import list_netns
    from .snapshot import collect_snapshot
    from .vms import guest_mac

    console = console or make_console(stderr=as_json)
    mac, inventory = guest_mac(mac, vm, libvirt_uri)
    features = machine_features()
    require(features, features.follow_loader)
    domains = inventory.interfaces
    before = locate(collect_snapshot(list_netns(True)), mac, tap, ips, domains=domains)  # bad --tap: fail now
    # Only journeys through the guest's namespace: another bridge elsewhere may reuse its address.
    config = FollowConfig(mac=mac, ips=ips, duration=duration, netns=(before.ns.name,) if before.ns else ())
    journeys: list[Journey] = []
    not_analysed = 0

    def keep(j: Journey) -> None:
        # A flood toward the guest brings tens of thousands of journeys a second (≈ 2 KB each):
        # the first MAX_ANALYSED are evidence enough; the rest are counted, and the diagnosis says so.
        nonlocal not_analysed
        if len(journeys) < MAX_ANALYSED:
            journeys.append(j)
        else:
            not_analysed += 1

    with follow_session(config, sinks=[], on_journey=keep, stop=stop) as session:
        started = time.monotonic()
        done = threading.Event()
        if as_json:
            say_ready(f"{mac} for up to {duration:g} s; Ctrl-C ends the window early")
        ticker = threading.Thread(target=_countdown, args=(console, duration, done), daemon=True)
        ticker.start()
        try:
            summary = session.run()
        finally:
            done.set()
            ticker.join()
    # Ctrl-C (or SIGTERM) ends the window early, once the problem has been reproduced: the report
    # is still made, from what was seen, and says how long the window really was.
    window_s = duration if summary.stopped_by != "signal" else round(time.monotonic() - started, 1)
    # After the window: queues have filled and addresses have been learned meanwhile.
    snapshot = collect_snapshot(list_netns(True))
    target = locate(snapshot, mac, tap, ips, domains=domains)
    result = diagnose(snapshot, target, journeys, window_s, process_states=read_process_states(target.holders),
                      lost_events=summary.lost_events, not_analysed=not_analysed)
    if as_json:
        sys.stdout.write(json.dumps(to_json(result, journeys, wall_offset_ns()), indent=2) + "\n")
    else:
        console.print(render_text(result, journeys))
    return result.exit_code
