"""The one custom collector: at scrape time, read the kernel's counters and yield metric families.

Nothing is counted in user space per packet; a scrape sums the per-CPU maps, turns keys into
labels (labels.py) and caps the number of series per family. A refresh (periodic, from netlink)
tells the kernel which devices to watch and prunes the counters of devices gone for good.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Callable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .labels import OVERFLOW, Inventory, Namer, roles, vm_macs
from .maps import DECISIONS, FDB_EVENTS, HEALTH, PKT_TYPES, TAP_EVENTS, VERDICTS, CounterProgram, Counts

FRAME_LABELS = ("netns", "bridge", "in_port", "out_port", "verdict")
DROP_LABELS = ("netns", "dev", "reason", "location")
TAP_LABELS = ("netns", "tap", "vm", "event")
TAP_DROP_LABELS = ("netns", "tap", "vm", "reason")
FDB_LABELS = ("netns", "bridge", "port", "event")
DECISION_LABELS = ("netns", "bridge", "in_port", "decision", "pkt_type", "out_port")
TAP_INFO_LABELS = ("netns", "tap", "vm", "bridge")


@dataclass(frozen=True)
class Filters:
    netns: frozenset[str] = frozenset()  # namespace names (as `tapttrace follow --netns` takes them)
    bridges: frozenset[str] = frozenset()


class SeriesCap:
    """At most `limit` label sets per family; later ones are added into one overflow series.
    Admission is sticky so a series never flips between its own labels and the overflow."""

    def __init__(self, limit: int):
        self.limit = limit
        self.admitted: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        self.overflowed = 0  # label sets turned away, since start

    def add(self, family: str, into: dict[tuple[str, ...], float], labels: tuple[str, ...], value: float) -> None:
        seen = self.admitted[family]
        if labels not in seen:
            if len(seen) >= self.limit:
                self.overflowed += 1
                labels = (OVERFLOW,) * len(labels)
            else:
                seen.add(labels)
        # Label sets that collide (an ifindex reused by a new device of the same name) add up.
        into[labels] = into.get(labels, 0) + value

    def keep_only(self, family: str, alive: Iterable[tuple[str, ...]]) -> None:
        self.admitted[family] &= set(alive)


class ExporterCollector:
    def __init__(self, program: CounterProgram, namer: Namer, inventory: Callable[[], Inventory], *,
                 filters: Filters = Filters(), max_series: int = 2000, grace_refreshes: int = 2,
                 build: Optional[dict[str, str]] = None):
        self.program = program
        self.namer = namer
        self._inventory = inventory
        self.filters = filters
        self.cap = SeriesCap(max_series)
        self.grace = grace_refreshes
        self.build = build or {}
        self._lock = threading.Lock()
        self._gone: dict[tuple[int, int], int] = {}  # device key -> refreshes it has been absent
        self.refresh_errors = 0
        self.decode_errors = 0
        self.scrape_seconds = 0.0
        self.watched: dict[str, int] = {"bridge": 0, "port": 0, "tap": 0}
        self._taps: list = []
        self._identity: dict[tuple[int, int], tuple[str, str]] = {}  # (netns, ifindex) -> (netns name, name)

    # -- refresh ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the machine's devices; point the kernel at the ones to watch; prune the dead."""
        try:
            inv = self._inventory()
        except Exception:  # netlink/proc races while namespaces come and go: try again next time
            self.refresh_errors += 1
            return
        with self._lock:
            # Prune first: counts under a key whose identity changed belong to the old device.
            self._prune(inv)
            self.namer.update(inv)
            # _prune put every vanished device that still has counts in _gone: only they need names.
            self.namer.remember_only(self._gone)
            watched = inv.watched(set(self.filters.netns) or None, set(self.filters.bridges) or None)
            self.program.set_devices(roles(watched), vm_macs(d for d in watched if d.is_tap))
            self.watched = {"bridge": sum(d.is_bridge for d in watched),
                            "port": sum(d.master is not None for d in watched),
                            "tap": sum(d.is_tap for d in watched)}
            self._taps = sorted((d for d in watched if d.is_tap), key=lambda d: (d.netns, d.ifindex))
            # Vanished devices keep their identity until pruned, to recognise a reuse of their key.
            self._identity = {k: v for k, v in self._identity.items() if k in self._gone} | {
                k: (inv.netns_names.get(k[0], ""), d.name) for k, d in inv.devices.items()}

    def _prune(self, inv: Inventory) -> None:
        counts = self.program.read()
        seen = {(ns, i) for key in counts.verdicts for ns, i in ((key[0], key[1]), (key[0], key[2]), (key[0], key[3]))}
        seen |= {(k[0], k[1]) for k in list(counts.drops) + list(counts.taps)}
        seen |= {(k[0], i) for k in counts.fdb for i in (k[1], k[2])}
        seen |= {(k[0], i) for k in counts.decisions for i in (k[1], k[2], k[3])}
        reused = set()
        for key in seen:
            if not key[1]:
                continue
            if key not in inv.devices:
                self._gone[key] = self._gone.get(key, 0) + 1
            elif key in self._identity and self._identity[key] != (inv.netns_names.get(key[0], ""),
                                                                   inv.devices[key].name):
                # A namespace inode or ifindex reused by another namespace/device: the old
                # counts must not be reported under the new names.
                reused.add(key)
        for key in list(self._gone):
            if key in inv.devices and key not in reused:
                del self._gone[key]
        dead = {k for k, n in self._gone.items() if n > self.grace} | reused
        if not dead:
            return
        self.program.delete("verdicts",
                            [k for k in counts.verdicts if {(k[0], k[1]), (k[0], k[2]), (k[0], k[3])} & dead])
        self.program.delete("drops", [k for k in counts.drops if (k[0], k[1]) in dead])
        self.program.delete("taps", [k for k in counts.taps if (k[0], k[1]) in dead])
        self.program.delete("fdb", [k for k in counts.fdb if {(k[0], k[1]), (k[0], k[2])} & dead])
        self.program.delete("decisions", [k for k in counts.decisions
                                          if {(k[0], k[1]), (k[0], k[2]), (k[0], k[3])} & dead])
        for k in dead:
            self._gone.pop(k, None)
        self.namer.forget(dead, {ns for ns, _ in dead if ns not in inv.netns_names})

    def run_refresher(self, stop: threading.Event, interval: float) -> threading.Thread:
        trim = _malloc_trim()

        def loop() -> None:
            while not stop.wait(interval):
                self.refresh()
                # A refresh allocates and frees a few MB (netlink dumps of every namespace) in this
                # thread, i.e. in one of glibc's per-thread arenas, which hands freed pages back far
                # less readily than the main heap: RSS crept up ~1.7 MB a minute under VM churn
                # (soak/, docs/soak.md); with the trim it stays flat.
                trim()
        t = threading.Thread(target=loop, name="tapttrace-refresh", daemon=True)
        t.start()
        return t

    # -- scrape -------------------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: families are only known at scrape time

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        with self._lock:
            counts = self.program.read()
            families = self._families(counts)
        yield from families
        yield from self._health(counts)
        self.scrape_seconds = time.perf_counter() - start

    def _families(self, c: Counts) -> list[Metric]:
        n = self.namer
        frames: dict[tuple[str, ...], float] = {}
        for (ns, br, inp, outp, v), value in c.verdicts.items():
            if v not in VERDICTS:
                self.decode_errors += 1
                continue
            self.cap.add("frames", frames, (n.netns(ns), n.dev(ns, br), n.dev(ns, inp), n.dev(ns, outp),
                                            VERDICTS[v]), value)
        drops: dict[tuple[str, ...], float] = {}
        for (ns, ifindex, reason, loc), value in c.drops.items():
            self.cap.add("drops", drops, (n.netns(ns), n.dev(ns, ifindex), n.reason(reason), n.location(loc)), value)
        taps: dict[tuple[str, ...], float] = {}
        tap_drops: dict[tuple[str, ...], float] = {}
        for (ns, ifindex, event, reason), value in c.taps.items():
            if event not in TAP_EVENTS:
                self.decode_errors += 1
                continue
            base = (n.netns(ns), n.dev(ns, ifindex), n.vm(ns, ifindex))
            self.cap.add("tap_frames", taps, base + (TAP_EVENTS[event],), value)
            if TAP_EVENTS[event] == "dropped":
                self.cap.add("tap_drops", tap_drops, base + (n.reason(reason),), value)
        fdb: dict[tuple[str, ...], float] = {}
        for (ns, br, port, event), value in c.fdb.items():
            if event not in FDB_EVENTS:
                self.decode_errors += 1
                continue
            self.cap.add("fdb", fdb, (n.netns(ns), n.dev(ns, br), n.dev(ns, port), FDB_EVENTS[event]), value)
        decisions: dict[tuple[str, ...], float] = {}
        for (ns, br, inp, outp, decision, pkt_type), value in c.decisions.items():
            if decision not in DECISIONS or pkt_type not in PKT_TYPES:
                self.decode_errors += 1
                continue
            self.cap.add("decisions", decisions, (n.netns(ns), n.dev(ns, br), n.dev(ns, inp), DECISIONS[decision],
                                                  PKT_TYPES[pkt_type], n.dev(ns, outp)), value)
        info: dict[tuple[str, ...], float] = {}
        for d in self._taps:
            self.cap.add("tap_info", info, (n.netns(d.netns), d.name, n.inventory.vms.get((d.netns, d.name), ""),
                                            d.master_name if d.master is not None else ""), 1)
        for name, series in (("tap_info", info), ("frames", frames), ("drops", drops), ("tap_frames", taps),
                             ("tap_drops", tap_drops), ("fdb", fdb), ("decisions", decisions)):
            self.cap.keep_only(name, series)
        return [
            _gauge("tapttrace_tap_info", "One series per watched tap: its VM (when the holder is a named qemu) "
                   "and bridge (\"\" when outside any). For joins and dashboard variables.", TAP_INFO_LABELS, info),
            _counter("tapttrace_frames_total", "Frames a bridge received, by what became of them "
                     "(verdicts as in tapttrace follow).", FRAME_LABELS, frames),
            _counter("tapttrace_drops_total", "Frames freed as drops on bridge ports, taps and bridges, by "
                     "kernel drop reason and function.", DROP_LABELS, drops),
            _counter("tapttrace_tap_frames_total", "Frames per tap: queued for the guest, delivered (read by "
                     "the tap's reader), dropped, or addressed to the VM but consumed by the host (local).",
                     TAP_LABELS, taps),
            _counter("tapttrace_tap_drops_total", "Frames dropped while queued on a tap, by reason "
                     "(FULL_RING: the guest is not reading).", TAP_DROP_LABELS, tap_drops),
            _counter("tapttrace_fdb_events_total", "Bridge forwarding database changes: learned, moved "
                     "(a MAC changed port), deleted.", FDB_LABELS, fdb),
            _counter("tapttrace_fdb_decisions_total", "The bridge's forwarding decisions, one per frame, counted "
                     "where it makes them: forward (its FDB names out_port), local (its FDB names the bridge's own "
                     "address: up to the host), flood (no FDB entry, broadcast or multicast). Empty where the "
                     "kernel allows neither fentry nor kprobes on the bridge's functions.", DECISION_LABELS, decisions),
        ]

    def _health(self, c: Counts) -> Iterator[Metric]:
        lost = CounterMetricFamily("tapttrace_lost_events_total", "Counts the kernel could not record, by cause.",
                                   labels=["cause"])
        for cause in HEALTH.values():
            lost.add_metric([cause], c.health.get(cause, 0))
        yield lost
        yield _single(CounterMetricFamily, "tapttrace_decode_errors_total",
                      "Kernel counter keys the exporter could not decode.", self.decode_errors)
        yield _single(CounterMetricFamily, "tapttrace_refresh_errors_total",
                      "Device inventory refreshes that failed (retried at the next interval).", self.refresh_errors)
        yield _single(CounterMetricFamily, "tapttrace_series_overflow_total",
                      "Label sets added into the _overflow series because a family hit the series cap.",
                      self.cap.overflowed)
        yield _single(GaugeMetricFamily, "tapttrace_programs_attached", "BPF programs attached.",
                      getattr(self.program, "attached", 0))
        watched = GaugeMetricFamily("tapttrace_devices_watched", "Devices the kernel side counts for, by role.",
                                    labels=["role"])
        for role in ("bridge", "port", "tap"):
            watched.add_metric([role], self.watched.get(role, 0))
        yield watched
        yield _single(GaugeMetricFamily, "tapttrace_scrape_duration_seconds",
                      "Time the previous scrape took to read and decode the kernel counters.", self.scrape_seconds)
        info = GaugeMetricFamily("tapttrace_build_info", "tapttrace version and the kernel it runs on.",
                                 labels=sorted(self.build))
        info.add_metric([self.build[k] for k in sorted(self.build)], 1)
        yield info


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0) (returns free pages of every arena to the kernel); a no-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return lambda: None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int

    def trim() -> None:
        fn(0)
    return trim


def _counter(name: str, doc: str, labels: tuple[str, ...], series: dict[tuple[str, ...], float]) -> Metric:
    fam = CounterMetricFamily(name, doc, labels=list(labels))
    for values, value in sorted(series.items()):
        fam.add_metric(list(values), value)
    return fam


def _gauge(name: str, doc: str, labels: tuple[str, ...], series: dict[tuple[str, ...], float]) -> Metric:
    fam = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in sorted(series.items()):
        fam.add_metric(list(values), value)
    return fam


def _single(cls, name: str, doc: str, value: float) -> Metric:
    fam = cls(name, doc)
    fam.add_metric([], value)
    return fam
