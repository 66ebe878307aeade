"""The `tapttrace` command: follow, diagnose, doctor, demo."""
from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Optional

import click
from rich.console import Console
from rich.text import Text

from . import __version__
from .errors import TapttraceError, say_ready
from .sinks.terminal import make_console

if TYPE_CHECKING:  # features costs 0.3 s to import; only doctor needs it
    from .features import DoctorLine


def _fail(err: TapttraceError) -> None:
    click.echo(f"tapttrace: {err.message}", err=True)
    sys.exit(err.exit_code)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM set an event the loops check, so every exit path runs the clean-up."""
    stop = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    handling = False

    def on_signal(*_) -> None:
        # A second signal can land while the first one's handler is inside Event.set(), which
        # holds a lock that is not reentrant: setting it again there deadlocked follow (a
        # SIGTERM sent twice). Handlers run in the main thread, so a plain flag keeps them apart.
        nonlocal handling
        if handling or stop.is_set():
            return
        handling = True
        try:
            stop.set()
        finally:
            handling = False

    for s in previous:
        signal.signal(s, on_signal)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class _Commands(click.Group):
    """The exporter's command is imported when asked for: its prometheus_client and collector
    imports cost follow and diagnose 1.8 s of their start under qemu (TCG), for nothing."""

    _LAZY = {"exporter": ("tracer.exporter.cli", "exporter_command")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._LAZY))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name in self._LAZY and cmd_name not in self.commands:
            import importlib

            module, attr = self._LAZY[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from .bpfbuild import build_info

    click.echo(f"tapttrace {__version__}\n{build_info()}")
    ctx.exit()


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version and where the BPF objects come from, and exit.")
def main() -> None:
    """Follow frames through the Linux bridge to a VM's tap, and say why they stop."""


def vm_options(f):
    """--vm and --connect: name the guest the way libvirt does."""
    f = click.option("--connect", "libvirt_uri", metavar="URI",
                     help="libvirt URI for --vm and for naming VMs (default qemu:///system; read-only).")(f)
    return click.option("--vm", metavar="NAME",
                        help="The libvirt domain instead of a MAC (its only interface; give the MAC too when it "
                             "has several).")(f)


@main.command()
@click.argument("mac", required=False)
@vm_options
@click.option("--ip", "ips", multiple=True, metavar="ADDR",
              help="An address of the guest: ARP requests / IPv6 neighbour solicitations for it are followed too. "
                   "Repeatable. Addresses the guest uses are also learned while running.")
