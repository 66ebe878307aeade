"""Property-based tests of what the kernel hands follow: ring-buffer records, trips, the ring's own
headers and the frames inside them (issue 14). Pure: no root.

Whatever bytes arrive, nothing may crash: an undecodable record is counted (FollowSummary's
decode_errors, shown in follow's summary line), a frame too short or too odd to decode gets a
summary that says what it is."""
from __future__ import annotations

import struct
import threading
from pathlib import Path

from fuzzing import FUZZ, FUZZ_SLOW
from hypothesis import given
from hypothesis import strategies as st
from test_trips import RecordedRing  # the recorded-batches follow source: the ring's bytes are fuzzed

from tracer import events as ev_codec
from tracer import frames, replay, ringbuf, trips
from tracer.config import FollowConfig
from tracer.follow import Annotator, run_follow
from tracer.records import Event, Hook
from tracer.sinks.jsonl import journey_to_dict
from tracer.stitch import Stitcher

REC = replay.load(Path(__file__).parent / "recordings" / "lab-healthy.jsonl")

# ---------------------------------------------------------------------------- frames

macs = st.binary(min_size=6, max_size=6)
ETHERTYPES = [frames.ETH_P_IP, frames.ETH_P_IPV6, frames.ETH_P_ARP, frames.ETH_P_8021Q, 0x88A8, 0x88CC, 0x8847,
              0x0000, 0xFFFF]


@st.composite
def ipv4(draw) -> bytes:
    ihl = draw(st.integers(0, 15))  # below 5 is malformed, above 5 carries options
    proto = draw(st.sampled_from([1, 6, 17, 47, 50, 58, 0, 255]))
    head = bytes([0x40 | ihl, 0]) + draw(st.binary(min_size=7, max_size=7)) + bytes([proto]) + \
        draw(st.binary(min_size=10, max_size=10))
    return head + draw(st.binary(max_size=max(0, ihl * 4 - 20))) + draw(st.binary(max_size=60))


@st.composite
def ipv6(draw) -> bytes:
    # A chain of extension headers (hop-by-hop, routing, fragment, destination options, AH) of any
    # length byte, ending in anything: the decoder walks what it knows and must stop at the end.
    chain = draw(st.lists(st.sampled_from([0, 43, 44, 60, 51]), max_size=5))
    last = draw(st.sampled_from([58, 6, 17, 59, 0, 255]))
    nexts = chain + [last]
    out = b"\x60" + draw(st.binary(min_size=5, max_size=5)) + bytes([nexts[0]]) + b"\x40" + \
        draw(st.binary(min_size=32, max_size=32))
    for i, _ in enumerate(chain):
        length = draw(st.integers(0, 255))
        out += bytes([nexts[i + 1], length]) + draw(st.binary(max_size=min(length * 8 + 6, 40)))
    if last == 58:
        out += bytes([draw(st.sampled_from([128, 129, 135, 136, 1, 143, 200]))]) + draw(st.binary(max_size=30))
    return out + draw(st.binary(max_size=20))


@st.composite
def arp(draw) -> bytes:
    op = draw(st.sampled_from([1, 2, 3, 0, 0xFFFF]))
    return b"\x00\x01\x08\x00\x06\x04" + struct.pack("!H", op) + draw(st.binary(min_size=0, max_size=40))


@st.composite
def ethernet_frames(draw) -> bytes:
    """Frames a bridge may carry: 802.1Q and QinQ tag stacks, IPv4 with odd header lengths, IPv6
    with extension headers, ARP, unknown ethertypes; cut anywhere (the snap length, a runt), or
    jumbo (only the first bytes are ever captured)."""
    tags = b"".join(struct.pack("!HH", draw(st.sampled_from([frames.ETH_P_8021Q, 0x88A8])),
                                draw(st.integers(0, 0xFFFF)))
                    for _ in range(draw(st.integers(0, 3))))
    ethertype = draw(st.sampled_from(ETHERTYPES) | st.integers(0, 0xFFFF))
    payload = draw(st.one_of(ipv4(), ipv6(), arp(), st.binary(max_size=ev_codec.SNAPLEN)))
    frame = draw(macs) + draw(macs) + tags + struct.pack("!H", ethertype) + payload
    return frame[:draw(st.integers(0, max(len(frame), 1)))] if draw(st.booleans()) else frame


