"""The follow pipeline: BPF events -> decode -> stitch -> annotate -> sinks, until told to stop."""
from __future__ import annotations

import functools
import gc
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Callable, Optional, Protocol, Union

from . import events as ev_codec
from . import frames, trips
from .config import FollowConfig
from .devices import DeviceTable
from .errors import say_note
from .records import Copy, Device, Event, Hook, Journey
from .ringbuf import Record
from .sinks.jsonl import JsonLinesSink
from .stitch import Namer, ShapedTrip, Stitcher

EXIT_BUDGET_S = 0.5  # after a signal: time allowed for the backlog once the BPF program is detached
# While the kernel is losing events, a journey whose last event was lost would stay open for the
# stitcher's whole idle time (1 s) and every open journey costs memory and time: give up on
# unfinished ones after LOSSY_IDLE_NS instead, until no event was lost for LOSSY_QUIET_S.
LOSSY_IDLE_NS = 100_000_000
LOSSY_QUIET_S = 2.0
LOST_CHECK_S = 0.25


class EventSource(Protocol):
    """Raw ring-buffer records. A source may also have poll_batch(timeout_ms) -> list of records
    (what poll would hand to sink one by one): run_follow then decodes the batch in one go; and
    read_up_to_ns() -> the moment before which every record has been read (see stitch_clock)."""

    def poll(self, sink: Callable[[Record], None], timeout_ms: int) -> None: ...
    def drain(self, sink: Callable[[Record], None]) -> None: ...
    def lost(self) -> int: ...
    def watch_ips(self, addrs: Iterable[str]) -> None: ...


class Sink(Protocol):
    """A sink may also have flush(): run_follow calls it after every batch of journeys (so a
    sink can write a batch in one system call) and before it waits for events."""

    def journey(self, j: Journey) -> None: ...
    def summary(self, s: FollowSummary) -> None: ...
    def close(self) -> None: ...


@dataclass
class FollowSummary:
    journeys: int = 0
    verdicts: Counter = field(default_factory=Counter)
    lost_events: int = 0
    decode_errors: int = 0
    late_events: int = 0
    events: int = 0
    learned_ips: list[str] = field(default_factory=list)
    stopped_by: str = ""
    # Stopped by a signal with more backlog than EXIT_BUDGET_S allows: what was not decoded / written.
    discarded_events: int = 0
    discarded_journeys: int = 0
    kernel_stitched: int = 0  # journeys that came whole from the kernel (tracer/trips.py)
    # Whole journeys the kernel counted by their path instead of handing them over (follow was
    # behind), and every frame's verdict and drop, shown or counted (count_in_kernel).
    counted_in_kernel: int = 0
    frame_verdicts: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)  # "REASON at location" -> frames

    @property
    def frames(self) -> int:
        return self.journeys + self.counted_in_kernel

    def shown(self, j: Journey) -> None:
        self.journeys += 1
        self.verdicts[j.verdict] += 1
        self.frame_verdicts[j.verdict] += 1
        if j.verdict == "dropped":
            self.drops[drop_words(j)] += 1

    def shown_trip(self, t: ShapedTrip) -> None:
        """shown(t.journey()): its path's first journey has its verdict and drop."""
        self.shown(t.shape.template)

    def line(self) -> str:
        if self.counted_in_kernel:
            text = self._frames_line()
        else:
            parts = ", ".join(f"{n} {v}" for v, n in sorted(self.verdicts.items(), key=lambda kv: -kv[1]))
            text = f"{self.journeys} journeys" + (f" ({parts})" if parts else "")
        text += f"; {self.lost_events} events lost"
        if self.decode_errors:
            text += f"; {self.decode_errors} undecodable events"
        if self.discarded_events or self.discarded_journeys:
            text += (f"; at exit {self.discarded_events} events and {self.discarded_journeys} journeys "
                     f"of the backlog discarded, not written (over the {EXIT_BUDGET_S} s exit budget)")
        return text

    def _frames_line(self) -> str:
        """Every frame, shown or not: "418233 frames: 418100 delivered, 133 dropped (NETFILTER_DROP at
        nft_do_chain); 17410 journeys shown (1 in 24), every dropped one"."""
        parts = []
        for verdict, n in sorted(self.frame_verdicts.items(), key=lambda kv: -kv[1]):
            why = ""
            if verdict == "dropped" and self.drops:
                why = " (" + ", ".join(f"{w}" if len(self.drops) == 1 else f"{k} {w}"
                                       for w, k in self.drops.most_common(3))
                why += ", …)" if len(self.drops) > 3 else ")"
            parts.append(f"{n} {verdict}{why}")
        text = f"{self.frames} frames: {', '.join(parts)}; {self.journeys} journeys shown"
        if self.journeys:
            text += f" (1 in {max(1, round(self.frames / self.journeys))})"
        dropped, shown_dropped = self.frame_verdicts.get("dropped", 0), self.verdicts.get("dropped", 0)
        if dropped:
            text += (", every dropped one" if shown_dropped == dropped
                     else f", {shown_dropped} of {dropped} dropped ones")
        return text + "; the rest counted in the kernel, by path, while follow was behind"

    def as_dict(self) -> dict:
        return {"journeys": self.journeys, "verdicts": dict(self.verdicts), "lost_events": self.lost_events,
                "decode_errors": self.decode_errors, "late_events": self.late_events, "events": self.events,
                "learned_ips": self.learned_ips, "stopped_by": self.stopped_by,
                "discarded_events": self.discarded_events, "discarded_journeys": self.discarded_journeys,
                "kernel_stitched": self.kernel_stitched, "frames": self.frames,
                "counted_in_kernel": self.counted_in_kernel, "frame_verdicts": dict(self.frame_verdicts),
                "drops": dict(self.drops)}


