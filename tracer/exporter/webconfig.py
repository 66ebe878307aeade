"""`--web.config.file`: TLS and basic auth as every Prometheus exporter configures them.

The file is the one of Prometheus' exporter-toolkit (the same keys, the same meaning), so one
file and one habit serve node_exporter and tapttrace alike:

    tls_server_config:
      cert_file: server.crt            # relative paths are relative to the file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional: mutual TLS
      client_ca_file: clients-ca.crt
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...            # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':')

tapttrace takes the part that matters for a scrape endpoint; a key it does not take is refused
with one line naming it, as the toolkit refuses the keys it does not know. The file is read once,
at start (the toolkit re-reads it at each request): restart the exporter to apply a change.
"""
from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import UsageError

FLAG = "--web.config.file"

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# The toolkit's client_auth_type words that Python's ssl module can honour. Its RequestClientCert and
# RequireAnyClientCert ask for a certificate without verifying it, which OpenSSL through Python
# cannot do (a certificate that is asked for is verified).
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
TOP_KEYS = {"tls_server_config", "basic_auth_users"}
TOP_UNSUPPORTED = {"http_server_config", "rate_limit"}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}
TLS_UNSUPPORTED = {"cert", "key", "client_ca", "cipher_suites", "curve_preferences", "prefer_server_cipher_suites",
                   "client_allowed_sans"}
# What the toolkit's bcrypt.Cost() accepts and Python's bcrypt checks: $2a$, $2b$ or $2y$, a cost
# of 04-31, 22 characters of salt and 31 of hash.
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")


@dataclass(frozen=True)
class Tls:
    """tls_server_config: a certificate and key, optionally a CA to verify clients by."""

    certfile: str
    keyfile: str
    client_auth: str = "NoClientCert"
    client_ca_file: Optional[str] = None
    min_version: str = "TLS12"  # the toolkit's defaults
    max_version: str = "TLS13"

    def context(self) -> ssl.SSLContext:
        """A server context; reads the files now, so a bad one fails at start with one line."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[self.min_version]
        ctx.maximum_version = TLS_VERSIONS[self.max_version]
        try:
            ctx.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as err:
            raise UsageError(f"{FLAG}: cannot load cert_file {self.certfile} with key_file {self.keyfile}: "
                             f"{_why(err)}") from None
        if self.client_ca_file:
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as err:
                raise UsageError(f"{FLAG}: cannot load client_ca_file {self.client_ca_file}: {_why(err)}") from None
        ctx.verify_mode = CLIENT_AUTH[self.client_auth]
        return ctx


@dataclass(frozen=True)
class WebConfig:
    tls: Optional[Tls] = None
    users: Mapping[str, str] = field(default_factory=dict)  # user -> bcrypt hash


def load_web_config(path: str) -> WebConfig:
    """Read and check the file; every problem is a UsageError of one line."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise UsageError(f"{FLAG} {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{FLAG} {path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{FLAG} {path}: not valid YAML{where}: {problem}") from None
    return parse_web_config(data, os.path.dirname(os.path.abspath(path)), path)


def parse_web_config(data: Any, base_dir: str, name: str = "web config") -> WebConfig:
    """The checked configuration from the file's parsed YAML (None: an empty file, plain HTTP)."""
    where = f"{FLAG} {name}"
    if data is None:
        return WebConfig()
    top = _mapping(data, where, "the file")
    _known(top, TOP_KEYS, TOP_UNSUPPORTED, where, "")
    tls = _tls(top.get("tls_server_config"), base_dir, where)
    users = _users(top.get("basic_auth_users"), where)
    return WebConfig(tls, users)


def _tls(data: Any, base_dir: str, where: str) -> Optional[Tls]:
    if data is None:
        return None
    tls = _mapping(data, where, "tls_server_config")
    _known(tls, TLS_KEYS, TLS_UNSUPPORTED, where, "tls_server_config.")
    values = {k: _string(v, where, f"tls_server_config.{k}") for k, v in tls.items() if v is not None}
    values = {k: v for k, v in values.items() if v != ""}  # "" is unset, as in the toolkit
    if not values:
        return None  # the toolkit's "TLS config is not present": plain HTTP
    for key in ("cert_file", "key_file"):
        if key not in values:
            raise UsageError(f"{where}: tls_server_config needs {key}")
    auth = values.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        if auth in ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert"):
            raise UsageError(f"{where}: client_auth_type {auth} is not supported by tapttrace (use "
                             "VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file)")
        raise UsageError(f"{where}: invalid client_auth_type {auth!r} (one of: {', '.join(CLIENT_AUTH)})")
    ca = values.get("client_ca_file")
    if ca and auth == "NoClientCert":
        raise UsageError(f"{where}: client_ca_file is set but client_auth_type is NoClientCert "
                         "(set client_auth_type: RequireAndVerifyClientCert)")
    if auth != "NoClientCert" and not ca:
        raise UsageError(f"{where}: client_auth_type {auth} needs client_ca_file (the CA clients' certificates "
                         "are verified by)")
    versions = {}
    for key in ("min_version", "max_version"):
        v = values.get(key, Tls.min_version if key == "min_version" else Tls.max_version)
        if v not in TLS_VERSIONS:
            raise UsageError(f"{where}: invalid {key} {v!r} (one of: {', '.join(TLS_VERSIONS)})")
        versions[key] = v
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        raise UsageError(f"{where}: min_version {versions['min_version']} is above max_version "
                         f"{versions['max_version']}")

    def path(p: str) -> str:  # relative to the file's directory, as the toolkit's SetDirectory does
        return os.path.join(base_dir, p)

    return Tls(path(values["cert_file"]), path(values["key_file"]), auth, path(ca) if ca else None, **versions)


def _users(data: Any, where: str) -> dict[str, str]:
    if data is None:
        return {}
    users = _mapping(data, where, "basic_auth_users")
    out = {}
    for user, hashed in users.items():
        if not isinstance(user, str) or not user:
            raise UsageError(f"{where}: basic_auth_users: a user name must be a non-empty string, not {user!r}")
        if ":" in user:
            raise UsageError(f"{where}: basic_auth_users: user {user!r}: basic auth cannot carry a ':' in a user name")
        if not isinstance(hashed, str) or not BCRYPT_HASH.match(hashed):
            raise UsageError(f"{where}: basic_auth_users: user {user!r}: not a bcrypt hash (make one with "
                             "htpasswd -nBC 10 \"\" | tr -d ':')")
        out[user] = hashed
    return out


def _mapping(data: Any, where: str, what: str) -> dict:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: {what} must be a mapping of keys to values, not {type(data).__name__}")
    return data


def _known(data: dict, known: set[str], unsupported: set[str], where: str, prefix: str) -> None:
    for key in data:
        if key in unsupported:
            raise UsageError(f"{where}: {prefix}{key} is not supported by tapttrace (it takes: "
                             f"{', '.join(prefix + k for k in sorted(known))})")
        if key not in known:
            names = ", ".join(prefix + k for k in sorted(known))
            raise UsageError(f"{where}: unknown key {prefix}{key} (known: {names})")


def _string(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{where}: {key} must be a string, not {value!r}")
    return value


def _why(err: Exception) -> str:
    if isinstance(err, ssl.SSLError):
        return err.reason or str(err)
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return str(err)
