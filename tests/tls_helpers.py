"""Throwaway certificates made with openssl at test time: a CA, a server certificate for
127.0.0.1 and a client certificate, in a temporary directory removed on every exit path."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

# P-256 keys: made in milliseconds where RSA takes a noticeable part of a second on a busy machine.
KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _signed(d: Path, name: str, subject: str, ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    extfile.write_text(ext + "\n")
    _openssl("req", *KEY, "-keyout", str(key), "-out", str(csr), "-subj", subject)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
             "-CAcreateserial", "-days", "1", "-out", str(cert), "-extfile", str(extfile))
    return cert, key


@contextmanager
def certificates() -> Iterator[Certs]:
    if not shutil.which("openssl"):
        pytest.skip("needs openssl to make test certificates (apt-get install openssl)")
    with tempfile.TemporaryDirectory(prefix=f"txcerts-{os.getpid()}-") as tmp:
        d = Path(tmp)
        _openssl("req", "-x509", *KEY, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", "1",
                 "-subj", "/CN=tapttrace test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        server = _signed(d, "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")
        client = _signed(d, "client", "/CN=prometheus", "extendedKeyUsage=clientAuth")
        yield Certs(d, d / "ca.crt", *server, *client)