@click.option("--count", type=int, metavar="N", help="Stop after N journeys.")
@click.option("--duration", type=float, metavar="S", help="Stop after S seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per journey (docs/journey.schema.json).")
@click.option("--pcap", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Also write the matched frames to FILE (pcap, readable by tcpdump and Wireshark).")
@click.option("--netns", "netns", multiple=True, metavar="NAME",
              help="Only journeys that touch this network namespace ('root', a name from `ip netns list`, "
                   "pid:PID). Repeatable.")
@click.option("--no-learn", is_flag=True, help="Don't learn the guest's addresses from its own traffic.")
@click.option("--record", type=click.Path(dir_okay=False, writable=True), hidden=True,
              help="Write raw events and names for replay in tests.")
def follow(mac: Optional[str], vm: Optional[str], libvirt_uri: Optional[str], ips: tuple[str, ...],
           count: Optional[int], duration: Optional[float], as_json: bool, pcap: Optional[str],
           netns: tuple[str, ...], no_learn: bool, record: Optional[str]) -> None:
    """Print, live, every journey of a frame that concerns MAC (or --vm NAME's MAC): where it was seen,
    and how it ended."""
    from .config import FollowConfig
    from .netns import resolve_netns
    from .runtime import follow_session
    from .vms import guest_mac

    try:
        mac, vms = guest_mac(mac, vm, libvirt_uri)
        config = FollowConfig(mac=mac, ips=ips, count=count, duration=duration, json=as_json, pcap=pcap,
                              record=record, learn_ips=not no_learn,
                              netns=tuple(resolve_netns(n).name for n in netns), vm=vm or "")
        console = make_console(stderr=as_json)
        with stop_on_signals() as stop:
            with follow_session(config, console=console, stop=stop, vms=vms) as session:
                if as_json:  # stdout is the journeys': the line scripts wait for goes to stderr
                    say_ready(f"{session.guest()} on {session.describe()}; Ctrl-C to stop")
                else:
                    # Names (a VM's, a device's) are printed as they are, never read as markup.
                    console.print(Text(f"following {session.guest()} on {session.describe()}; Ctrl-C to stop",
                                       style="dim"))
                session.run()
        sys.exit(0)
    except TapttraceError as err:
        _fail(err)


@main.command()
@click.argument("mac", required=False)
@vm_options
@click.option("--ip", "ips", multiple=True, metavar="ADDR",
              help="An address of the guest, so ARP requests for it count. Repeatable; also learned.")
@click.option("--tap", metavar="DEV", help="The guest's tap, when tapttrace can't find it by itself.")
@click.option("--duration", type=float, default=5.0, show_default=True, metavar="S",
              help="How long to watch live traffic (Ctrl-C ends the window sooner and still reports).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (docs/causes.md).")
def diagnose(mac: Optional[str], vm: Optional[str], libvirt_uri: Optional[str], ips: tuple[str, ...],
             tap: Optional[str], duration: float, as_json: bool) -> None:
    """Name the cause of a VM's lost frames (MAC, or --vm NAME), with the evidence and the exact fix.

    Exit code 0 when nothing is wrong, 1 when a cause was found."""
    from .diagnose_run import run_diagnose

    try:
        with stop_on_signals() as stop:
            code = run_diagnose(mac, ips, tap, duration, as_json, stop, vm=vm, libvirt_uri=libvirt_uri)
    except TapttraceError as err:
        _fail(err)
    sys.exit(code)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Report what the running kernel offers and what tapttrace will use."""
    from .config import FollowConfig
    from .exporter.service import open_program
    from .features import bridge_plan, doctor_lines, load_line
    from .runtime import machine_features, open_follow_program

    try:
        features = machine_features()
        lines = doctor_lines(features, bridge_plan(features))
        if features.hook != "none":
            # Loaded through the chain, as follow would, and closed at once: a verifier that refuses
            # the object shows here with its own words and the fallback taken (a locally
            # administered MAC no frame carries; the smallest ring buffer).
            probe = FollowConfig(mac="02:00:00:00:00:00", ringbuf_pages=1)
            lines.append(load_line("follow program", "bpf/follow.c", features,
                                   lambda say: open_follow_program(features, probe, say=say)))
            # The exporter's maps at their smallest: only the verifier's say is wanted here.
            lines.append(load_line("exporter program", "bpf/exporter.c", features,
                                   lambda say: open_program(features, max_series=64, say=say)))
    except TapttraceError as err:
        _fail(err)
        return
    if as_json:
        click.echo(json.dumps([line.__dict__ for line in lines], indent=2))
    else:
        print_doctor_lines(make_console(), lines)
    sys.exit(0 if all(line.ok for line in lines if line.required) else 3)


def print_doctor_lines(console: Console, lines: list[DoctorLine]) -> None:
    """doctor's lines. Details quote the kernel ("[tun]") and name devices: Text, never markup."""
    for line in lines:
        console.print(Text.assemble(("✓", "green") if line.ok else ("✗", "red"), " ",
                                    (line.item, "bold"), f": {line.detail}"))
        if not line.ok and line.fix:
            console.print(Text(f"    fix: {line.fix}"))


@main.command()
@click.option("--keep", is_flag=True, hidden=True)
@click.option("--guest", type=click.Choice(["stub", "qemu"]), default="stub", show_default=True,
              help="The lab's guest: a Python stand-in on the tap, or a real Linux VM under qemu (docs/lab.md).")
def demo(keep: bool, guest: str) -> None:
    """Build a throwaway lab with the classic tap-MAC failure, trace it, fix it, trace again, tear down."""
    from .demo import run_demo
    from .lab.topology import LabCommandFailed

    try:
        with stop_on_signals() as stop:
            sys.exit(run_demo(make_console(), stop, guest=guest))
    except TapttraceError as err:
        _fail(err)
    except LabCommandFailed as err:  # e.g. a kernel without veth: one line, not a traceback
        click.echo(f"tapttrace: the demo's lab could not be built: {err}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