@FUZZ
@given(ethernet_frames())
def test_any_frame_decodes_to_a_summary(frame):
    info = frames.decode(frame)
    assert isinstance(info.summary, str) and info.summary
    if len(frame) < 14:
        assert info.summary.startswith("runt frame")
    else:
        assert info.dst_mac == frame[:6].hex(":") and info.src_mac == frame[6:12].hex(":")
    # decode_flow shares one FrameInfo among a flow's frames: it must say what decode says.
    assert frames.decode_flow(frame) == info
    assert frames.decode(memoryview(frame)) == info  # records arrive as memoryviews
    frames.guest_addresses(info, info.src_mac)


# ---------------------------------------------------------------------------- events


names = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=15)


@st.composite
def kernel_events(draw) -> Event:
    u64, u32 = st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)
    return Event(ts_ns=draw(u64), skb=draw(u64), hook=draw(st.sampled_from(list(Hook))), netns=draw(u32),
                 ifindex=draw(u32), ifname=draw(names), frame_len=draw(u32),
                 data=draw(st.binary(max_size=ev_codec.SNAPLEN)), reason=draw(u32), location=draw(u64),
                 cpu=draw(u32))


@FUZZ
@given(kernel_events())
def test_an_event_comes_back_as_the_kernel_sent_it(e):
    assert ev_codec.decode(ev_codec.encode(e)) == e
    assert ev_codec.from_dict(ev_codec.to_dict(e)) == e


def record_bytes(size: int):
    """Records of exactly `size` bytes, mostly random, some with a known hook where a hook goes."""
    return st.binary(min_size=size, max_size=size)


any_record = st.one_of(
    st.builds(ev_codec.encode, kernel_events()),
    record_bytes(ev_codec.EVENT_SIZE),
    record_bytes(trips.TRIP_SIZE),
    st.binary(max_size=2 * trips.TRIP_SIZE),  # any size: the kernel and tracer/events.py disagree
)


@FUZZ
@given(st.lists(any_record, max_size=20))
def test_records_of_any_bytes_are_events_or_counted(raws):
    out, errors = ev_codec.decode_many(raws)
    assert len(out) + errors == len(raws)
    for raw in raws:
        if len(raw) != ev_codec.EVENT_SIZE:
            continue
        hook = struct.unpack_from("<H", raw, 40)[0]
        try:
            e = ev_codec.decode(raw)
        except ev_codec.DecodeError as err:
            assert f"unknown hook {hook}" in str(err)
        else:
            assert e.hook == hook and len(e.data) <= ev_codec.SNAPLEN
    for raw in raws:
        if len(raw) != ev_codec.EVENT_SIZE:
            try:
                ev_codec.decode(raw)
                raise AssertionError("decoded a record of the wrong size")
            except ev_codec.DecodeError as err:
                assert f"event of {len(raw)} bytes" in str(err)
        assert ev_codec.timestamp(raw) >= 0  # read on the last record of every batch (follow.stitch_clock)


# ---------------------------------------------------------------------------- trips


@st.composite
def trip_records(draw) -> bytes:
    """A trip the kernel could hand over (packed from events), with some of its bytes overwritten."""
    n = draw(st.integers(1, trips.TRIP_HOPS))
    first = draw(kernel_events())
    # struct tt_hop keeps the cpu in 16 bits
    hops = [Event(**{**first.__dict__, "cpu": first.cpu & 0xFFFF})] + \
        [Event(**{**draw(kernel_events()).__dict__, "skb": first.skb, "data": first.data,
                  "frame_len": first.frame_len, "cpu": draw(st.integers(0, 0xFFFF))}) for _ in range(n - 1)]
    raw = bytearray(trips.pack(hops, draw(st.sampled_from([trips.TRIP_ENDED, trips.TRIP_CUT, 0, 255]))))
    for at, value in draw(st.lists(st.tuples(st.integers(0, trips.TRIP_SIZE - 1), st.integers(0, 255)),
                                   max_size=4)):
        raw[at] = value  # nhops, cap_len, a hook, a timestamp out of order...
    return bytes(raw)


