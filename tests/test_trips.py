"""Journeys the kernel stitched (tracer/trips.py, Stitcher.feed_trip), replayed without root.

The event streams were recorded on the real kernel. Each is turned into what bpf/follow.c
hands over with trips on (trips.as_kernel_sends: a frame's events as one trip record where the
kernel would have stitched it, every other event as it came). The journeys must be the ones the
events give, word for word, and the JSON lines the ones journey_to_dict gives, byte for byte.
"""
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tracer import events as ev_codec
from tracer import frames, replay, trips
from tracer.config import FollowConfig
from tracer.follow import Annotator, run_follow
from tracer.records import Hook
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
    assert trips.TRIP_SIZE == 624 and trips.TRIP_SIZE != ev_codec.EVENT_SIZE


def test_a_clone_that_ends_on_another_cpu_before_its_parents_trip_is_handed_over_joins_it():
    """The race CI met: ping's raw-socket clone of an echo reply, read and consumed on one CPU
    while the original's trip was still open on another (it is dropped by ping_rcv() next).
    The clone's consume reaches user space first; the journey must still be the events' one:
    one frame, delivered to the host, the clone as copy 1."""
    rec = replay.load(REC / "lab-healthy.jsonl")
    reply = [i for i, e in enumerate(rec.events)
             if "echo reply 198.51.100.10 > 198.51.100.254" in frames.decode(e.data).summary]
    received, passed_up, dropped, clone_consumed = (rec.events[i] for i in reply)
    assert [e.hook for e in (received, passed_up, dropped, clone_consumed)] == [1, 1, 3, 4]
    assert clone_consumed.skb != received.skb == dropped.skb
    clone_consumed = replace(clone_consumed, ts_ns=(passed_up.ts_ns + dropped.ts_ns) // 2)
    in_time_order = rec.events[:reply[0]] + [received, passed_up, clone_consumed, dropped] + rec.events[reply[-1] + 1:]
    as_sent = (trips.as_kernel_sends(rec.events[:reply[0]])[0]
               + [ev_codec.encode(clone_consumed), trips.pack([received, passed_up], trips.TRIP_CUT),
                  ev_codec.encode(dropped)]
               + trips.as_kernel_sends(rec.events[reply[-1] + 1:])[0])

    got, _ = replay_records(rec, as_sent)
    want = replay.journeys(replace(rec, events=in_time_order))
    echo = [j for j in got if j.summary.startswith("ICMP echo reply 198.51.100.10 > 198.51.100.254")]
    assert [(j.verdict, [(h.event, h.dev, h.copy) for h in j.hops]) for j in echo] == [
        ("local", [("received", "vnet0", 0), ("passed-up", "br0", 0), ("consumed", "", 1), ("dropped", "br0", 0)])]
    by_start = lambda j: (j.first_ns, j.summary)  # noqa: E731
    assert [comparable(j) for j in sorted(got, key=by_start)] == [comparable(j) for j in sorted(want, key=by_start)]


class RecordedRing:
    """A follow source that hands over recorded records in the batches given, as a reader behind
    the ring gets them (caught up only once the last batch is read)."""

    def __init__(self, batches, stop):
        self.batches, self.stop = list(batches), stop

    def poll_batch(self, timeout_ms):
        batch = self.batches.pop(0) if self.batches else []
        if not self.batches:
            self.stop.set()
        return batch

    def read_up_to_ns(self):
        return 0 if self.batches else time.monotonic_ns()

    def poll(self, sink, timeout_ms):
        for raw in self.poll_batch(timeout_ms):
            sink(raw)

    def drain(self, sink):
        pass

    def lost(self):
        return 0

    def watch_ips(self, addrs):
        pass


def test_a_follow_behind_the_ring_does_not_report_a_journey_before_the_clone_right_after_it():
    """Found in CI: a follow 20 ms behind the ring (a batch is at most 1 MB) flushed by the wall
    clock, so a batch that ended on an echo reply's drop got the reply reported without the
    ping socket's clone, consumed in the next batch: 'dropped NO_SOCKET' instead of 'local'
    for the host's ping, a lone 'consumed' for the remote's."""
    rec = replay.load(REC / "lab-healthy.jsonl")
    a_second_ago = time.monotonic_ns() - 1_000_000_000 - rec.events[0].ts_ns  # recorded on another boot
    rec.events = [replace(e, ts_ns=e.ts_ns + a_second_ago) for e in rec.events]
    records, _ = trips.as_kernel_sends(rec.events)
    decoded = [None if trips.is_trip(r) else ev_codec.decode(r) for r in records]
    split = [i + 1 for i, e in enumerate(decoded) if e is not None and e.hook == Hook.DROP and
             frames.decode(e.data).summary.startswith("ICMP echo reply")]
    assert len(split) == 3  # the remote's two pings, the host's one
    for at in split:
        stop = threading.Event()
        got = []
        run_follow(FollowConfig(rec.mac, ips=tuple(rec.ips)), RecordedRing([records[:at], records[at:]], stop),
                   rec.devices, rec.namer, [], stop, on_journey=got.append, poll_ms=0)
        by_start = lambda j: (j.first_ns, j.summary)  # noqa: E731
        assert [comparable(j) for j in sorted(got, key=by_start)] == \
            [comparable(j) for j in sorted(replay.journeys(rec), key=by_start)]


def test_a_clone_whose_parent_is_still_in_the_kernel_after_the_grace_waits_for_it():
    """A packet socket's clone of a frame on its way to a guest that reads it 50 ms later: the
    clone's consume comes first and its parent's trip only at the read. The clone alone must not
    be reported after the 20 ms grace (it would be a lone 'consumed', and the frame a copy short)."""
    rec = replay.load(REC / "lab-healthy.jsonl")
    reply = [e for e in rec.events if "echo reply 198.51.100.10 > 198.51.100.254" in frames.decode(e.data).summary]
    received, passed_up, dropped, clone_consumed = reply
    clone_consumed = replace(clone_consumed, ts_ns=passed_up.ts_ns + 1000)
    dropped = replace(dropped, ts_ns=passed_up.ts_ns + 50 * 1_000_000)
    stitcher = Stitcher(rec.devices, rec.namer)
    stitcher.feed(clone_consumed)
    assert stitcher.flush(clone_consumed.ts_ns + 30 * 1_000_000) == []
    stitcher.feed_trip(trips.pack([received, passed_up], trips.TRIP_CUT))
    stitcher.feed(dropped)
    assert stitcher.flush(dropped.ts_ns + 10 * 1_000_000) == []  # the grace after its end
    (j,) = stitcher.flush(dropped.ts_ns + 20 * 1_000_000)
    assert (j.verdict, [(h.event, h.copy) for h in j.hops]) == (
        "local", [("received", 0), ("passed-up", 0), ("consumed", 1), ("dropped", 0)])
    # a lone clone: reported after the idle second
    stitcher.feed(replace(clone_consumed, skb=1, ts_ns=dropped.ts_ns + 10**9))
    assert stitcher.flush(dropped.ts_ns + 10**9 + 30 * 1_000_000) == []
    (alone,) = stitcher.flush(dropped.ts_ns + 2 * 10**9 + 1)
    assert [(h.event, h.copy) for h in alone.hops] == [("consumed", 0)]


@pytest.mark.parametrize("name", ["follow-6.1-netfilter.jsonl", "lab-healthy.jsonl"])
def test_journeys_counted_in_the_kernel_are_worded_by_their_sample(name):
    """Whole journeys the kernel counted by path while follow was behind (bpf/follow.c, tally()):
    each path's sample trip gives its verdict and drop, as a shown journey on that path would."""
    from tracer.follow import FollowSummary, count_in_kernel, drop_words

    rec = replay.load(REC / name)
    records, _ = trips.as_kernel_sends(rec.events)
    samples = [raw for raw in records if trips.is_trip(raw)]
    want_verdicts, want_drops = {}, {}
    tallies = []
    for n, raw in enumerate(samples, start=1):
        j = Stitcher(rec.devices, rec.namer).feed_trip(raw)
        assert j is not None
        want_verdicts[j.verdict] = want_verdicts.get(j.verdict, 0) + n
        if j.verdict == "dropped":
            want_drops[drop_words(j)] = want_drops.get(drop_words(j), 0) + n
        tallies.append((n, raw))
    if name.startswith("follow-6.1"):  # nf_tables dropped it: its words name the reason and the place
        assert list(want_drops) == ["NETFILTER_DROP at nft_do_chain"] and want_verdicts.get("delivered")
    else:
        assert want_verdicts.get("delivered")
    summary = FollowSummary()
    count_in_kernel(summary, tallies, rec.devices, rec.namer)
    assert summary.counted_in_kernel == sum(n for n, _ in tallies) == summary.frames
    assert dict(summary.frame_verdicts) == want_verdicts
    assert dict(summary.drops) == want_drops
    assert summary.journeys == 0 and summary.verdicts == {}
    # a namespace filter applies to them as to shown journeys
    filtered = FollowSummary()
    count_in_kernel(filtered, tallies, rec.devices, rec.namer, netns=(1,))
    assert filtered.frames == 0


def test_the_summary_accounts_for_every_frame_when_follow_was_behind():
    from collections import Counter

    from tracer.follow import FollowSummary

    s = FollowSummary(journeys=17410, verdicts=Counter(delivered=17277, dropped=133), counted_in_kernel=400823,
                      frame_verdicts=Counter(delivered=418100, dropped=133),
                      drops=Counter({"NETFILTER_DROP at nft_do_chain": 133}))
    assert s.line() == ("418233 frames: 418100 delivered, 133 dropped (NETFILTER_DROP at nft_do_chain); "
                        "17410 journeys shown (1 in 24), every dropped one; the rest counted in the kernel, "
                        "by path, while follow was behind; 0 events lost")
    s.verdicts["dropped"], s.frame_verdicts["dropped"] = 100, 140
    s.drops = Counter({"NETFILTER_DROP at nft_do_chain": 133, "TAP_FILTER at tun_net_xmit": 7})
    assert "140 dropped (133 NETFILTER_DROP at nft_do_chain, 7 TAP_FILTER at tun_net_xmit)" in s.line()
    assert "100 of 140 dropped ones" in s.line()
    # nothing counted in the kernel: the line journeys always had
    assert FollowSummary(journeys=3, verdicts=Counter(delivered=3)).line() == "3 journeys (3 delivered); 0 events lost"
    d = s.as_dict()
    assert d["frames"] == s.journeys + 400823 and d["counted_in_kernel"] == 400823


def test_path_layout_matches_the_bpf_sources():
    import re

    root = Path(__file__).resolve().parent.parent / "bpf"
    assert re.search(r"#define TT_TALLY_PATHS (\d+)", (root / "tapttrace.h").read_text()).group(1) == \
        str(trips.TALLY_PATHS)
    follow = (root / "follow.c").read_text()
    assert "TT_PERCPU_HASH(tallies, __u64, __u64, TT_TALLY_PATHS);" in follow  # the path's number
    assert trips.PATH_SIZE == 8


def test_two_paths_whose_samples_share_an_skb_address_are_both_counted():
    """The kernel's skb addresses are reused: two paths' samples may carry the same one."""
    from tracer.follow import FollowSummary, count_in_kernel

    rec = replay.load(REC / "lab-healthy.jsonl")
    records, _ = trips.as_kernel_sends(rec.events)
    a, b = [bytearray(raw) for raw in records if trips.is_trip(raw)][:2]
    b[:8] = a[:8]
    summary = FollowSummary()
    count_in_kernel(summary, [(5, bytes(a)), (7, bytes(b))], rec.devices, rec.namer)
    assert summary.counted_in_kernel == 12 and summary.decode_errors == 0


class CountingJsonSink(JsonLinesSink):
    """follow's JSON sink, counting the journeys that came to it as ShapedTrips."""

    def __init__(self, out):
        super().__init__(out, 1_700_000_000_000_000_000)
        self.trips = 0

    def trip(self, t, toward_guest, vm, note):
        self.trips += 1
        super().trip(t, toward_guest, vm, note)


class NoSink:
    def journey(self, j):
        pass

    def summary(self, s):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("name", RECORDINGS + ["follow-6.1-netfilter.jsonl"])
@pytest.mark.parametrize("limits", [{}, {"count": 7}, {"netns": "first hop's"}])
def test_follow_json_writes_shaped_trips_as_their_journeys(name, limits):
    """follow --json alone takes a whole journey on a path seen before straight from its trip
    record to its line (ShapedTrip, JsonLinesSink.trip): the same lines, ids and summary as
    through Journey objects (a second sink beside it turns that off), with --count and --netns."""
    rec = replay.load(REC / name)
    a_second_ago = time.monotonic_ns() - 1_000_000_000 - rec.events[0].ts_ns  # recorded on another boot
    span = rec.events[-1].ts_ns - rec.events[0].ts_ns + 100_000_000
    records = []
    for k in range(4):  # each path 4 times: shapes are reused (a copy's trips as the kernel's, alone)
        records += trips.as_kernel_sends([replace(e, ts_ns=e.ts_ns + a_second_ago - 4 * span + k * span,
                                                  skb=e.skb + (k << 24)) for e in rec.events])[0]
    if "netns" in limits:
        first = next(trips.decode(r).hops[0] for r in records if trips.is_trip(r))
        limits = {"netns": (rec.devices.namespaces.get(first.netns, str(first.netns)),)}
    outputs, sinks = [], []
    for extra in ([], [NoSink()]):
        out, stop = Lines(), threading.Event()
        sink = CountingJsonSink(out)
        summary = run_follow(FollowConfig(rec.mac, ips=tuple(rec.ips), json=True, **limits),
                             RecordedRing([records[i:i + 50] for i in range(0, len(records), 50)], stop),
                             rec.devices, rec.namer, [sink, *extra], stop, poll_ms=0)
        sink.summary(summary)
        outputs.append("".join(out.lines))
        sinks.append(sink)
    fast, slow = outputs
    assert sinks[0].trips > 0 and sinks[1].trips == 0
    assert fast.count("\n") > 1
    assert fast == slow
