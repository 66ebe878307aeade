"""`tapttrace demo`: the classic tap-MAC failure, traced, fixed and traced again, in a throwaway lab."""
from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

from rich.console import Console
from rich.rule import Rule
from rich.text import Text

from .config import FollowConfig
from .follow import FollowSummary
from .records import Journey
from .runtime import follow_session, wall_offset_ns
from .sinks.terminal import TerminalSink

T = TypeVar("T")

# How long the demo waits for the journeys of the pings it sent to be reported before it stops
# following anyway (the final flush then shows any still open as unfinished): a deadline, not a pause.
JOURNEYS_WAIT_S = 10.0


def echo_requests(journeys: list[Journey]) -> int:
    return sum(j.toward_guest and j.summary.startswith("ICMP echo ") and " reply " not in j.summary for j in journeys)


def trace_while(console: Console, config: FollowConfig, action: Callable[[], T], stop: threading.Event,
                requests: Callable[[T], int] = lambda value: 0) -> tuple[list[Journey], FollowSummary, T]:
    """Follow config.mac while action() runs; return the journeys, the summary and action's result.
    requests(result): how many echo requests toward the guest action() sent; following stops once
    that many journeys have been reported (a journey is reported once it is over, so the frames are
    through, however slow the machine), or after JOURNEYS_WAIT_S."""
    journeys: list[Journey] = []
    done = threading.Event()
    result: dict = {}
    with follow_session(config, sinks=[], on_journey=journeys.append, stop=done) as session:
        runner = threading.Thread(target=lambda: result.setdefault("summary", session.run()), daemon=True)
        runner.start()
        try:
            value = action()
            deadline = time.monotonic() + JOURNEYS_WAIT_S
            while (echo_requests(list(journeys)) < requests(value) and runner.is_alive()
                   and not stop.is_set() and time.monotonic() < deadline):
                time.sleep(0.05)
        finally:
            done.set()
            runner.join(timeout=10)
    if stop.is_set():
        raise KeyboardInterrupt
    return journeys, result.get("summary", FollowSummary()), value


def show(console: Console, journeys: list[Journey], summary: FollowSummary) -> None:
    sink = TerminalSink(console, wall_offset_ns())
    for j in journeys:
        sink.journey(j)
    console.print(Text(summary.line(), style="bold"))


def diagnosis_of(lab, journeys: list[Journey]):
    """What `tapttrace diagnose` says about the journeys just traced (same rules, no second watch)."""
    from .diagnosis import diagnose, locate, read_process_states, render_text
    from .netns import resolve_netns
    from .snapshot import collect_snapshot

    snapshot = collect_snapshot([resolve_netns(lab.hv_ns)])
    target = locate(snapshot, lab.guest_mac, ips=(lab.guest_ip,))
    window_s = (max(j.last_ns for j in journeys) - min(j.first_ns for j in journeys)) / 1e9 if journeys else 0.0
    return render_text(diagnose(snapshot, target, journeys, round(window_s, 1),
                                process_states=read_process_states(target.holders)), journeys)


def run_demo(console: Console, stop: threading.Event, guest: str = "stub") -> int:
    from .lab import Lab, LabSpec, libvirt_tap_mac

    console.print(Rule("tapttrace demo: host can ping the VM, other hosts can't"))
    console.print("Building a lab in throwaway namespaces: remote host ─ up0 ─ \\[br0] ─ vnet0 ─ guest.\n"
                  "vnet0 was pre-created and carries the guest's own MAC, as a tap made by hand for "
                  "libvirt's <interface type='ethernet'> often does.")
    if guest == "qemu":
        console.print("The guest is a real Linux VM under qemu (TCG): first run downloads Debian's cloud "
                      "kernel (~27 MB); booting takes a few seconds.")
    try:
        with Lab(LabSpec(tap_mac="guest", guest=guest)) as lab:
            config = FollowConfig(mac=lab.guest_mac, ips=(lab.guest_ip,))
            console.print(Text(f"guest {lab.guest_mac} {lab.guest_ip} on tap {lab.tap} (tap MAC {lab.tap_mac}); "
                               f"remote host {lab.remote_ip}; bridge host address {lab.host_ip}\n"))

            def pings():
                # 1 s a probe from the remote: the broken path answers nothing
                return lab.ping_guest_from_remote(count=3, timeout=1.0), lab.ping_guest_from_host(count=2)

            journeys, summary, (remote, host) = trace_while(console, config, pings, stop,
                                                            lambda pair: pair[0].sent + pair[1].sent)
            console.print(Rule(Text(f"tapttrace follow {lab.guest_mac} --ip {lab.guest_ip}")))
            show(console, journeys, summary)
            console.print(f"\nremote host → guest: {remote.received}/{remote.sent} replies;  "
                          f"host → guest: {host.received}/{host.sent} replies")
            broken = remote.received == 0 and host.received > 0
            console.print(diagnosis_of(lab, journeys))

            fix = libvirt_tap_mac(lab.guest_mac)
            console.print(Rule("the fix libvirt applies: the tap gets fe: + the guest MAC's last five bytes"))
            console.print(Text(f"$ ip link set dev {lab.tap} address {fix}"))
            lab.set_tap_mac(fix)

            journeys, summary, remote = trace_while(
                console, config, lambda: lab.ping_guest_from_remote(count=3), stop, lambda r: r.sent)
            console.print(Rule(Text(f"tapttrace follow {lab.guest_mac} --ip {lab.guest_ip} (after the fix)")))
            show(console, journeys, summary)
            console.print(f"\nremote host → guest: {remote.received}/{remote.sent} replies")
            fixed = remote.received > 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; the lab was torn down[/yellow]")
        return 130
    console.print(Rule())
    ok = broken and fixed
    console.print("[green]demo reproduced the failure and the fix; the lab was torn down[/green]" if ok else
                  "[red]demo did not behave as expected (see above); the lab was torn down[/red]")
    return 0 if ok else 1