def drop_words(j: Journey) -> str:
    """A dropped journey's drop as the summary counts it: "NETFILTER_DROP at nft_do_chain" (the
    function, without the offset and module that tell one call site from another)."""
    where = j.location.split("+", 1)[0].strip()
    return f"{j.reason or 'no reason'} at {where or 'an unknown place'}"


def count_in_kernel(summary: FollowSummary, tallies: Iterable[tuple[int, bytes]], devices: DeviceTable,
                    namer: Namer, netns: Iterable = ()) -> None:
    """Add the journeys the kernel counted by path (bpf/follow.c, tally()) to the summary: each
    path's sample trip is worded by a stitcher of its own (two samples may share an skb address,
    which one stitcher would take for the same skb), as a shown journey on that path would be."""
    wanted = set(netns) if netns else None
    for count, sample in tallies:
        try:
            j = Stitcher(devices, namer).feed_trip(sample)
        except trips.TripError:
            j = None
        if j is None:  # not a whole trip: the kernel counts only those
            summary.decode_errors += 1
            continue
        if wanted is not None and not any(h.netns in wanted for h in j.hops):
            continue
        summary.counted_in_kernel += count
        summary.frame_verdicts[j.verdict] += count
        if j.verdict == "dropped":
            summary.drops[drop_words(j)] += count


def guest_taps(devices: Iterable[Device], mac: str) -> list[Device]:
    """Taps that belong to the guest: carrying its MAC, or libvirt's fe:+ its last five bytes."""
    libvirt = "fe" + mac[2:]
    return [d for d in devices if d.is_tap and d.mac in (mac, libvirt)]


