"""HTTP basic auth against bcrypt hashes, as exporter-toolkit checks `basic_auth_users`.

bcrypt is slow on purpose (≈ 50 ms at cost 10), and Prometheus sends the same credentials at
every scrape, so the outcome of a check is cached per (user, hash, password), as the toolkit does;
the cache is keyed by an HMAC under a key made at start, so it holds no password. Checks that
miss the cache run one at a time (the toolkit's bcrypt mutex): a flood of wrong passwords costs
one core, not all of them. An unknown user is checked against a hash of the same cost made at
start, so the time a refusal takes does not tell which users exist.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Callable, Optional

REALM = "tapttrace"
CACHE_SIZE = 100  # distinct (user, password) pairs remembered; the toolkit keeps as many

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


class BasicAuth:
    def __init__(self, users: Mapping[str, str]):
        import bcrypt

        self._bcrypt = bcrypt
        self._users = {u.encode(): h.encode() for u, h in users.items()}
        cost = max((int(h[4:6]) for h in users.values()), default=10)
        self._dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(rounds=cost))
        self._key = os.urandom(32)
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()
        self.bcrypt_checks = 0  # checks that missed the cache (tests see the cache work through it)

    def allows(self, authorization: Optional[str]) -> bool:
        """Whether an Authorization header value names a user with the right password."""
        creds = parse_basic(authorization)
        if creds is None:
            return False
        user, password = creds
        hashed = self._users.get(user)
        known = hashed is not None
        if hashed is None:
            hashed = self._dummy
        key = hmac.new(self._key, b"\0".join(x.hex().encode() for x in (user, hashed, password)),
                       hashlib.sha256).digest()
        with self._cache_lock:
            ok = self._cache.get(key)
            if ok is not None:
                self._cache.move_to_end(key)
        if ok is None:
            with self._bcrypt_lock:
                self.bcrypt_checks += 1
                try:
                    ok = self._bcrypt.checkpw(password, hashed)  # compares in constant time
                except ValueError:  # a password bcrypt refuses (over 72 bytes, or a NUL byte)
                    ok = False
            with self._cache_lock:
                self._cache[key] = ok
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return known and ok

    def wrap(self, app: WsgiApp) -> WsgiApp:
        """A WSGI app that answers 401 with a Basic challenge unless the request carries good credentials."""
        def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
            if self.allows(environ.get("HTTP_AUTHORIZATION")):
                return app(environ, start_response)
            start_response("401 Unauthorized", [("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),
                                                ("Content-Type", "text/plain; charset=utf-8")])
            return [b"Unauthorized\n"]
        return guarded


def parse_basic(authorization: Optional[str]) -> Optional[tuple[bytes, bytes]]:
    """(user, password) from "Basic base64(user:password)", None for anything else."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        # WSGI hands headers over as latin-1 str; the token itself is ASCII.
        raw = base64.b64decode(token.strip().encode("latin-1"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    return user, password
