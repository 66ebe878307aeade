"""The HTTP(S) endpoint: /metrics from one registry holding only the exporter's collector."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prometheus_client import CollectorRegistry, start_http_server

from ..errors import UsageError

DEFAULT_LISTEN = "127.0.0.1:9477"


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


@dataclass(frozen=True)
class Tls:
    certfile: str
    keyfile: str


class MetricsServer:
    """Serves until close(); a registry without the default process/platform collectors, so a
    scrape shows only what tapttrace measures."""

    def __init__(self, collector, listen: Listen, tls: Optional[Tls] = None):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        kw: dict[str, Any] = {"certfile": tls.certfile, "keyfile": tls.keyfile} if tls else {}
        try:
            self._httpd, self._thread = start_http_server(listen.port, listen.host, self.registry, **kw)
        except OSError as err:
            raise UsageError(f"cannot listen on {listen.host}:{listen.port}: {err.strerror or err}") from None
        self.port = self._httpd.server_address[1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
