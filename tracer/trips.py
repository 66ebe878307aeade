"""Journeys the kernel stitched: struct tt_trip (bpf/tapttrace.h, stated once more here).

bpf/follow.c keeps the hops of an skb that was never cloned in a slot of an array (direct-mapped
by the skb's address), from the frame's first sighting until the skb is freed, and hands them over
in one record. A trip that ended
(TRIP_ENDED) and that user space knows nothing else about is a whole single-copy journey: the
Stitcher turns it into a Journey without any stitching (Stitcher.feed_trip), and journeys that
took the same path share one template (the hops' words, the verdict, the JSON around the numbers).
Anything else — a trip cut short because its skb was cloned or ran out of hop slots, or swept
out of its slot because its frame is still queued — is unpacked into the Events it stands for and
stitched like them.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

from . import frames
from .events import EVENT_SIZE, SNAPLEN, encode, event_name
from .records import Event, Hook

TRIP_HOPS = 10
TRIP_SLOTS = 1 << 13  # TT_TRIP_BITS in bpf/follow.c
TRIP_ENDED = 1  # the last hop freed the skb (dropped or consumed)
TRIP_CUT = 2  # handed over before its end; the skb's later events come as tt_events

# struct tt_trip: skb, frame_len, cap_len, nhops, flags, data[SNAPLEN], then TRIP_HOPS of
# struct tt_hop: ts_ns, location, netns, ifindex, reason, hook, cpu, ifname[16]
_HEAD = struct.Struct(f"<QIHBB{SNAPLEN}s")
_HOP = struct.Struct("<QQIIIHH16s")
TRIP_SIZE = _HEAD.size + TRIP_HOPS * _HOP.size  # 624
assert TRIP_SIZE != EVENT_SIZE  # records are told apart by their size
_NHOPS_AT = 14
# Per hop count, what says where each hop happened (all but ts_ns and cpu) and the frame's group
# bit (its first byte): the key of a path, in one unpack.
_PLACES = [struct.Struct("<16xB127x" + "8xQIIIH2x16s" * n) for n in range(TRIP_HOPS + 1)]
# The hops' timestamps in one unpack, per hop count.
_STAMPS = [struct.Struct("<" + "".join(f"{_HEAD.size + i * _HOP.size if i == 0 else _HOP.size - 8}x" + "Q"
                                       for i in range(n))) for n in range(TRIP_HOPS + 1)]
_HOOKS = {int(h): h for h in Hook}

# Whole journeys the kernel counted instead of handing them over (user space behind): keyed by
# their path as one 64-bit number, each path with one sample trip record (bpf/follow.c, tally()).
TALLY_PATHS = 1024  # TT_TALLY_PATHS
PATH_SIZE = 8  # the path's number (bpf/follow.c, path_of())


@dataclass(frozen=True)
class Trip:
    """One decoded trip record."""

    skb: int
    frame_len: int
    data: bytes
    flags: int
    hops: tuple[Event, ...]  # each hop as the Event the kernel would have sent for it


class TripError(ValueError):
    """A trip record that doesn't have the layout we expect."""


def is_trip(raw) -> bool:
    return len(raw) == TRIP_SIZE


def decode(raw) -> Trip:
    if len(raw) != TRIP_SIZE:
        raise TripError(f"trip of {len(raw)} bytes, expected {TRIP_SIZE}: bpf/tapttrace.h and tracer/trips.py disagree")
    skb, frame_len, cap_len, nhops, flags, data = _HEAD.unpack_from(raw)
    if not 1 <= nhops <= TRIP_HOPS:
        raise TripError(f"trip with {nhops} hops")
    data = captured(data, cap_len)
    hops = []
    for i in range(nhops):
        ts, location, netns, ifindex, reason, hook, cpu, name = _HOP.unpack_from(raw, _HEAD.size + i * _HOP.size)
        hook_ = _HOOKS.get(hook)
        if hook_ is None:
            raise TripError(f"unknown hook {hook}")
        hops.append(Event(ts_ns=ts, skb=skb, hook=hook_, netns=netns, ifindex=ifindex, ifname=event_name(name),
                          frame_len=frame_len, data=data, reason=reason, location=location, cpu=cpu))
    return Trip(skb, frame_len, data, flags, tuple(hops))


def head(raw) -> tuple[int, int, int, int, int, bytes]:
    """skb, frame_len, cap_len, nhops, flags, data (SNAPLEN bytes, cap_len of them captured)."""
    return _HEAD.unpack_from(raw)


def path_key(raw, nhops: int) -> tuple:
    """What decides a journey's words and verdict, without its times: per hop its location, device,
    namespace, drop reason and hook, and the frame's first byte (unicast or group)."""
    return _PLACES[nhops].unpack_from(raw)


def stamps(raw, nhops: int) -> tuple[int, ...]:
    return _STAMPS[nhops].unpack_from(raw)


