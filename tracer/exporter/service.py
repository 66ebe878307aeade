"""Wiring: features -> BPF program -> collector -> HTTP server, with a refresher thread.
Leaving the context detaches every program and stops the server, on every exit path."""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from .. import __version__
from ..errors import say_note
from .collector import ExporterCollector, Filters
from .labels import Inventory, Namer
from .maps import CounterProgram
from .server import Listen, MetricsServer
from .webconfig import WebConfig

if TYPE_CHECKING:
    from ..features import Features


@dataclass(frozen=True)
class ExporterConfig:
    listen: Listen = Listen("127.0.0.1", 9477)
    filters: Filters = Filters()
    web: WebConfig = WebConfig()  # TLS and basic auth (--web.config.file, --tls-cert/--tls-key)
    refresh_seconds: float = 5.0
    max_series: int = 2000  # per metric family
    max_kernel_series: int = 16384  # per kernel counter map
    libvirt_uri: Optional[str] = None  # None: the default URI when a daemon answers there
    # Keep only privileges.KEEP once attached and bound. Off unless asked (the command asks): it
    # can't be undone, and a test's exporter runs inside the test process.
    drop_capabilities: bool = False


def machine_inventory(libvirt_uri: Optional[str] = None) -> Inventory:
    """Every namespace's devices from netlink, and VM names: libvirt's domains, else the taps' holders."""
    from ..netns import root_netns
    from ..snapshot import machine_devices
    from ..taps import find_tap_holders
    from ..vms import read_domains, tap_vm_names

    names, devices = machine_devices()
    vms = tap_vm_names(read_domains(libvirt_uri), find_tap_holders(), root_netns().inode)
    return Inventory.build(names, devices, vms)


def kernel_namer(features, *, read_now: bool = False) -> Namer:
    from ..kallsyms import Kallsyms

    ksyms = Kallsyms.load()
    if read_now:
        len(ksyms)  # read the table while CAP_SYSLOG still shows the addresses (privileges.py)

    def symbol(addr: int) -> str:
        hit = ksyms.lookup(addr)
        return hit[0].name if hit else ""

    return Namer(reason=lambda r: features.drop_reasons.get(r, f"unknown:{r}") if r else "NOT_SPECIFIED",
                 symbol=symbol)


def open_program(features: Features, max_series: int = 16384,
                 say: Callable[[str], None] = say_note) -> CounterProgram:
    """The exporter's BPF program (bpf/exporter.c), loaded and attached by the loader features chose
    (features.choose_exporter_loader; TAPTTRACE_EXPORTER_LOADER forces one); either way the same
    maps, read by the same code (maps.ExporterMaps). The libbpf path never imports bcc. `say` gets
    the chain's note when it falls back (doctor collects it)."""
    from ..features import open_with_fallback, require

    def libbpf() -> CounterProgram:
        from .program_btf import LibbpfExporterProgram

        return LibbpfExporterProgram(features, max_series=max_series)

    def bcc() -> CounterProgram:
        from .program import ExporterProgram

        require(features, "bcc")
        return ExporterProgram(features, max_series=max_series)

    # bcc builds the same source and fills the same maps: only start time and memory differ.
    return open_with_fallback("bpf/exporter.c", features, features.exporter_loader,
                              features.exporter_loader_why, {"libbpf": libbpf, "bcc": bcc}, say=say, lost="")


def _stop_refresher(stop: threading.Event, refresher: threading.Thread) -> None:
    stop.set()
    refresher.join(REFRESHER_JOIN_S)


REFRESHER_JOIN_S = 5.0  # a refresh reads netlink and /proc for every namespace: normally milliseconds


@dataclass
class ExporterSession:
    collector: ExporterCollector
    server: Optional[MetricsServer]
    program: CounterProgram
    capabilities: Optional[tuple[str, ...]] = None  # what was kept, when they were dropped


@contextmanager
def exporter_session(config: ExporterConfig, *, serve: bool = True) -> Iterator[ExporterSession]:
    from ..features import require
    from ..runtime import machine_features
    from ..vms import read_domains

    if config.libvirt_uri is not None:
        read_domains(config.libvirt_uri)  # an explicit --connect must answer now, not at a later refresh
    features = machine_features()
    require(features, features.exporter_loader)
    stop = threading.Event()
    with ExitStack() as stack:
        program = stack.enter_context(open_program(features, max_series=config.max_kernel_series))
        collector = ExporterCollector(program, kernel_namer(features, read_now=config.drop_capabilities),
                                      lambda: machine_inventory(config.libvirt_uri),
                                      filters=config.filters, max_series=config.max_series,
                                      build={"version": __version__, "kernel": os.uname().release})
        collector.refresh()
        server = None
        if serve:
            server = MetricsServer(collector, config.listen, config.web)
            stack.callback(server.close)
        kept = None
        if config.drop_capabilities:
            from .privileges import drop_capabilities

            kept = drop_capabilities()  # attached and bound; no thread started yet (capabilities are per thread)
        refresher = collector.run_refresher(stop, config.refresh_seconds)
        # Before the program closes (the stack unwinds backwards): a refresh still reading its maps
        # then would fail on closed fds and print a traceback at every other Ctrl-C.
        stack.callback(_stop_refresher, stop, refresher)
        if server is not None:
            server.start()
        yield ExporterSession(collector, server, program, kept)
