"""`tapttrace exporter`: imported by tracer/cli.py's command group when asked for (_Commands)."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

import click

from ..errors import TapttraceError, UsageError, say_note
from .collector import Filters
from .server import DEFAULT_LISTEN, Listen
from .service import ExporterConfig, exporter_session
from .webconfig import Tls, WebConfig, load_web_config


@click.command("exporter")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="ADDR:PORT",
              help="Where to serve /metrics. Loopback by default: use 0.0.0.0:PORT (with --web.config.file "
                   "or behind an authenticating proxy) to let a remote Prometheus scrape.")
@click.option("--web.config.file", "web_config_file", metavar="FILE",
              help="TLS and basic auth, in the file format of Prometheus' exporter-toolkit "
                   "(tls_server_config, basic_auth_users with bcrypt hashes); docs/exporter.md.")
@click.option("--netns", "netns", multiple=True, metavar="NAME",
              help="Only count in this network namespace ('root', a name from `ip netns list`). Repeatable.")
@click.option("--bridge", "bridges", multiple=True, metavar="NAME", help="Only count this bridge. Repeatable.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False),
              help="Serve HTTPS with this certificate (PEM); --web.config.file does this and more.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="The certificate's private key (PEM).")
@click.option("--refresh", "refresh_seconds", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, metavar="S", help="Re-read devices (VMs starting and stopping) every S seconds.")
@click.option("--max-series", type=int, default=2000, show_default=True, metavar="N",
              help="Series per metric family; more are added into one series labelled _overflow.")
@click.option("--connect", "libvirt_uri", metavar="URI",
              help="libvirt URI whose domains name the taps' `vm` label (default: qemu:///system when it "
                   "answers; without libvirt, qemu's -name or the command holding the tap).")
@click.option("--drop-capabilities/--no-drop-capabilities", default=True, show_default=True,
              help="Once attached and listening, keep only the capabilities refreshes need "
                   "(docs/exporter.md, Capabilities).")
def exporter_command(listen: str, web_config_file: Optional[str], netns: tuple[str, ...], bridges: tuple[str, ...],
                     tls_cert: Optional[str], tls_key: Optional[str], refresh_seconds: float, max_series: int,
                     libvirt_uri: Optional[str], drop_capabilities: bool) -> None:
    """Count every bridge's forwarding verdicts, drops, tap delivery and FDB changes in the kernel;
    serve them to Prometheus."""
    try:
        config = ExporterConfig(listen=Listen.parse(listen), filters=Filters(frozenset(netns), frozenset(bridges)),
                                web=web_config(web_config_file, tls_cert, tls_key),
                                refresh_seconds=refresh_seconds, max_series=max_series, libvirt_uri=libvirt_uri,
                                drop_capabilities=drop_capabilities)
        stop = threading.Event()
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, lambda *_: stop.set())
        with exporter_session(config) as session:
            server = session.server
            if server is None:
                raise RuntimeError("exporter_session(serve=True) started no server")
            auth = f"; basic auth for {len(config.web.users)} user(s)" if config.web.users else ""
            click.echo(f"tapttrace exporter: serving {server.scheme}://{config.listen.host}:{server.port}/metrics{auth}",
                       err=True)
            if session.capabilities is not None:
                click.echo(f"tapttrace exporter: capabilities reduced to {', '.join(session.capabilities)}", err=True)
            while not stop.wait(3600):
                pass
        click.echo("tapttrace exporter: stopped, programs detached", err=True)
    except TapttraceError as err:
        click.echo(f"tapttrace: {err.message}", err=True)
        sys.exit(err.exit_code)


def web_config(path: Optional[str], tls_cert: Optional[str], tls_key: Optional[str]) -> WebConfig:
    """The file's TLS and users, or --tls-cert/--tls-key's TLS; checked before anything is loaded."""
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if path is not None and tls_cert:
        raise UsageError("--web.config.file and --tls-cert/--tls-key don't go together: put cert_file and "
                         "key_file under the file's tls_server_config")
    web = (load_web_config(path) if path is not None
           else WebConfig(Tls(tls_cert, tls_key) if tls_cert and tls_key else None))
    if web.tls is not None:
        web.tls.context()  # a certificate or key that won't load is one line now, not after attaching
    if web.users and web.tls is None:
        say_note("basic auth without TLS: passwords cross the network readable by anyone on the path "
                 "(set tls_server_config in the web config file)")
    return web


def main() -> None:  # python -m tracer.exporter
    exporter_command()
