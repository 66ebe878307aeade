"""Stitch kernel events into per-frame journeys and decide how each journey ended.

An skb's address identifies a frame while the skb lives; crossing a veth into another
namespace keeps the address, so that is one journey. Flooding clones the skb and the bridge
may replace it (skb_share_check), so a new address whose content fingerprint matches a live
journey joins it as another copy, as long as it doesn't look like a fresh frame (received
from a device, or sent by a stack on a device that is not a bridge port).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Optional, Protocol, Union

from . import frames, trips
from .records import (
    BR_HAIRPIN_MODE,
    EGRESS_GSO,
    EGRESS_MTU_MASK,
    HOOK_FUNCTIONS,
    NF_FAMILIES,
    NF_HOOK_SHIFT,
    NF_HOOKS,
    NF_KNOWN,
    NF_PF_SHIFT,
    NF_VERDICT_MASK,
    NF_VERDICTS,
    PORT_FLAGS_SHIFT,
    PORT_INGRESS,
    PORT_KNOWN,
    PORT_LOCAL_RCV,
    PORT_STATE_MASK,
    STP_STATES,
    TAP_FULL,
    TAP_KNOWN,
    TAP_NO_READER,
    TAP_SIZE_MASK,
    Copy,
    Device,
    Event,
    Hook,
    Hop,
    Journey,
    Verdict,
)

MS = 1_000_000


class DeviceDirectory(Protocol):
    """Names what events identify by (netns inode, ifindex)."""

    def device(self, netns: int, ifindex: int, ifname: str) -> Optional[Device]: ...

    def ports(self, netns: int, bridge_ifindex: int) -> list[Device]: ...

    def netns_name(self, netns: int) -> str: ...


@dataclass(frozen=True)
class Namer:
    """Turns kernel numbers into words: drop reasons, code addresses, who reads a tap."""

    reason: Callable[[int], str] = lambda r: f"unknown:{r}"
    symbol: Callable[[int], str] = lambda a: f"0x{a:x}" if a else ""
    tap_reader: Callable[[int, str], str] = lambda netns, dev: ""
    # A netfilter hop's chain, by the address the kernel gave (its location): (table's family as nft
    # names it, table, chain), or None when the kernel's map no longer has it.
    nf_chain: Callable[[int], Optional[tuple[str, str, str]]] = lambda addr: None


@dataclass
class _CopyState:
    index: int
    skb: int
    events: list[tuple[Event, Optional[Device]]] = field(default_factory=list)
    ended: bool = False

    @property
    def side(self) -> bool:
        """A copy seen only being consumed (a packet socket's clone, e.g. tcpdump): not the bridge's doing."""
        return all(e.hook == Hook.CONSUME for e, _ in self.events)


@dataclass
class _JourneyState:
    id: int
    fp: bytes
    first: Event
    last_ns: int
    copies: list[_CopyState] = field(default_factory=list)
    ended_ns: int = 0
    awaits_clone: bool = False  # dropped where a raw socket's clone may still come (_add)

    @property
    def live(self) -> bool:
        return any(not c.ended for c in self.copies)


class JourneyShape:
    """What every journey along one path shares (the kernel stitched them: tracer/trips.py):
    the hops' words, the copies, the verdict. `cache` is for sinks' renderings of it."""

    __slots__ = ("base", "hop_dicts", "generation", "cache", "template", "netns")

    def __init__(self, template: Journey, generation: int):
        self.template = template  # the first journey on the path: what sinks compile renderings from
        self.hop_dicts = [h.__dict__ for h in template.hops]
        self.netns = frozenset(h.netns for h in template.hops)  # follow's --netns filter
        self.base = {**_JOURNEY_DEFAULTS, "shape": self}
        self.base.update((k, v) for k, v in template.__dict__.items()
                         if k in ("copies", "verdict", "reason", "location", "drop_dev", "flood_ports",
                                  "flood_missed", "bridge", "fdb", "fdb_local"))
        self.generation = generation
        self.cache: dict[Callable[..., Any], Any] = {}  # keyed by the function that rendered it


class ShapedTrip:
    """A whole journey the kernel stitched along a path already seen: its JourneyShape and the
    few values that differ from one such journey to the next. For a sink that renders it from
    them (follow --json: sinks/jsonl.py), without building its Journey and Hops (half of what a
    journey cost); journey() builds them for anything else."""

    __slots__ = ("shape", "id", "stamps", "frame_len", "frame", "info")

    def __init__(self, shape: JourneyShape, id: int, stamps: tuple, frame_len: int, frame: bytes,
                 info: frames.FrameInfo):
        self.shape, self.id, self.stamps, self.frame_len, self.frame, self.info = (shape, id, stamps, frame_len,
                                                                                   frame, info)

    def journey(self) -> Journey:
        j = _new(Journey)
        d = j.__dict__
        d.update(self.shape.base)
        info, stamps = self.info, self.stamps
        d["id"], d["first_ns"], d["last_ns"], d["frame_len"], d["frame"] = (self.id, stamps[0], stamps[-1],
                                                                          self.frame_len, self.frame)
        d["src_mac"], d["dst_mac"], d["ethertype"], d["summary"] = (info.src_mac, info.dst_mac, info.ethertype,
                                                                 info.summary)
        hops = []
        for h, ts in zip(self.shape.hop_dicts, stamps):
            hop = _new(Hop)
            hd = hop.__dict__
            hd.update(h)
            hd["ts_ns"] = ts
            hops.append(hop)
        d["hops"] = hops
        return j


@dataclass
class StitchStats:
    events: int = 0
    journeys: int = 0
    late_events: int = 0  # events for skbs of journeys already reported (e.g. read after "queued")
    trips: int = 0  # whole journeys the kernel stitched (built from a shape, never stitched here)


class Stitcher:
    """Feed events in ring-buffer order; collect finished journeys with flush().

    flush() costs what is due, not what is open: journeys whose every copy ended wait in
    `_ended` in the order they ended (a dict used as an ordered queue), and every open journey
    has an entry (last event time when pushed, id) in the heap `_idle`; flush pops both from
    the front only while the front is due. An entry whose journey saw events since it was
    pushed is pushed again with its new last event time when it comes up.
    """

    def __init__(self, devices: DeviceDirectory, namer: Namer = Namer(), *,
                 clone_window_ns: int = 10 * MS, grace_ns: int = 20 * MS, idle_ns: int = 1000 * MS):
        self.devices = devices
        self.namer = namer
        self.clone_window_ns = clone_window_ns
        self.grace_ns = grace_ns
        # An unfinished journey (a copy whose end was never seen) is given up after idle_ns without
        # events. The caller may shorten it while events are being lost (see run_follow): a lost
        # consume/kfree event otherwise keeps the journey in memory for the whole idle time.
        self.idle_ns = idle_ns
        self.stats = StitchStats()
        self._live: dict[int, tuple[_JourneyState, _CopyState]] = {}
        self._by_fp: dict[bytes, _JourneyState] = {}
        self._open: dict[int, _JourneyState] = {}
        self._ended: dict[int, _JourneyState] = {}  # every copy ended, in the order they did
        self._idle: list[tuple[int, int]] = []  # heap of (last_ns when pushed, journey id)
        self._retired: dict[int, bytes] = {}  # skb -> fingerprint of reported journeys' unfinished copies
        self._next_id = 1
        self._hop_words: dict[tuple, tuple] = {}  # (hook, netns, ifindex, ifname) -> (dev, words...)
        self._shapes: dict[tuple, JourneyShape] = {}  # trips.path_key -> what journeys on it share

    def feed(self, ev: Event) -> None:
        self.stats.events += 1
        fp = frames.fingerprint(ev.data, ev.frame_len)
        dev = self.devices.device(ev.netns, ev.ifindex, ev.ifname) if ev.ifindex else None
        js: Optional[_JourneyState]
        known = self._live.get(ev.skb)
        if known is not None:
            js, cs = known
            if js.fp == fp or ev.hook in (Hook.DROP, Hook.CONSUME):
                self._add(js, cs, ev, dev)
                return
            # Same address, other bytes: the skb was freed unseen and the address reused.
            cs.ended = True
            del self._live[ev.skb]
        if self._retired.get(ev.skb) == fp:
            self.stats.late_events += 1
            if ev.hook in (Hook.DROP, Hook.CONSUME):
                del self._retired[ev.skb]
            return
        js = self._clone_parent(ev, fp, dev)
        if js is None and (js := self._orphans_of(ev, fp)) is not None:
            self._adopt(js, ev, dev)
            return
        if js is None:
            js = _JourneyState(self._next_id, fp, ev, ev.ts_ns)
            self._next_id += 1
            self._open[js.id] = js
            self._by_fp[fp] = js
            heapq.heappush(self._idle, (ev.ts_ns, js.id))
        elif js.id in self._ended:
            del self._ended[js.id]  # a clone of an ended journey: it is live again
            js.ended_ns = 0
        cs = _CopyState(len(js.copies), ev.skb)
        js.copies.append(cs)
        self._live[ev.skb] = (js, cs)
        self._add(js, cs, ev, dev)

    def feed_trip(self, raw) -> Optional[Journey]:
        """A trip record (tracer/trips.py). A whole one that nothing here is waiting for comes back
        as its Journey at once; anything else is fed as the events it stands for (None)."""
        j = self.take_trip(raw)
        return j.journey() if isinstance(j, ShapedTrip) else j

    def take_trip(self, raw) -> Union[Journey, ShapedTrip, None]:
        """feed_trip, but a whole trip along a path seen before comes back as a ShapedTrip."""
        skb, frame_len, cap_len, nhops, flags, data = trips.head(raw)
        if flags != trips.TRIP_ENDED or skb in self._live or skb in self._retired or not 0 < nhops <= trips.TRIP_HOPS:
            for ev in trips.decode(raw).hops:
                self.feed(ev)
            return None
        stamps = trips.stamps(raw, nhops)
        key = trips.path_key(raw, nhops)
        shape = self._shapes.get(key)
        if shape is None or shape.generation != getattr(self.devices, "refreshes", 0) or \
                (nhops > 1 and list(stamps) != sorted(stamps)):  # a shape's hops are in time order
            return self._new_shape(raw, key)
        self.stats.events += nhops
        self.stats.trips += 1
        self.stats.journeys += 1
        data = trips.captured(data, cap_len)
        trip = ShapedTrip(shape, self._next_id, stamps, frame_len, data, frames.decode_flow(data))
        self._next_id += 1
        return trip

    def _new_shape(self, raw, key: tuple) -> Journey:
        trip = trips.decode(raw)
        journey = self._whole_trip(trip)
        stamps = [ev.ts_ns for ev in trip.hops]
        if stamps == sorted(stamps):
            if len(self._shapes) >= 4096:
                self._shapes.clear()
            journey.shape = self._shapes[key] = JourneyShape(journey, getattr(self.devices, "refreshes", 0))
        return journey

    def _whole_trip(self, trip: trips.Trip) -> Journey:
        """A whole trip built as the events it stands for would have been: the exact path."""
        self.stats.events += len(trip.hops)
        self.stats.trips += 1
        self.stats.journeys += 1
        device = self.devices.device
        cs = _CopyState(0, trip.skb, [(ev, device(ev.netns, ev.ifindex, ev.ifname) if ev.ifindex else None)
                                      for ev in trip.hops], ended=True)
        js = _JourneyState(self._next_id, b"", trip.hops[0], max(ev.ts_ns for ev in trip.hops), [cs])
        self._next_id += 1
        return self._build(js)

    def _clone_parent(self, ev: Event, fp: bytes, dev: Optional[Device]) -> Optional[_JourneyState]:
        js = self._by_fp.get(fp)
        if js is None or js.id not in self._open:
            return None
        if not js.live and ev.ts_ns - js.last_ns > self.clone_window_ns and not js.awaits_clone:
            return None
        if _starts_journey(ev, dev):
            return None
        return js

    def _orphans_of(self, ev: Event, fp: bytes) -> Optional[_JourneyState]:
        """An open journey of clones whose parent is this journey start, seen after them.

        With trips (tracer/trips.py) a frame's hops reach user space when its trip is handed
        over, and a clone can end on another CPU before that: ping_rcv()'s raw-socket clone is
        read and consumed by the pinging process while the original is still on its way to
        being dropped. The clone's events then arrive first and start a journey of their own
        that no journey start begins."""
        js = self._by_fp.get(fp)
        if js is None or js.id not in self._open or js.first.ts_ns <= ev.ts_ns:
            return None
        first_ev, first_dev = js.copies[0].events[0]
        if _starts_journey(first_ev, first_dev):
            return None  # a frame of its own with the same bytes, not this one's clone
        return js

    def _adopt(self, js: _JourneyState, ev: Event, dev: Optional[Device]) -> None:
        """The parent becomes copy 0, as it is when its events come first."""
        for cs in js.copies:
            cs.index += 1
        cs = _CopyState(0, ev.skb)
        js.copies.insert(0, cs)
        js.first = ev  # (a journey of clones only is never in _ended: see _add)
        self._live[ev.skb] = (js, cs)
        self._add(js, cs, ev, dev)

    def _add(self, js: _JourneyState, cs: _CopyState, ev: Event, dev: Optional[Device]) -> None:
        cs.events.append((ev, dev))
        if ev.ts_ns > js.last_ns:
            js.last_ns = ev.ts_ns
        if ev.hook in (Hook.DROP, Hook.CONSUME):
            cs.ended = True
            self._live.pop(ev.skb, None)
            # A journey that no journey start began (clones only) waits the idle time, not the
            # grace: with trips its parent's hops may still be in the kernel (a frame a packet
            # socket cloned on its way to a guest that reads it later: _orphans_of).
            if not js.live and _starts_journey(*js.copies[0].events[0]):
                if ev.hook == Hook.DROP and self._no_socket(ev) and not any(c.side for c in js.copies):
                    # ping_rcv()'s drop of an echo reply whose raw-socket clone the pinging process
                    # may not have read yet (tens of ms under load; _verdict then says "dropped
                    # NO_SOCKET" for the host's own ping): it waits the idle time, as a journey of
                    # clones does, and takes that clone however late it comes.
                    js.awaits_clone = True
                    return
                js.ended_ns = js.last_ns
                ended = self._ended
                ended.pop(js.id, None)  # ended again (a consume after the last copy's drop): to the back
                ended[js.id] = js

    def _no_socket(self, ev: Event) -> bool:
        """A drop that a raw socket's clone makes the host's delivery (_verdict, _raw_clone_drop)."""
        return _raw_clone_drop(self.namer.reason(ev.reason), self.namer.symbol(ev.location))

    def flush(self, now_ns: int, final: bool = False, limit: Optional[int] = None) -> list[Journey]:
        """Journeys that are over: every copy ended (and no clone can still show up), or idle too long.
        At most `limit` of them (the earliest due first), so a caller can look at its stop flag in
        between; within one call they come in the order of their first event."""
        cap = len(self._open) if limit is None else limit
        done: list[_JourneyState] = []
        js: Optional[_JourneyState]
        ended = self._ended
        if final:
            done = list(islice(self._open.values(), cap))
        else:
            grace = self.grace_ns
            taken = set()
            while ended and len(done) < cap:
                js = next(iter(ended.values()))
                if now_ns - js.ended_ns < grace:
                    break
                del ended[js.id]
                taken.add(js.id)
                done.append(js)
            heap, idle, open_ = self._idle, self.idle_ns, self._open
            while heap and len(done) < cap and now_ns - heap[0][0] >= idle:
                _, jid = heapq.heappop(heap)
                js = open_.get(jid)
                if js is None or jid in taken:
                    continue  # reported already (its entry stays until it comes up)
                if now_ns - js.last_ns < idle:
                    heapq.heappush(heap, (js.last_ns, jid))  # it saw events since: not idle yet
                    continue
                ended.pop(jid, None)
                done.append(js)
        if len(done) > 1:
            done.sort(key=_first_ts)
        out = []
        for js in done:
            del self._open[js.id]
            ended.pop(js.id, None)
            if self._by_fp.get(js.fp) is js:
                del self._by_fp[js.fp]
            for cs in js.copies:
                if not cs.ended:
                    self._live.pop(cs.skb, None)
                    self._retired[cs.skb] = js.fp
            out.append(self._build(js))
        excess = len(self._retired) - 65536
        if excess > 0:  # bounded: the oldest unfinished copies are forgotten
            for skb in list(islice(self._retired, excess)):
                del self._retired[skb]
        if not self._open:
            self._idle.clear()
        self.stats.journeys += len(out)
        return out

    @property
    def open_journeys(self) -> int:
        return len(self._open)

    # -- verdicts -------------------------------------------------------------------------

    def _build(self, js: _JourneyState) -> Journey:
        first = js.first
        info = frames.decode(first.data)
        journey = Journey(
            id=js.id, first_ns=first.ts_ns, last_ns=js.last_ns, src_mac=info.src_mac,
            dst_mac=info.dst_mac, ethertype=info.ethertype, summary=info.summary,
            frame_len=first.frame_len, frame=first.data,
        )
        if len(js.copies) == 1:  # the common case: no clone, the hops in time order
            cs = js.copies[0]
            hop = self._hop
            journey.hops = [hop(ev, dev, 0, cs) for ev, dev in sorted(cs.events, key=_ts_of_pair)]
        else:
            events = sorted(((ev, dev, cs.index) for cs in js.copies for ev, dev in cs.events),
                            key=lambda t: (t[0].ts_ns, t[2]))
            journey.hops = [self._hop(ev, dev, ci, js.copies[ci]) for ev, dev, ci in events]
        journey.copies = [self._outcome(cs) for cs in js.copies if not cs.side]
        self._verdict(journey, js)
        return journey

    def _hop(self, ev: Event, dev: Optional[Device], copy: int, cs: _CopyState) -> Hop:
        hook = ev.hook
        if hook == Hook.RECEIVE or hook == Hook.QUEUE:
            # The words of a receive or a send depend on the device only: remembered per device
            # (and checked to be the same Device object, so a refreshed table is seen).
            key = (hook, ev.netns, ev.ifindex, ev.ifname)
            hit = self._hop_words.get(key)
            if hit is None or hit[0] is not dev:
                if len(self._hop_words) >= 4096:
                    self._hop_words.clear()
                ns = self.devices.netns_name(ev.netns) if ev.netns else ""
                kind = ("passed-up" if dev and dev.is_bridge else "received") if hook == Hook.RECEIVE else "sent"
                hit = self._hop_words[key] = (dev, kind, ns, dev.name if dev else ev.ifname, _role(dev))
            return _new_hop(ev.ts_ns, copy, hit[1], hit[2], hit[3], hit[4])
        ns = self.devices.netns_name(ev.netns) if ev.netns else ""
        name = dev.name if dev else ev.ifname
        role = _role(dev)
        if ev.hook == Hook.RECEIVE:
            kind = "passed-up" if dev and dev.is_bridge else "received"
            return Hop(ev.ts_ns, copy, kind, ns, name, role)
        if ev.hook == Hook.QUEUE:
            return Hop(ev.ts_ns, copy, "sent", ns, name, role)
        if ev.hook == Hook.FLOOD:
            bridge = (dev.name if dev.is_bridge else dev.master_name) if dev else name
            return Hop(ev.ts_ns, copy, "flood-decision", ns, bridge, "bridge", _FLOOD_KINDS.get(ev.reason & 0xFF, ""))
        if ev.hook in _BRIDGE_HOP_EVENTS:
            return _bridge_hop(ev, copy, ns, name, role, self.namer)
        where = self.namer.symbol(ev.location)
        if ev.hook == Hook.DROP:
            return Hop(ev.ts_ns, copy, "dropped", ns, name, role, self.namer.reason(ev.reason), where)
        tap = _last_tap_queue(cs, before=ev)
        if tap is not None:
            reader = self.namer.tap_reader(tap.netns, tap.name)
            return Hop(ev.ts_ns, copy, "read", self.devices.netns_name(tap.netns), tap.name, "tap",
                       location=where, reader=reader)
        return Hop(ev.ts_ns, copy, "consumed", ns, name, role, location=where)

    def _outcome(self, cs: _CopyState) -> Copy:
        copy = self._end_of(cs)
        port = next((d for e, d in cs.events if e.hook == Hook.QUEUE and d and d.master is not None), None)
        copy.port = port.name if port else ""
        return copy

    def _end_of(self, cs: _CopyState) -> Copy:
        last_ev, last_dev = cs.events[-1]
        tap = _last_tap_queue(cs)
        up = next((d for e, d in reversed(cs.events) if e.hook == Hook.RECEIVE and d and d.is_bridge), None)
        # Only a send after the frame entered a bridge (or out of a bridge port) is the bridge
        # forwarding it; the remote sender's own transmission is not.
        entered = next((i for i, (e, d) in enumerate(cs.events) if d is not None and (
            (e.hook == Hook.RECEIVE and d.master is not None) or d.is_bridge)), len(cs.events))
        sent = next((d for e, d in reversed(cs.events[entered:])
                     if e.hook == Hook.QUEUE and d and not d.is_tap and not d.is_bridge), None)
        ns = lambda d: self.devices.netns_name(d.netns) if d else ""  # noqa: E731
        exit_port = next((d for e, d in cs.events if e.hook == Hook.QUEUE and d and d.master is not None
                          and not d.is_tap), None)
        beyond_bridge = exit_port is not None and last_ev.netns != exit_port.netns
        if cs.ended and last_ev.hook == Hook.DROP and not beyond_bridge:
            name = last_dev.name if last_dev else last_ev.ifname
            return Copy(cs.index, Verdict.DROPPED.value, name, self.devices.netns_name(last_ev.netns)
                        if last_ev.netns else "", self.namer.reason(last_ev.reason),
                        self.namer.symbol(last_ev.location))
        if tap is not None:
            outcome = Verdict.DELIVERED if cs.ended else Verdict.QUEUED
            return Copy(cs.index, outcome.value, tap.name, ns(tap))
        if up is not None:
            return Copy(cs.index, Verdict.LOCAL.value if cs.ended else "unfinished", up.name, ns(up))
        if sent is not None:
            return Copy(cs.index, Verdict.FORWARDED.value, sent.name, ns(sent))
        if cs.ended:
            rx = next((d for e, d in reversed(cs.events) if d is not None), None)
            return Copy(cs.index, Verdict.LOCAL.value, rx.name if rx else "", ns(rx))
        return Copy(cs.index, "unfinished", last_dev.name if last_dev else last_ev.ifname, ns(last_dev))

    def _verdict(self, journey: Journey, js: _JourneyState) -> None:
        copies = journey.copies
        ingress = _bridge_ingress(js)
        if ingress is not None:
            journey.bridge = ingress.master_name
        group = bool(js.first.data[:1]) and js.first.data[0] & 1 == 1  # broadcast/multicast destination
        if not group:
            journey.fdb = _fdb_decision(js)
            if journey.fdb == "local" and ingress is not None and ingress.master is not None:
                # A local entry is a port's (or the bridge's) own address: which one holds it.
                ports = self.devices.ports(ingress.netns, ingress.master)
                bridge = self.devices.device(ingress.netns, ingress.master, ingress.master_name)
                holder = next((d for d in [*ports, bridge] if d is not None and d.mac == journey.dst_mac), None)
                journey.fdb_local = holder.name if holder is not None else ""
        if len(copies) > 1 or (group and ingress is not None and copies):
            journey.verdict = Verdict.FLOODED.value
            got = [c.port for c in copies if c.port]
            journey.flood_ports = sorted(set(got))
            if ingress is not None and ingress.master is not None:
                ports = self.devices.ports(ingress.netns, ingress.master)
                journey.flood_missed = sorted(p.name for p in ports
                                              if p.name not in got and p.ifindex != ingress.ifindex)
            return
        if not copies:  # only a packet socket's view of it
            journey.verdict = Verdict.LOCAL.value
            return
        c = copies[0]
        if c.outcome == Verdict.DROPPED.value and any(cs.side for cs in js.copies) and \
                _raw_clone_drop(c.reason, c.location):
            # ping_rcv() drops the original after a raw socket took its clone: delivered to the host.
            # Before 5.17 the free has no reason: icmp_rcv()/icmpv6_rcv() free it after ping_rcv().
            c.outcome, c.reason, c.location = Verdict.LOCAL.value, "", ""
        journey.verdict = c.outcome
        if c.outcome == Verdict.DROPPED.value:
            journey.reason, journey.location, journey.drop_dev = c.reason, c.location, c.dev


def _starts_journey(ev: Event, dev: Optional[Device]) -> bool:
    """A fresh frame from a wire, a peer or a guest, or a stack sending a frame of its own."""
    if ev.hook == Hook.RECEIVE:
        return not (dev and dev.is_bridge)
    if ev.hook == Hook.QUEUE:
        return not (dev and dev.master is not None)
    return False


def _ts_of_pair(pair: tuple[Event, Optional[Device]]) -> int:
    return pair[0].ts_ns


_HOP_DEFAULTS = {"reason": "", "location": "", "reader": "", "detail": ""}
_JOURNEY_DEFAULTS = {"toward_guest": False, "note": "", "vm": ""}
_new = object.__new__


def _new_hop(ts_ns: int, copy: int, event: str, netns: str, dev: str, role: str) -> Hop:
    """Hop(ts_ns, copy, event, netns, dev, role) without the frozen dataclass's per-field setattr."""
    h = object.__new__(Hop)
    d = h.__dict__
    d.update(_HOP_DEFAULTS)
    d["ts_ns"], d["copy"], d["event"], d["netns"], d["dev"], d["role"] = ts_ns, copy, event, netns, dev, role
    return h


def _first_ts(js: _JourneyState) -> tuple[int, int]:
    return js.first.ts_ns, js.id


# Where a kernel without drop reasons frees an echo reply that no ping socket wanted (a raw socket,
# `ping`'s, took a clone of it first): the host's stack, not a drop on the way.
_ECHO_REPLY_FREES = ("icmp_rcv", "icmpv6_rcv")


def _raw_clone_drop(reason: str, location: str) -> bool:
    """A drop (its reason's and location's names) that a raw socket's clone of the frame makes the
    host's delivery: ping_rcv()'s NO_SOCKET, or before 5.17 (no reasons) a free in icmp_rcv()."""
    return reason == "NO_SOCKET" or (not reason and location.split("+")[0] in _ECHO_REPLY_FREES)


_FLOOD_KINDS = {0: "unknown unicast", 1: "multicast", 2: "broadcast"}

# Hops from inside the bridge, the tap and nf_tables (fentry/fexit/kprobe): the event of each.
_BRIDGE_HOP_EVENTS = {Hook.FORWARD: "to-port", Hook.FLOOD_PORT: "flood-port", Hook.PASS_UP: "to-host",
                      Hook.EGRESS: "egress", Hook.EGRESS_NF: "egress", Hook.TAP_XMIT: "tap-xmit",
                      Hook.NF_CHAIN: "netfilter"}


def port_fault(facts: int) -> str:
    """Why the bridge won't send the frame to the port whose facts (bpf/tapttrace.h TT_PORT_*) a
    to-port or flood-port hop carries, as should_deliver() decides it: "hairpin" (the port it came
    in by, hairpin off), "port-<STP state>"; "" when it will (or the kernel gave no facts: 5.10's
    bridge has no BTF)."""
    if not facts & PORT_KNOWN:
        return ""
    flags = facts >> PORT_FLAGS_SHIFT
    if facts & PORT_INGRESS and not flags & BR_HAIRPIN_MODE:
        return "hairpin"
    state = facts & PORT_STATE_MASK
    if state != 3:
        return f"port-{STP_STATES.get(state, f'state-{state}')}"
    return ""


def port_refusal(facts: int) -> str:
    """port_fault's words: "refused: port listening", … ("" when the port takes the frame)."""
    return _refusal_words(port_fault(facts))


def _refusal_words(fault: str) -> str:
    if fault == "hairpin":
        return "refused: it is the port the frame came in by (hairpin off)"
    if fault.startswith("port-state-"):
        return f"refused: port in STP state {fault.removeprefix('port-state-')}"
    return f"refused: port {fault.removeprefix('port-')}" if fault else ""


def egress_fit(hook: Hook, facts: int, frame_len: int, data: bytes) -> tuple[str, str]:
    """Whether the frame fits the port it leaves by, as the kernel weighs it next, from the egress
    hop's facts (bpf/tapttrace.h TT_EGRESS_*): (fault, words): ("", "fits MTU 1500"),
    ("too-big", "too big: 1028 bytes > MTU 576"), …

    br_dev_queue_push_xmit's is_skb_forwardable() lets a frame of MTU + the Ethernet header + a
    VLAN tag (18 bytes) through, and any GSO skb (segmented later). br_nf_dev_queue_xmit, first
    with br_netfilter, holds an IP packet to the MTU itself and fragments an IPv4 one without DF
    instead of dropping it; anything else goes on to br_dev_queue_push_xmit and its own hop."""
    mtu = facts & EGRESS_MTU_MASK
    l3 = frame_len - 14
    too_big = ("too-big", f"too big: {l3} bytes > MTU {mtu}")
    if facts & EGRESS_GSO:
        return "", f"fits: a GSO frame ({l3} bytes), segmented for MTU {mtu} later"
    if hook == Hook.EGRESS_NF:
        ethertype = data[12:14] if len(data) >= 14 else b""
        if l3 <= mtu:
            return "", f"fits MTU {mtu}"
        if ethertype not in (b"\x08\x00", b"\x86\xdd"):
            return "", ""  # not br_netfilter's to judge: br_dev_queue_push_xmit's hop says
        if ethertype == b"\x08\x00" and len(data) >= 21 and not data[20] & 0x40:  # IPv4 without DF
            return "", f"too big for MTU {mtu} ({l3} bytes): br_netfilter fragments it"
        return too_big
    return too_big if frame_len > mtu + 18 else ("", f"fits MTU {mtu}")


def tap_queue(facts: int) -> tuple[str, str]:
    """What tun_net_xmit() finds for the frame, from the tap-xmit hop's facts (bpf/tapttrace.h
    TT_TAP_*): (fault, words): ("queue-full", "its queue is full (500 frames): …"), ("no-reader",
    …), ("", "room in its queue of 500"); ("", "") without tun's BTF (5.10)."""
    if not facts & TAP_KNOWN:
        return "", ""
    if facts & TAP_NO_READER:
        return "no-reader", "no process holds the tap's queue: tun drops it"
    size = facts & TAP_SIZE_MASK
    if facts & TAP_FULL:
        return "queue-full", f"its queue is full ({size} frames): the holder is not reading"
    return "", f"room in its queue of {size}"


def nf_verdict(facts: int, chain: Optional[tuple[str, str, str]]) -> tuple[str, str]:
    """What an nf_tables base chain decided for the frame, from the netfilter hop's facts
    (bpf/tapttrace.h TT_NF_*) and the chain's names: (fault, words): ("netfilter-drop", "drop: chain
    forward of table bridge filter (bridge forward hook)"), ("", "accept: chain FORWARD of table ip
    filter (ip forward hook)"); ("", "") when the kernel read nothing."""
    if not facts & NF_KNOWN:
        return "", ""
    verdict = facts & NF_VERDICT_MASK
    family_no, hook_no = (facts >> NF_PF_SHIFT) & 0xFF, (facts >> NF_HOOK_SHIFT) & 0xFF
    pf = NF_FAMILIES.get(family_no, f"family {family_no}")
    hooks = NF_HOOKS.get("ip" if pf in ("ip6", "inet") else pf, ())
    hook = f"{pf} {hooks[hook_no]} hook" if hook_no < len(hooks) else f"{pf}, hook {hook_no}"
    where = (f"chain {chain[2]} of table {chain[0]} {chain[1]}" if chain and chain[0] else
             f"chain {chain[2]} of table {chain[1]}" if chain else "an nf_tables chain")
    words = f"{NF_VERDICTS.get(verdict, f'verdict {verdict}')}: {where} ({hook})"
    return ("netfilter-drop" if verdict == 0 else ""), words


def _bridge_hop(ev: Event, copy: int, ns: str, name: str, role: str, namer: Namer) -> Hop:
    hook = ev.hook
    detail = fault = ""
    if hook in (Hook.FORWARD, Hook.FLOOD_PORT):
        fault = port_fault(ev.reason)
        detail = _refusal_words(fault)
        if hook == Hook.FLOOD_PORT and fault == "hairpin":
            fault, detail = "", "not back out the port it came in by"  # every flood skips its way in: no fault
        if hook == Hook.FORWARD and ev.reason & PORT_LOCAL_RCV:
            detail = "; ".join(x for x in (detail, "the host gets a copy too") if x)
    elif hook in (Hook.EGRESS, Hook.EGRESS_NF) and ev.reason & EGRESS_MTU_MASK:
        fault, detail = egress_fit(hook, ev.reason, ev.frame_len, ev.data)
    elif hook == Hook.TAP_XMIT:
        fault, detail = tap_queue(ev.reason)
    elif hook == Hook.NF_CHAIN:
        fault, detail = nf_verdict(ev.reason, namer.nf_chain(ev.location))
    return Hop(ev.ts_ns, copy, _BRIDGE_HOP_EVENTS[hook], ns, name, role, location=HOOK_FUNCTIONS[hook],
               detail=detail, fault=fault)


def _fdb_decision(js: _JourneyState) -> str:
    """The bridge's FDB decision for a unicast frame, from its own hops: the port br_forward() was
    given, "miss" for a flood of unknown unicast, "local" for a frame passed up with neither (the
    destination is the bridge's own address); "" when the bridge's hops are not there to say."""
    forward = flood = up = ""
    for cs in js.copies:
        for i, (ev, dev) in enumerate(cs.events):
            if ev.hook == Hook.FORWARD and not forward:
                forward = dev.name if dev else ev.ifname
                if not forward:  # no BTF of the port (5.10): the port it was then sent out of
                    forward = next((d.name for e, d in cs.events[i:] if e.hook == Hook.QUEUE and d is not None
                                    and d.master is not None), "")
            elif ev.hook == Hook.FLOOD and ev.reason & 0xFF == 0:
                flood = "miss"
            elif ev.hook == Hook.PASS_UP:
                up = "local"
    return forward or flood or up


def _role(dev: Optional[Device]) -> str:
    if dev is None:
        return ""
    if dev.is_bridge:
        return "bridge"
    if dev.master is not None:
        return f"tap, port of {dev.master_name}" if dev.is_tap else f"port of {dev.master_name}"
    return "tap" if dev.is_tap else ""


def _last_tap_queue(cs: _CopyState, before: Optional[Event] = None) -> Optional[Device]:
    for ev, dev in reversed(cs.events):
        if before is not None and ev is before:
            continue
        if ev.hook == Hook.QUEUE and dev is not None and dev.is_tap:
            return dev
    return None


def _bridge_ingress(js: _JourneyState) -> Optional[Device]:
    """The bridge port the frame entered its bridge by (the first receive on a bridge port)."""
    for cs in js.copies:
        for ev, dev in cs.events:
            if ev.hook == Hook.RECEIVE and dev is not None and dev.master is not None:
                return dev
    for cs in js.copies:  # sent by the host through the bridge device
        for _ev, dev in cs.events:
            if dev is not None and dev.is_bridge:
                return Device(dev.netns, dev.netns_name, dev.ifindex, dev.name, master=dev.ifindex,
                              master_name=dev.name)
    return None
