"""`tapttrace exporter`: registered in tracer/cli.py with main.add_command(exporter_command)."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

import click

from ..errors import TapttraceError, UsageError
from .collector import Filters
from .server import DEFAULT_LISTEN, Listen, Tls
from .service import ExporterConfig, exporter_session


@click.command("exporter")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="ADDR:PORT",
              help="Where to serve /metrics. Loopback by default: use 0.0.0.0:PORT (with --tls-cert or "
                   "behind an authenticating proxy) to let a remote Prometheus scrape.")
@click.option("--netns", "netns", multiple=True, metavar="NAME",
              help="Only count in this network namespace ('root', a name from `ip netns list`). Repeatable.")
@click.option("--bridge", "bridges", multiple=True, metavar="NAME", help="Only count this bridge. Repeatable.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False),
              help="Serve HTTPS with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="The certificate's private key (PEM).")
@click.option("--refresh", "refresh_seconds", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, metavar="S", help="Re-read devices (VMs starting and stopping) every S seconds.")
@click.option("--max-series", type=int, default=2000, show_default=True, metavar="N",
              help="Series per metric family; more are added into one series labelled _overflow.")
@click.option("--connect", "libvirt_uri", metavar="URI",
              help="libvirt URI whose domains name the taps' `vm` label (default: qemu:///system when it "
                   "answers; without libvirt, qemu's -name or the command holding the tap).")
def exporter_command(listen: str, netns: tuple[str, ...], bridges: tuple[str, ...], tls_cert: Optional[str],
                     tls_key: Optional[str], refresh_seconds: float, max_series: int,
                     libvirt_uri: Optional[str]) -> None:
    """Count every bridge's forwarding verdicts, drops, tap delivery and FDB changes in the kernel;
    serve them to Prometheus."""
    try:
        tls = None
        if tls_cert or tls_key:
            if not (tls_cert and tls_key):
                raise UsageError("--tls-cert and --tls-key go together")
            tls = Tls(tls_cert, tls_key)
        config = ExporterConfig(listen=Listen.parse(listen), filters=Filters(frozenset(netns), frozenset(bridges)),
                                tls=tls,
                                refresh_seconds=refresh_seconds, max_series=max_series, libvirt_uri=libvirt_uri)
        stop = threading.Event()
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, lambda *_: stop.set())
        with exporter_session(config) as session:
            if session.server is None:
                raise RuntimeError("exporter_session(serve=True) started no server")
            scheme = "https" if config.tls else "http"
            click.echo(f"tapttrace exporter: serving {scheme}://{config.listen.host}:{session.server.port}/metrics",
                       err=True)
            while not stop.wait(3600):
                pass
        click.echo("tapttrace exporter: stopped, programs detached", err=True)
    except TapttraceError as err:
        click.echo(f"tapttrace: {err.message}", err=True)
        sys.exit(err.exit_code)


def main() -> None:  # python -m tracer.exporter
    exporter_command()