def frame(raw) -> tuple[bytes, int]:
    """The frame's captured bytes and its length."""
    _, frame_len, cap_len, _, _, data = _HEAD.unpack_from(raw)
    return captured(data, cap_len), frame_len


def captured(data: bytes, cap_len: int) -> bytes:
    """The SNAPLEN bytes of a record cut to the cap_len the kernel could read."""
    return data if cap_len >= SNAPLEN else data[:cap_len]


def last_stamp(raw) -> int:
    """The time of a trip's latest hop; 0 for a trip with no hops or more than TRIP_HOPS (decode
    refuses it and follow counts it; reading its time must not stop follow first)."""
    n = raw[_NHOPS_AT]
    return _STAMPS[n].unpack_from(raw)[-1] if 0 < n <= TRIP_HOPS else 0


def pack(hops: list[Event], flags: int = TRIP_ENDED) -> bytes:
    """The record the kernel would hand over for these hops of one skb (recorded events replayed
    as trips: tests/test_trips.py, bench/pipeline.py)."""
    if not 1 <= len(hops) <= TRIP_HOPS:
        raise ValueError(f"a trip holds 1 to {TRIP_HOPS} hops, not {len(hops)}")
    first = hops[0]
    out = bytearray(_HEAD.pack(first.skb, first.frame_len, len(first.data), len(hops), flags,
                               first.data.ljust(SNAPLEN, b"\0")))
    for e in hops:
        out += _HOP.pack(e.ts_ns, e.location, e.netns, e.ifindex, e.reason, int(e.hook), e.cpu,
                         e.ifname.encode())
    return bytes(out.ljust(TRIP_SIZE, b"\0"))


def as_kernel_sends(events: list[Event]) -> tuple[list[bytes], int]:
    """A recorded event stream as bpf/follow.c hands it over with trips on (for replays:
    tests/test_trips.py, bench/pipeline.py): the events of a frame that one skb carried alone
    (no other skb with the same bytes: never cloned or copied) from a journey's start to its
    free, as one whole trip at the moment of the free; every other event as it came. Returns the
    records, in order, and how many are whole trips."""
    ends = (Hook.DROP, Hook.CONSUME)
    groups: list[list[Event]] = []
    open_: dict[int, list[Event]] = {}
    for e in events:  # one group per skb lifetime (addresses are reused after a free)
        g = open_.get(e.skb)
        if g is None:
            g = open_[e.skb] = []
            groups.append(g)
        g.append(e)
        if e.hook in ends:
            del open_[e.skb]
    carriers: dict[bytes, int] = {}
    for g in groups:
        fp = frames.fingerprint(g[0].data, g[0].frame_len)
        carriers[fp] = carriers.get(fp, 0) + 1
    whole = {id(g[-1]): g for g in groups
             if g[-1].hook in ends and len(g) <= TRIP_HOPS and g[0].hook in (Hook.RECEIVE, Hook.QUEUE)
             and carriers[frames.fingerprint(g[0].data, g[0].frame_len)] == 1}
    in_whole = {id(e) for g in whole.values() for e in g}
    out = []
    for e in events:
        if id(e) in whole:
            out.append(pack(whole[id(e)]))
        elif id(e) not in in_whole:
            out.append(encode(e))
    return out, len(whole)


class TripSlots:
    """bpf/follow.c's trip slots (a BPF_F_MMAPABLE array), mapped into this process.

    A slot is in use while its skb word is not 0. The kernel hands a trip over when its skb is
    freed; a trip still there after a while is a frame stuck somewhere (a guest not reading its
    tap), and the stitcher must hear of it within its idle time: sweep() copies such trips and
    frees their slots. The kernel may be adding a hop to a trip at that very moment (the frame
    moved on just then): that hop comes as the trip's first and only hop, or is lost."""

    def __init__(self, map_fd: int, slots: int = TRIP_SLOTS):
        page = os.sysconf("SC_PAGE_SIZE")
        size = -(-slots * TRIP_SIZE // page) * page
        self._mm = mmap.mmap(map_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._words = memoryview(self._mm).cast("Q")
        self._slots = slots

    def sweep(self, now_ns: int, older_than_ns: int) -> list[bytes]:
        words, mm, taken = self._words, self._mm, []
        step = TRIP_SIZE // 8
        for i in range(0, self._slots * step, step):
            if not words[i]:
                continue
            at = i * 8
            nhops = mm[at + _NHOPS_AT]
            if not 0 < nhops <= TRIP_HOPS:
                continue  # being filled in
            if now_ns - words[i + (_HEAD.size + (nhops - 1) * _HOP.size) // 8] < older_than_ns:
                continue
            raw = mm[at:at + TRIP_SIZE]
            words[i] = 0
            if int.from_bytes(raw[:8], "little"):
                taken.append(raw)
        return taken

    def close(self) -> None:
        self._words.release()
        self._mm.close()
