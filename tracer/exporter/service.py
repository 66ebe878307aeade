"""Wiring: features -> BPF program -> collector -> HTTP server, with a refresher thread.
Leaving the context detaches every program and stops the server, on every exit path."""
from __future__ import annotations

import os
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

from .. import __version__
from .collector import ExporterCollector, Filters
from .labels import Inventory, Namer
from .server import Listen, MetricsServer, Tls


@dataclass(frozen=True)
class ExporterConfig:
    listen: Listen = Listen("127.0.0.1", 9477)
    filters: Filters = Filters()
    tls: Optional[Tls] = None
    refresh_seconds: float = 5.0
    max_series: int = 2000  # per metric family
    max_kernel_series: int = 16384  # per kernel counter map
    libvirt_uri: Optional[str] = None  # None: the default URI when a daemon answers there


def machine_inventory(libvirt_uri: Optional[str] = None) -> Inventory:
    """Every namespace's devices from netlink, and VM names: libvirt's domains, else the taps' holders."""
    from ..netns import root_netns
    from ..snapshot import machine_devices
    from ..taps import find_tap_holders
    from ..vms import read_domains, tap_vm_names

    names, devices = machine_devices()
    vms = tap_vm_names(read_domains(libvirt_uri), find_tap_holders(), root_netns().inode)
    return Inventory.build(names, devices, vms)


def kernel_namer(features) -> Namer:
    from ..kallsyms import Kallsyms

    ksyms = Kallsyms.load()

    def symbol(addr: int) -> str:
        hit = ksyms.lookup(addr)
        return hit[0].name if hit else ""

    return Namer(reason=lambda r: features.drop_reasons.get(r, f"unknown:{r}") if r else "NOT_SPECIFIED",
                 symbol=symbol)


def open_program(features, max_series: int = 16384):
    """The exporter's BPF program (bpf/exporter.c), loaded and attached by the loader features chose
    (features.choose_exporter_loader; TAPTTRACE_EXPORTER_LOADER forces one); either way the same
    maps, read by the same code (maps.ExporterMaps). The libbpf path never imports bcc."""
    from ..features import open_with_fallback, require

    def libbpf():
        from .program_btf import LibbpfExporterProgram

        return LibbpfExporterProgram(features, max_series=max_series)

    def bcc():
        from .program import ExporterProgram

        require(features, "bcc")
        return ExporterProgram(features, max_series=max_series)

    # bcc builds the same source and fills the same maps: only start time and memory differ.
    return open_with_fallback("bpf/exporter.c", features, features.exporter_loader,
                              features.exporter_loader_why, {"libbpf": libbpf, "bcc": bcc}, lost="")


def _stop_refresher(stop: threading.Event, refresher: threading.Thread) -> None:
    stop.set()
    refresher.join(REFRESHER_JOIN_S)


REFRESHER_JOIN_S = 5.0  # a refresh reads netlink and /proc for every namespace: normally milliseconds


@dataclass
class ExporterSession:
    collector: ExporterCollector
    server: Optional[MetricsServer]
    program: object


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
        collector = ExporterCollector(program, kernel_namer(features),
                                      lambda: machine_inventory(config.libvirt_uri),
                                      filters=config.filters, max_series=config.max_series,
                                      build={"version": __version__, "kernel": os.uname().release})
        collector.refresh()
        refresher = collector.run_refresher(stop, config.refresh_seconds)
        # Before the program closes (the stack unwinds backwards): a refresh still reading its maps
        # then would fail on closed fds and print a traceback at every other Ctrl-C.
        stack.callback(_stop_refresher, stop, refresher)
        server = None
        if serve:
            server = MetricsServer(collector, config.listen, config.tls)
            stack.callback(server.close)
        yield ExporterSession(collector, server, program)
