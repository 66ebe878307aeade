"""Which BPF programs, links and maps a process holds, and whether they are gone after it is.

A process holds BPF objects through fds (/proc/PID/fdinfo names the prog_id, link_id or map_id
behind each). A program also holds the maps it uses (bpftool's map_ids), and a link its program,
so what a process keeps alive is its fds' objects plus those. After the process ends the kernel
frees them a moment later (links at fd close, programs and maps after an RCU grace period and a
workqueue), so "gone" is waited for on a condition, never a fixed sleep. An id is never handed
out again soon (the kernel's idr allocates cyclically), so an id still listed after the process
died is that same object: left behind, unless a live process holds it.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

KINDS = ("prog", "link", "map")
_FDINFO_KEY = {"prog_id": "prog", "link_id": "link", "map_id": "map"}


@dataclass
class Held:
    """BPF object ids by kind."""

    prog: set[int] = field(default_factory=set)
    link: set[int] = field(default_factory=set)
    map: set[int] = field(default_factory=set)

    def of(self, kind: str) -> set[int]:
        return getattr(self, kind)

    def merge(self, other: Held) -> None:
        for k in KINDS:
            self.of(k).update(other.of(k))

    def empty(self) -> bool:
        return not any(self.of(k) for k in KINDS)

    def as_dict(self) -> dict[str, list[int]]:
        return {k: sorted(self.of(k)) for k in KINDS}

    def count(self) -> int:
        return sum(len(self.of(k)) for k in KINDS)


def parse_fdinfo(text: str) -> Optional[tuple[str, int]]:
    """(kind, id) of the BPF object behind one /proc/PID/fdinfo/N, or None for another fd.
    A link's fdinfo also names its program (prog_id): the link_id line decides."""
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in _FDINFO_KEY:
            try:
                found[key] = int(value.split()[0])
            except (ValueError, IndexError):
                continue
    for key in ("link_id", "map_id", "prog_id"):
        if key in found:
            return _FDINFO_KEY[key], found[key]
    return None


def held_by(pid: int) -> Held:
    """The BPF objects pid holds fds to (without what they hold in turn)."""
    held = Held()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    try:
        entries = list(fdinfo.iterdir())
    except OSError:
        return held
    for entry in entries:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{entry.name}")
            if not target.startswith("anon_inode:bpf"):
                continue
            hit = parse_fdinfo(entry.read_text())
        except OSError:
            continue  # closed while we looked
        if hit:
            held.of(hit[0]).add(hit[1])
    return held


def listed() -> dict[str, list[dict]]:
    """bpftool's lists of every loaded program, link and map (JSON)."""
    out = {}
    for kind in KINDS:
        r = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True)
        try:
            out[kind] = json.loads(r.stdout or "[]")
        except json.JSONDecodeError:
            out[kind] = []
    return out


def closure(held: Held, lists: dict[str, list[dict]]) -> Held:
    """held plus what it keeps alive: a link's program, a program's maps."""
    out = Held(set(held.prog), set(held.link), set(held.map))
    for link in lists.get("link", []):
        if link.get("id") in out.link and link.get("prog_id"):
            out.prog.add(link["prog_id"])
    for prog in lists.get("prog", []):
        if prog.get("id") in out.prog:
            out.map.update(prog.get("map_ids", []))
    return out


def still_listed(ids: Held, lists: dict[str, list[dict]]) -> Held:
    present = Held()
    for kind in KINDS:
        ids_now = {o.get("id") for o in lists.get(kind, [])}
        present.of(kind).update(ids.of(kind) & ids_now)
    return present


def live_holders(ids: Held, lists: dict[str, list[dict]],
                 pids: Optional[Iterable[int]] = None) -> dict[str, dict[int, int]]:
    """For each id in ids: a live pid that keeps it (directly or through a link/program it holds)."""
    out: dict[str, dict[int, int]] = {k: {} for k in KINDS}
    if ids.empty():
        return out
    for pid in pids if pids is not None else _pids():
        kept = closure(held_by(pid), lists)
        for kind in KINDS:
            for i in ids.of(kind) & kept.of(kind):
                out[kind].setdefault(i, pid)
    return out


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


@dataclass
class GoneCheck:
    """After a process ended: its objects gone, or each one still there held by whom."""

    held: dict[str, list[int]]
    left: dict[str, list[int]]  # still listed at the deadline and held by no live process
    kept_by_live: dict[str, dict[int, int]]
    seconds: float

    @property
    def ok(self) -> bool:
        return not any(self.left.values())


def wait_gone(ids: Held, timeout: float = 60.0) -> GoneCheck:
    """Wait (on the condition, up to timeout) until none of ids is listed; then name what is left
    and whether a live process keeps it."""
    t0 = time.monotonic()
    lists = listed()
    while True:
        present = still_listed(ids, lists)
        if present.empty() or time.monotonic() - t0 > timeout:
            break
        time.sleep(0.2)
        lists = listed()
    kept = live_holders(present, lists)
    left = {k: sorted(present.of(k) - set(kept[k])) for k in KINDS}
    return GoneCheck(ids.as_dict(), left, {k: v for k, v in kept.items() if v}, time.monotonic() - t0)