@FUZZ
@given(st.one_of(trip_records(), record_bytes(trips.TRIP_SIZE)))
def test_a_trip_of_any_bytes_decodes_or_says_why(raw):
    try:
        trip = trips.decode(raw)
    except trips.TripError as err:
        assert str(err)
    else:
        assert 1 <= len(trip.hops) <= trips.TRIP_HOPS
        assert trips.last_stamp(raw) == trip.hops[-1].ts_ns
    assert trips.last_stamp(raw) >= 0


@FUZZ
@given(st.lists(st.one_of(trip_records(), st.builds(ev_codec.encode, kernel_events())), min_size=1, max_size=12))
def test_the_stitcher_takes_any_trips_and_events(records):
    """The trip's head is read before its hops (a whole trip is built from a shape): whatever the
    bytes, feed_trip gives a journey, feeds events, or raises TripError, which follow counts."""
    stitcher = Stitcher(REC.devices, REC.namer)
    annotate = Annotator(REC.mac, set(REC.ips), REC.devices)
    journeys = []
    for raw in records:
        if trips.is_trip(raw):
            try:
                j = stitcher.feed_trip(raw)
            except trips.TripError:
                continue
            if j is not None:
                journeys.append(j)
        else:
            stitcher.feed(ev_codec.decode(raw))
    journeys += stitcher.flush(2**64, final=True)
    for j in journeys:
        journey_to_dict(annotate(j), 0)


def recorded_records():
    records, _ = trips.as_kernel_sends(REC.events[:40])
    return records


@FUZZ_SLOW
@given(st.lists(st.lists(st.one_of(st.sampled_from(recorded_records()), any_record, trip_records()), max_size=8),
                min_size=1, max_size=4))
def test_follow_counts_what_it_cannot_decode_and_goes_on(batches):
    """run_follow over batches of real records mixed with junk of every size: it must end, and
    every record that is neither an event nor a trip is counted in decode_errors."""
    stop = threading.Event()
    got = []
    summary = run_follow(FollowConfig(REC.mac, ips=tuple(REC.ips)), RecordedRing(batches, stop), REC.devices,
                         REC.namer, [], stop, on_journey=got.append, poll_ms=0)
    records = [r for b in batches for r in b]
    bad_events = ev_codec.decode_many([r for r in records if len(r) != trips.TRIP_SIZE])[1]
    bad_trips = 0
    for r in records:
        if len(r) == trips.TRIP_SIZE:
            try:
                trips.decode(r)
            except trips.TripError:
                bad_trips += 1
    assert summary.decode_errors == bad_events + bad_trips
    assert summary.journeys == len(got)


# ---------------------------------------------------------------------------- the ring itself


@st.composite
def rings(draw):
    """A ring's data area (mapped twice, as the kernel maps it) holding records whose headers may
    say anything, and consumer/producer positions somewhere in it."""
    size = 1 << draw(st.integers(5, 9))
    area = bytearray(draw(st.binary(min_size=size, max_size=size)))
    # Mostly plausible headers: a length, maybe BUSY or DISCARD, at 8-byte steps from cons.
    cons = draw(st.integers(0, 4 * size)) & ~7
    pos = cons
    for _ in range(draw(st.integers(0, 8))):
        length = draw(st.integers(0, size))
        flags = draw(st.sampled_from([0, 0, ringbuf.DISCARD_BIT, ringbuf.BUSY_BIT]))
        struct.pack_into("<I", area, pos & (size - 1), length | flags)
        pos += (length + ringbuf.HDR_SIZE + 7) & ~7
    prod = cons + (draw(st.integers(0, size)) & ~7)
    return bytes(area) * 2, cons, prod, size


@FUZZ
@given(rings())
def test_the_ring_is_walked_and_split_within_what_the_producer_committed(ring):
    data, cons, prod, size = ring
    end = ringbuf.walk(data, cons, prod, size - 1, limit=prod)
    assert cons <= end <= prod  # never past what the kernel committed: consumer_pos is written back
    block = data[cons & (size - 1):(cons & (size - 1)) + (end - cons)]
    for rec in ringbuf.split(block):
        assert len(rec) <= len(block)
    ringbuf.split(data[:max(0, len(data) // 2 - 3)])  # a run cut anywhere: its records, no crash