class Annotator:
    """Adds what only the watched MAC's point of view knows: is the frame for the guest, did it get there."""

    def __init__(self, mac: str, ips: set[str], devices: DeviceTable, vm: str = ""):
        self.mac = mac
        self.ips = ips
        self.devices = devices
        self.vm = vm

    def __call__(self, j: Journey) -> Journey:
        j.vm = self.vm
        j.toward_guest = self._toward(frames.decode_flow(j.frame))
        j.note = self._note(j.toward_guest, j.copies) or j.note
        return j

    def trip(self, t: ShapedTrip) -> tuple[bool, str]:
        """What __call__ says of t.journey(), from t's frame and path: (toward_guest, note)."""
        toward = self._toward(t.info)
        return toward, self._note(toward, t.shape.template.copies)

    def _toward(self, info: frames.FrameInfo) -> bool:
        asks = (info.arp_op == 1 and info.arp_target_ip in self.ips) or (info.nd_target in self.ips)
        return info.src_mac != self.mac and (info.dst_mac == self.mac or bool(asks))

    def _note(self, toward_guest: bool, copies: list[Copy]) -> str:
        """A frame for the guest that no copy of reached a tap: which taps it never reached."""
        if not toward_guest or any(c.outcome in ("delivered", "queued") for c in copies):
            return ""
        taps = guest_taps(self.devices.all(), self.mac)
        return f"never reached {' or '.join(t.name for t in taps)}" if taps else "never reached a tap"


class Recorder:
    """Writes raw events and the names needed to replay them, for the pure tests."""

    def __init__(self, out: IO[str], config: FollowConfig, devices: DeviceTable):
        self.out = out
        self.devices = devices
        self.locations: set[int] = set()
        self.reasons: set[int] = set()
        self.chains: set[int] = set()  # netfilter hops' chains (their locations)
        self._write({"type": "meta", "mac": config.mac, "ips": list(config.ips)})

    def _write(self, obj: dict) -> None:
        self.out.write(json.dumps(obj) + "\n")

    def event(self, e: Event) -> None:
        if e.hook == Hook.NF_CHAIN:
            self.chains.add(e.location)
        else:
            self.locations.add(e.location)
        self.reasons.add(e.reason)
        self._write({"type": "event", **ev_codec.to_dict(e)})

    def close(self, namer: Namer) -> None:
        self._write({"type": "devices", "netns": {str(k): v for k, v in self.devices.namespaces.items()},
                     "devices": [d.__dict__ for d in self.devices.all()]})
        self._write({"type": "names",
                     "symbols": {str(a): namer.symbol(a) for a in self.locations if a},
                     "reasons": {str(r): namer.reason(r) for r in self.reasons},
                     "chains": {str(a): list(c) for a in self.chains if (c := namer.nf_chain(a))}})
        self.out.close()


