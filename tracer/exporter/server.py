"""The HTTP(S) endpoint: /metrics from one registry holding only the exporter's collector, behind
the TLS and basic auth of --web.config.file (webconfig.py, auth.py)."""
from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Optional
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from ..errors import UsageError
from .auth import BasicAuth
from .webconfig import Tls, WebConfig

DEFAULT_LISTEN = "127.0.0.1:9477"
# A client gets this long for its TLS handshake, and then for each read of its request: one that
# connects and sends nothing holds a thread for that long, never the server.
CLIENT_TIMEOUT_S = 30.0

__all__ = ["DEFAULT_LISTEN", "Listen", "MetricsServer", "Tls", "WebConfig"]


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Listen":
        """ADDR:PORT, [V6ADDR]:PORT or :PORT (all addresses); port 0 picks a free one (tests)."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise UsageError(f"--listen {text!r}: expected ADDR:PORT, e.g. {DEFAULT_LISTEN}")
        host = host.strip("[]") or "0.0.0.0"
        return cls(host, int(port))


class _QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_S

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # one line per scrape on stderr would bury the exporter's own messages


class _Server(ThreadingWSGIServer):
    """prometheus_client's threading WSGI server, but the TLS handshake happens in the request's
    own thread: prometheus_client wraps the listening socket, so accept() does the handshake and
    one client that connects and stays silent stops every scrape."""

    tls: Optional[ssl.SSLContext] = None

    def finish_request(self, request, client_address) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(CLIENT_TIMEOUT_S)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # no certificate, a wrong one, plain HTTP, or a timeout: nothing to answer
        try:
            super().finish_request(conn, client_address)
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


class MetricsServer:
    """Bound at construction, serving from start() until close(). Binding and serving are apart so
    the exporter can drop its capabilities in between, before any thread exists. A registry
    without the default process/platform collectors: a scrape shows only what tapttrace measures."""

    def __init__(self, collector, listen: Listen, web: Optional[WebConfig] = None):
        web = web or WebConfig()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.auth = BasicAuth(web.users) if web.users else None
        app = make_wsgi_app(self.registry)
        if self.auth is not None:
            app = self.auth.wrap(app)
        tls = web.tls.context() if web.tls else None  # before binding: a bad file is one line, no socket

        class Server(_Server):
            pass

        Server.address_family = _family(listen)
        Server.tls = tls
        try:
            self._httpd = make_server(listen.host, listen.port, app, Server, handler_class=_QuietHandler)
        except OSError as err:
            raise UsageError(f"cannot listen on {listen.host}:{listen.port}: {err.strerror or err}") from None
        self.port = self._httpd.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "MetricsServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(SHUTDOWN_POLL_S,),
                                        name="tapttrace-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()  # waits for serve_forever to return: only when it runs
        self._httpd.server_close()


# How often serve_forever looks whether close() asked it to stop. The programs are detached only
# after the server has stopped (a scrape reads their maps): with socketserver's default of 0.5 s,
# Ctrl-C took 0.3-0.4 s to detach (bench/RESULTS.md); a wake-up every 50 ms costs nothing measurable.
SHUTDOWN_POLL_S = 0.05


def _family(listen: Listen) -> socket.AddressFamily:
    try:
        infos = socket.getaddrinfo(listen.host or None, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UsageError(f"cannot listen on {listen.host}:{listen.port}: {err.strerror or err}") from None
    return infos[0][0]
