"""Wiring of the kernel-facing pieces (features, BPF program, netlink, /proc) into a follow session."""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Optional, Protocol

from rich.console import Console

from .config import FollowConfig
from .devices import DeviceTable
from .errors import say_note
from .follow import EventSource, FollowSummary, Recorder, Sink, guest_taps, run_follow
from .records import Journey
from .sinks.jsonl import JsonLinesSink
from .sinks.terminal import TerminalSink, make_console
from .stitch import Namer

if TYPE_CHECKING:
    from .features import Features
    from .vms import VmInventory


class LoadedProgram(EventSource, Protocol):
    """follow's BPF program as the loader chain opens it (loader.FollowProgram under bcc,
    libbpf_loader.LibbpfFollowProgram): an event source that leaving its block detaches."""

    def __enter__(self) -> LoadedProgram: ...
    def __exit__(self, *exc: object) -> None: ...


def machine_features() -> Features:
    """The running kernel's features. TAPTTRACE_SYSFS points the probes at another sysfs root
    (a container's view, or a test's tree without BTF or tracefs)."""
    from .features import ProbeRoots, probe_features

    sysfs = os.environ.get("TAPTTRACE_SYSFS")
    return probe_features(ProbeRoots(sys=sysfs) if sysfs else None)


def wall_offset_ns() -> int:
    """Add to a bpf_ktime_get_ns() timestamp (CLOCK_MONOTONIC) to get Unix time."""
    return time.time_ns() - time.monotonic_ns()


def make_namer(features, vms: Optional[VmInventory] = None) -> Namer:
    from .kallsyms import Kallsyms
    from .netns import root_netns
    from .taps import find_tap_holders, qemu_guest_name

    ksyms = Kallsyms.load().preload()
    reasons = features.drop_reasons
    cache: dict[tuple[int, str], str] = {}
    root = root_netns().inode  # libvirt's qemu driver keeps its taps here

    def tap_reader(netns: int, dev: str) -> str:
        key = (netns, dev)
        if key not in cache:
            holders = [h for h in find_tap_holders() if h.iff == dev]
            same_ns = [h for h in holders if (h.dev_netns or h.netns) == netns] or holders
            iface = vms.by_tap(dev) if vms is not None and netns == root else None
            cache[key] = ", ".join(_reader(h, iface.domain if iface else qemu_guest_name(h.cmdline))
                                   for h in same_ns)
        return cache[key]

    # Before 5.17 kfree_skb has no reason: every drop carries 0, which names nothing.
    has_reasons = features.kfree_skb_has_reason
    return Namer(reason=lambda r: reasons.get(r, f"unknown:{r}") if r or has_reasons else "",
                 symbol=lambda a: ksyms.symbolize(a) if a else "",
                 tap_reader=tap_reader)


def _reader(h, vm: str) -> str:
    """'qemu-system-x86 (pid 812, fd 31, vm web1)': who reads the tap, through which fd, for which VM."""
    return f"{h.comm} (pid {h.pid}, fd {h.fd}" + (f", vm {vm})" if vm else ")")


class PcapJourneys:
    """--pcap: the frame of each journey as first seen."""

    def __init__(self, path: str, offset_ns: int):
        from .errors import UsageError
        from .sinks.pcap import PcapSink

        try:
            self._pcap = PcapSink(path)
        except OSError as err:
            raise UsageError(f"cannot write --pcap {path}: {err.strerror}") from None
        self._offset = offset_ns

    def journey(self, j: Journey) -> None:
        self._pcap.write_frame(j.first_ns + self._offset, j.frame, j.frame_len)

    def summary(self, s: FollowSummary) -> None:
        pass

    def close(self) -> None:
        self._pcap.close()


@dataclass
class FollowSession:
    config: FollowConfig
    program: LoadedProgram
    devices: DeviceTable
    namer: Namer
    sinks: list[Sink]
    stop: threading.Event
    recorder: Optional[Recorder] = None
    on_journey: Optional[Callable[[Journey], None]] = None
    features: Optional[Features] = None
    summary: Optional[FollowSummary] = field(default=None)

    def describe(self) -> str:
        n = len(self.devices.namespaces)
        return f"{n} network namespace{'s' if n != 1 else ''}"

    def guest(self) -> str:
        """'52:54:00:… (vm web1)' for the header."""
        return self.config.mac + (f" (vm {self.config.vm})" if self.config.vm else "")

    def run(self) -> FollowSummary:
        self.summary = run_follow(self.config, self.program, self.devices, self.namer, self.sinks, self.stop,
                                  recorder=self.recorder, on_journey=self.on_journey)
        return self.summary


def open_follow_program(features: Features, config: FollowConfig,
                        say: Callable[[str], None] = say_note) -> LoadedProgram:
    """follow's BPF program through the loader chain (features.open_with_fallback): libbpf's
    precompiled tp_btf object where features chose it, else (or when this kernel refuses it) bcc.
    `say` gets the chain's note when it falls back (doctor collects it)."""
    from .features import open_with_fallback
    from .loader import FollowProgram

    def libbpf() -> LoadedProgram:
        from .libbpf_loader import TRIPS_ENV, LibbpfFollowProgram

        return LibbpfFollowProgram(features, config.mac, config.ringbuf_pages,
                                   kernel_trips=os.environ.get(TRIPS_ENV, "on") != "off", learn=config.learn_ips)

    def bcc() -> LoadedProgram:
        from .features import require

        require(features, "bcc")
        return FollowProgram(features, config.mac, config.ringbuf_pages, learn=config.learn_ips)

    return open_with_fallback("bpf/follow.c", features, features.follow_loader, features.follow_loader_why,
                              {"libbpf": libbpf, "bcc": bcc}, say=say)


@contextmanager
def follow_session(config: FollowConfig, *, console: Optional[Console] = None,
                   stop: Optional[threading.Event] = None, sinks: Optional[list[Sink]] = None,
                   on_journey: Optional[Callable[[Journey], None]] = None,
                   vms: Optional[VmInventory] = None) -> Iterator[FollowSession]:
    """Everything follow needs, loaded and attached; leaving the block detaches and closes it all."""
    from .features import require
    from .snapshot import machine_devices
    from .taps import find_tap_holders
    from .vms import read_domains, vm_of_mac

    features = machine_features()
    require(features, features.follow_loader)
    vms = read_domains() if vms is None else vms
    offset = wall_offset_ns()
    if sinks is None:
        sinks = [JsonLinesSink(sys.stdout, offset) if config.json
                 else TerminalSink(console or make_console(), offset)]
    with ExitStack() as stack:
        devices = DeviceTable(machine_devices)
        if not config.vm:
            taps = [(d.netns, d.name, d.mac) for d in devices.all() if d.is_tap]
            config = replace(config, vm=vm_of_mac(vms, config.mac, taps, find_tap_holders()))
        namer = make_namer(features, vms)
        if config.pcap:
            sinks = sinks + [PcapJourneys(config.pcap, offset)]
        recorder = Recorder(open(config.record, "w"), config, devices) if config.record else None
        for tap in guest_taps(devices.all(), config.mac):
            # Who reads the guest's taps, found now: /proc is walked once, before the first
            # journey needs it, and not while the ring buffer fills under a flood of frames.
            namer.tap_reader(tap.netns, tap.name)
        program = stack.enter_context(open_follow_program(features, config))
        if hasattr(program, "nf_chain"):  # the netfilter hop's chains (libbpf only)
            namer = replace(namer, nf_chain=program.nf_chain)
        yield FollowSession(config, program, devices, namer, sinks, stop or threading.Event(), recorder,
                            on_journey, features)
