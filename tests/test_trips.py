"""Journeys the kernel stitched (tracer/trips.py, Stitcher.feed_trip), replayed without root.

The event streams were recorded on the real kernel. Each is turned into what bpf/follow_btf.c
hands over with trips on (trips.as_kernel_sends: a frame's events as one trip record where the
kernel would have stitched it, every other event as it came). The journeys must be the ones the
events give, word for word, and the JSON lines the ones journey_to_dict gives, byte for byte.
"""
import json
from pathlib import Path

import pytest

from tracer import events as ev_codec
from tracer import replay, trips
from tracer.follow import Annotator
from tracer.sinks.jsonl import JsonLinesSink, journey_to_dict
from tracer.stitch import Stitcher

REC = Path(__file__).parent / "recordings"
RECORDINGS = ["follow-reader-healthy.jsonl", "follow-reader-local-mac.jsonl", "lab-healthy.jsonl",
              "lab-local-mac.jsonl", "../../bench/recordings/bench-flow.jsonl"]


def replay_records(rec, records):
    stitcher = Stitcher(rec.devices, rec.namer)
    annotate = Annotator(rec.mac, set(rec.ips), rec.devices)
    out, last = [], 0
    for raw in records:
        if trips.is_trip(raw):
            j = stitcher.feed_trip(raw)
            last = max(last, trips.last_stamp(raw))
            if j is not None:
                out.append(j)
        else:
            (e,), _ = ev_codec.decode_many([raw])
            stitcher.feed(e)
            last = e.ts_ns
        out.extend(stitcher.flush(last))
    out.extend(stitcher.flush(last, final=True))
    return [annotate(j) for j in out], stitcher


def comparable(j):
    d = journey_to_dict(j, 0)
    del d["id"]
    return d


@pytest.mark.parametrize("name", RECORDINGS)
def test_trips_give_the_journeys_the_events_give(name):
    rec = replay.load(REC / name)
    records, n_whole = trips.as_kernel_sends(rec.events)
    assert n_whole > 0
    got, stitcher = replay_records(rec, records)
    want = replay.journeys(rec)
    assert stitcher.stats.trips == n_whole
    assert stitcher.stats.events == len(rec.events)
    by_start = lambda j: (j.first_ns, j.summary)  # noqa: E731
    assert [comparable(j) for j in sorted(got, key=by_start)] == [comparable(j) for j in sorted(want, key=by_start)]


class Lines:
    def __init__(self):
        self.lines = []

    def write(self, s):
        self.lines.append(s)

    def flush(self):
        pass


@pytest.mark.parametrize("name", RECORDINGS)
def test_a_shapes_compiled_json_line_is_byte_for_byte_journey_to_dict(name):
    rec = replay.load(REC / name)
    records, _ = trips.as_kernel_sends(rec.events)
    got, _ = replay_records(rec, records)
    for j in got[:3]:
        j.vm, j.note = "guest \"1\"", "never reached vnet0"  # values that need escaping
    shaped = [j for j in got if j.shape is not None]
    assert shaped
    out = Lines()
    sink = JsonLinesSink(out, 1_700_000_000_000_000_000)
    for j in got:
        sink.journey(j)
    sink.flush()
    assert "".join(out.lines) == "".join(
        json.dumps(journey_to_dict(j, 1_700_000_000_000_000_000), separators=(",", ":")) + "\n" for j in got)


def test_journeys_on_one_path_share_a_shape_and_differ_in_their_times():
    rec = replay.load(REC.parent.parent / "bench" / "recordings" / "bench-flow.jsonl")
    records, n_whole = trips.as_kernel_sends(rec.events)
    got, _ = replay_records(rec, records)
    shapes = {id(j.shape) for j in got if j.shape is not None}
    assert len(shapes) == 1 and n_whole == 100  # one path: up0 -> br0 -> vnet0 -> read
    assert len({j.first_ns for j in got}) == len(got)
    assert [j.id for j in got] == sorted(j.id for j in got)


def test_a_cut_trip_is_stitched_as_its_events():
    rec = replay.load(REC / "lab-healthy.jsonl")
    records, _ = trips.as_kernel_sends(rec.events)
    cut = [trips.pack(list(trips.decode(r).hops), trips.TRIP_CUT) if trips.is_trip(r) else r for r in records]
    got, stitcher = replay_records(rec, cut)
    assert stitcher.stats.trips == 0
    assert [comparable(j) for j in sorted(got, key=lambda j: j.first_ns)] == \
        [comparable(j) for j in sorted(replay.journeys(rec), key=lambda j: j.first_ns)]


def test_trip_records_that_are_not_trips_are_refused():
    rec = replay.load(REC / "lab-healthy.jsonl")
    raw = bytearray(trips.pack([rec.events[0]]))
    with pytest.raises(trips.TripError):
        trips.decode(bytes(raw[:-1]))
    raw[14] = 0  # no hops
    with pytest.raises(trips.TripError):
        trips.decode(bytes(raw))
    raw[14] = 1
    raw[16 + 128 + 28] = 99  # hook
    with pytest.raises(trips.TripError):
        trips.decode(bytes(raw))
    assert trips.TRIP_SIZE == 432 and trips.TRIP_SIZE != ev_codec.EVENT_SIZE
