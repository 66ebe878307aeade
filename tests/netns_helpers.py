"""Namespaces for the snapshot and tap tests (shared by both files)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import netns as pr_netns

from tracer.netns import Netns, resolve_netns


@contextmanager
def lab_namespaces(*suffixes: str) -> Iterator[list[Netns]]:
    """Named namespaces ttsnap-<pid>-<suffix>, removed on every exit path."""
    made = []
    try:
        for suffix in suffixes:
            name = f"ttsnap-{os.getpid()}-{suffix}"
            pr_netns.create(name)
            made.append(name)
        yield [resolve_netns(n) for n in made]
    finally:
        for name in made:
            try:
                pr_netns.remove(name)
            except OSError:
                pass