def _collector_gc(fn):
    """Run the collector with the cyclic garbage collector mostly out of the way.

    Journeys and events are freed by reference counting; the cyclic collector found nothing to
    free here but, at its default threshold of 700 allocations, rescanned the young heap every few
    journeys and the whole heap (bcc, LLVM's Python side, open journeys) every few thousand:
    ≈ 25 % of the collector's time offline (bench.pipeline 74 → 57 µs a journey). Objects alive at
    start are frozen out of its scans; the young generation is collected 300× less often."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        old = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(200_000, 50, 50)
        try:
            return fn(*args, **kwargs)
        finally:
            gc.set_threshold(*old)
            gc.unfreeze()
    return wrapper


def stitch_clock(read_up_to_ns: int, records) -> int:
    """The time the stitcher may take as now: a journey is reported once its grace after its end
    has passed, and events within that grace (a clone read by a process on another CPU) must
    have been read by then. Behind the ring (a batch is at most BATCH_MAX_BYTES), now is the
    newest record's time, not the wall clock's: 20 ms behind, every ended journey would be
    reported before the clones that come right after it in the ring."""
    newest = 0
    if records:
        raw = records[-1]
        newest = trips.last_stamp(raw) if len(raw) == trips.TRIP_SIZE else ev_codec.timestamp(raw)
    return max(read_up_to_ns, newest)


@_collector_gc
def run_follow(config: FollowConfig, source: EventSource, devices: DeviceTable, namer: Namer,
               sinks: list[Sink], stop: threading.Event, *, recorder: Optional[Recorder] = None,
               on_journey: Optional[Callable[[Journey], None]] = None,
               poll_ms: int = 50) -> FollowSummary:
    """Run until count/duration is reached or `stop` is set; always drains and reports what is left."""
    summary = FollowSummary()
    stitcher = Stitcher(devices, namer)
    known_ips = set(config.ips)
    annotate = Annotator(config.mac, known_ips, devices, config.vm)
    mac_bytes = bytes.fromhex(config.mac.replace(":", ""))
    deadline = time.monotonic() + config.duration if config.duration else None
    if known_ips:
        source.watch_ips(known_ips)

    def take(raw: Record) -> None:
        take_all((raw,))

    feed = stitcher.feed
    learn = config.learn_ips
    # follow --json alone (no pcap, no caller's callback): a whole journey on a path seen before
    # goes from its trip record to its JSON line without its Journey and Hops (ShapedTrip: half
    # of what a journey cost, bench.pipeline --trips)
    json_only = sinks[0] if len(sinks) == 1 and isinstance(sinks[0], JsonLinesSink) and on_journey is None else None
    shaped = json_only is not None
    take_shaped = stitcher.take_trip
    whole: list[Union[Journey, ShapedTrip]] = []  # journeys the kernel stitched, ready before the stitcher's

    def learn_from(data: bytes) -> None:
        new = [ip for ip in frames.guest_addresses(frames.decode(data), config.mac) if ip not in known_ips]
        if new:
            known_ips.update(new)
            summary.learned_ips.extend(new)
            source.watch_ips(new)

    def take_events(raws) -> None:
        events, errors = ev_codec.decode_many(raws)
        summary.decode_errors += errors
        for e in events:
            if recorder:
                recorder.event(e)
            if learn and not detached and e.data[6:12] == mac_bytes:
                learn_from(e.data)
            feed(e)

    def take_trip(raw) -> None:
        """Trip records (tracer/trips.py) among the events, in ring-buffer order: a cut trip's hops
        must reach the stitcher before the events of its clones that follow it."""
        try:
            if recorder:  # recordings hold events: a trip is recorded as the events it stands for
                for e in trips.decode(raw).hops:
                    recorder.event(e)
            if learn and not detached and raw[16 + 6:16 + 12] == mac_bytes:
                learn_from(trips.frame(raw)[0])
            j = take_shaped(raw) if shaped else stitcher.feed_trip(raw)
        except trips.TripError:
            summary.decode_errors += 1
            return
        if j is not None:
            whole.append(j)

    def take_all(raws) -> None:
        start, size = 0, trips.TRIP_SIZE
        for i, raw in enumerate(raws):
            if len(raw) == size:
                if i > start:
                    take_events(raws[start:i])
                take_trip(raw)
                start = i + 1
        if start < len(raws):
            take_events(raws[start:] if start else raws)

    flushers = [f for f in (getattr(s, "flush", None) for s in sinks) if f is not None]
    poll_batch = getattr(source, "poll_batch", None)
    read_up_to = getattr(source, "read_up_to_ns", time.monotonic_ns)

    pending: list[Union[Journey, ShapedTrip]] = []
    detached = False

    def emit(journeys: Sequence[Union[Journey, ShapedTrip]]) -> bool:
        for i, j in enumerate(journeys):
            if not detached and stop.is_set():
                pending.extend(journeys[i:])  # written once the hooks are off
                return False
            if config.netns and not any(n in config.netns for n in (
                    j.shape.netns if isinstance(j, ShapedTrip) else (h.netns for h in j.hops))):
                continue
            if config.count is not None and summary.journeys >= config.count:
                return True
            if isinstance(j, ShapedTrip):  # what the lines below do, from its path
                assert json_only is not None  # only for it does the stitcher hand them over
                toward, note = annotate.trip(j)
                summary.shown_trip(j)
                json_only.trip(j, toward, annotate.vm, note)
                continue
            annotate(j)
            summary.shown(j)
            for s in sinks:
                s.journey(j)
            if on_journey:
                on_journey(j)
        return config.count is not None and summary.journeys >= config.count

    def emit_whole() -> bool:
        if not whole:
            return False
        ready = whole[:]
        del whole[:]
        return emit(ready)

    normal_idle_ns = stitcher.idle_ns
    lost_seen, lost_check, lossy_until = 0, 0.0, 0.0
    tallied = getattr(source, "tallied", None)
    behind_said = False
    try:
        while True:
            now = time.monotonic()
            if now >= lost_check:
                lost_check = now + LOST_CHECK_S
                lost = source.lost()
                if lost > lost_seen:
                    lost_seen, lossy_until = lost, now + LOSSY_QUIET_S
                    stitcher.idle_ns = min(normal_idle_ns, LOSSY_IDLE_NS)
                elif now >= lossy_until:
                    stitcher.idle_ns = normal_idle_ns
                if tallied is not None and not behind_said and tallied():
                    behind_said = True
                    say_note("follow can't show every journey at this rate: the kernel counts the rest by "
                             "path (every drop is shown while there is room); the summary accounts for every frame")
            if stop.is_set():
                summary.stopped_by = "signal"
                break
            if deadline is not None and time.monotonic() >= deadline:
                summary.stopped_by = "duration"
                break
            if poll_batch is not None:
                records = poll_batch(poll_ms)
                take_all(records)
                clock = stitch_clock(read_up_to(), records)
            else:
                source.poll(take, poll_ms)
                clock = time.monotonic_ns()
            done = emit_whole()
            while not done and not stop.is_set():  # all that is due, 256 at a time
                out = stitcher.flush(clock, limit=256)
                if not out:
                    break
                done = emit(out)
            for f in flushers:
                f()
            if done:
                summary.stopped_by = "count"
                break
    finally:
        # Detach first: take the ring buffer's raw records (a copy each) and the lost count, close
        # the BPF program, and only then work through what user space still has to do.
        backlog: list[Record] = []
        source.drain(backlog.append)
        summary.lost_events = source.lost()
        close = getattr(source, "close", None)
        if close is not None:
            close()
        detached = True
        # Stopped by the user under load, the backlog can take many seconds to write: give it
        # EXIT_BUDGET_S, then count what is left as discarded (shown in the summary), never silently.
        budget_end = time.monotonic() + EXIT_BUDGET_S if summary.stopped_by == "signal" else None

        def in_budget() -> bool:
            return budget_end is None or time.monotonic() < budget_end

        for i in range(0, len(backlog), 256):
            if not in_budget():
                summary.discarded_events = len(backlog) - i
                break
            take_all(backlog[i:i + 256])
            pending.extend(whole)
            del whole[:]
        done = config.count is not None and summary.journeys >= config.count
        while pending and not done and in_budget():
            chunk, pending[:] = pending[:256], pending[256:]
            done = emit(chunk)
        while not done and in_budget():
            out = stitcher.flush(time.monotonic_ns(), final=True, limit=256 if budget_end else None)
            if not out:
                break
            done = emit(out)
        if not done:
            summary.discarded_journeys = len(pending) + stitcher.open_journeys
        tallies = getattr(source, "tallies", None)
        if tallies is not None:
            count_in_kernel(summary, tallies(), devices, namer, config.netns)
        summary.events = stitcher.stats.events  # every event decoded went to it, alone or in a trip
        summary.late_events = stitcher.stats.late_events
        summary.kernel_stitched = stitcher.stats.trips
        for s in sinks:
            s.summary(summary)
            s.close()
        if recorder:
            recorder.close(namer)
    return summary
