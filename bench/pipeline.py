"""What follow's Python collector spends per journey, stage by stage, without root or a kernel.

    python -m bench.pipeline [RECORDING] [--journeys N]

Replays a recording made with `tapttrace follow --record` (default: the bench's own, or the lab's
healthy one) many times over (each copy shifted in time and skb address so it stitches as new
journeys) through the stages of tracer/follow.py's loop, timing each: the ring-buffer record
decode, Stitcher.feed, Stitcher.flush (journey building), the Annotator and the JSON-lines sink.
The sum is the collector's ceiling in journeys per second on one core, before bcc's per-event
callback. Use it to see what a change to the pipeline buys.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULTS = [HERE / "recordings" / "bench-flow.jsonl", ROOT / "tests" / "recordings" / "lab-healthy.jsonl"]


def trip_budget(recording: Path, journeys: int) -> dict:
    """The same for journeys the kernel stitched (bpf/follow.c's trips): each copy of the
    recording as the trip records and events the kernel would hand over (trips.as_kernel_sends)."""
    from tracer import replay, trips
    from tracer.follow import Annotator
    from tracer.sinks.jsonl import JsonLinesSink
    from tracer.stitch import Stitcher

    rec = replay.load(recording)
    per_copy = len(replay.journeys(rec))
    copies = max(1, -(-journeys // max(per_copy, 1)))
    first, last = rec.events[0].ts_ns, rec.events[-1].ts_ns
    shift = (last - first) + 2_000_000_000
    batches = []
    for k in range(copies):
        records, _ = trips.as_kernel_sends([replace(e, ts_ns=e.ts_ns + k * shift, skb=e.skb + (k << 24))
                                            for e in rec.events])
        batches.append([memoryview(r) for r in records])
    stitcher = Stitcher(rec.devices, rec.namer)
    t0 = time.perf_counter()
    built = list(_replayed(stitcher, stitcher.feed_trip, batches, shift))
    t = {"trips: decode + Stitcher.feed_trip": time.perf_counter() - t0}
    annotate = Annotator(rec.mac, set(rec.ips), rec.devices)
    t1 = time.perf_counter()
    for j in built:
        annotate(j)
    t["Annotator"] = time.perf_counter() - t1
    sink = JsonLinesSink(io.StringIO(), 0)
    t2 = time.perf_counter()
    for j in built:
        sink.journey(j)
    sink.flush()
    t["JSON-lines sink"] = time.perf_counter() - t2
    n = len(built)
    stages = {k: v / n * 1e6 for k, v in t.items()}
    total = sum(stages.values())
    shaped_us = _shaped_json(rec, batches, shift) / n * 1e6
    return {"recording": str(recording), "journeys": n, "events": len(rec.events) * copies,
            "events_per_journey": len(rec.events) * copies / n, "kernel_stitched": stitcher.stats.trips,
            "us_per_journey": stages, "total_us_per_journey": total, "journeys_per_s_one_core": 1e6 / total,
            "json_only_us_per_journey": shaped_us, "json_only_journeys_per_s_one_core": 1e6 / shaped_us}


def _shaped_json(rec, batches, shift) -> float:
    """Seconds for what follow --json alone does with the same records (run_follow's json_only):
    a whole trip on a path seen before goes to its line as a ShapedTrip, without its Journey."""
    from tracer.follow import Annotator, FollowSummary
    from tracer.sinks.jsonl import JsonLinesSink
    from tracer.stitch import ShapedTrip, Stitcher

    stitcher = Stitcher(rec.devices, rec.namer)
    annotate = Annotator(rec.mac, set(rec.ips), rec.devices)
    summary = FollowSummary()
    sink = JsonLinesSink(io.StringIO(), 0)

    def emit(j) -> None:
        if type(j) is ShapedTrip:
            toward, note = annotate.trip(j)
            summary.shown_trip(j)
            sink.trip(j, toward, annotate.vm, note)
        else:
            annotate(j)
            summary.shown(j)
            sink.journey(j)

    t0 = time.perf_counter()
    for j in _replayed(stitcher, stitcher.take_trip, batches, shift):
        emit(j)
    sink.flush()
    return time.perf_counter() - t0


def _replayed(stitcher, take_trip, batches, shift):
    """The journeys of the records, batch by batch, as follow's loop gets them: trips through
    take_trip, events through the stitcher, flushed after each batch and at the end."""
    from tracer import events as ev_codec
    from tracer import trips

    for records in batches:
        for raw in records:
            if len(raw) == trips.TRIP_SIZE:
                j = take_trip(raw)
                if j is not None:
                    yield j
            else:
                for e in ev_codec.decode_many([raw])[0]:
                    stitcher.feed(e)
        yield from stitcher.flush(trips.last_stamp(records[-1]) + shift // 2 if trips.is_trip(records[-1]) else 0)
    yield from stitcher.flush(0, final=True)


def budget(recording: Path, journeys: int) -> dict:
    from tracer import events as ev_codec
    from tracer import replay
    from tracer.follow import Annotator
    from tracer.sinks.jsonl import JsonLinesSink
    from tracer.stitch import Stitcher

    rec = replay.load(recording)
    if not rec.events:
        raise SystemExit(f"{recording}: no events")
    per_copy = len(replay.journeys(rec))
    copies = max(1, -(-journeys // max(per_copy, 1)))
    first, last = rec.events[0].ts_ns, rec.events[-1].ts_ns
    shift = (last - first) + 2_000_000_000  # each copy starts after the previous one has gone idle
    raws, bounds = [], []
    for k in range(copies):
        for e in rec.events:
            e2 = replace(e, ts_ns=e.ts_ns + k * shift, skb=e.skb + (k << 24))
            raws.append(ev_codec._LAYOUT.pack(e2.ts_ns, e2.skb, e2.location, e2.netns, e2.ifindex, e2.frame_len,
                                              e2.reason, int(e2.hook), len(e2.data), e2.cpu, e2.ifname.encode(),
                                              e2.data.ljust(ev_codec.SNAPLEN, b"\0")))
        bounds.append(len(raws))

    t: dict[str, float] = {}

    def timed(stage: str, fn):
        t0 = time.perf_counter()
        out = fn()
        t[stage] = t.get(stage, 0.0) + time.perf_counter() - t0
        return out

    decoded = timed("events.decode", lambda: ev_codec.decode_many([memoryview(r) for r in raws])[0])
    stitcher = Stitcher(rec.devices, rec.namer)
    built = []
    start = 0
    for end in bounds:
        chunk = decoded[start:end]
        start = end

        def feed(chunk=chunk):
            for e in chunk:
                stitcher.feed(e)

        timed("Stitcher.feed", feed)
        built += timed("Stitcher.flush (build)", lambda now=chunk[-1].ts_ns + shift // 2: stitcher.flush(now))
    built += timed("Stitcher.flush (build)", lambda: stitcher.flush(decoded[-1].ts_ns + shift, final=True))
    annotate = Annotator(rec.mac, set(rec.ips), rec.devices)
    timed("Annotator", lambda: [annotate(j) for j in built])
    sink = JsonLinesSink(io.StringIO(), 0)
    timed("JSON-lines sink", lambda: ([sink.journey(j) for j in built], sink.flush()))
    n = len(built)
    stages = {k: v / n * 1e6 for k, v in t.items()}
    total = sum(stages.values())
    return {"recording": str(recording), "journeys": n, "events": len(raws), "events_per_journey": len(raws) / n,
            "us_per_journey": stages, "total_us_per_journey": total, "journeys_per_s_one_core": 1e6 / total}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n")[0])
    ap.add_argument("recording", nargs="?", type=Path)
    ap.add_argument("--journeys", type=int, default=20_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--trips", action="store_true",
                    help="journeys stitched in the kernel (bpf/follow.c's trip records), not events")
    a = ap.parse_args(argv)
    path = a.recording or next((p for p in DEFAULTS if p.exists()), None)
    if path is None:
        ap.error("no recording given and none of the defaults exists")
    sys.path.insert(0, str(ROOT))
    from tracer.follow import _collector_gc  # the collector's garbage-collector settings, as in follow

    r = _collector_gc(trip_budget if a.trips else budget)(path, a.journeys)
    if a.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"{r['journeys']} journeys, {r['events_per_journey']:.2f} events each, from {r['recording']}")
    for stage, us in r["us_per_journey"].items():
        print(f"  {stage:26s} {us:8.2f} µs/journey")
    print(f"  {'total':26s} {r['total_us_per_journey']:8.2f} µs/journey  "
          f"→ {r['journeys_per_s_one_core']:,.0f} journeys/s on one core (before bcc's callbacks)")
    if "json_only_us_per_journey" in r:
        print(f"  {'follow --json alone':26s} {r['json_only_us_per_journey']:8.2f} µs/journey  "
              f"→ {r['json_only_journeys_per_s_one_core']:,.0f} journeys/s on one core (paths seen before: "
              "no Journey objects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
