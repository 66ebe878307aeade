"""The ring-buffer event layout (bpf/tapttrace.h, stated once more here) and its decoding."""
from __future__ import annotations

import struct

from .records import Event, Hook

SNAPLEN = 128
IFNAMSIZ = 16
# struct tt_event: ts_ns, skb, location, netns, ifindex, frame_len, reason, hook, cap_len, cpu,
# ifname[16], data[SNAPLEN]
_LAYOUT = struct.Struct(f"<QQQIIIIHHI{IFNAMSIZ}s{SNAPLEN}s")
EVENT_SIZE = _LAYOUT.size  # 192; checked against what the kernel hands us (decode raises otherwise)


class DecodeError(ValueError):
    """A ring-buffer record that doesn't have the layout we expect."""


def decode(raw: bytes) -> Event:
    """One ring-buffer record (bytes or a memoryview) into an Event; DecodeError if it isn't one."""
    if len(raw) != EVENT_SIZE:
        raise DecodeError(f"event of {len(raw)} bytes, expected {EVENT_SIZE}: bpf/tapttrace.h and "
                          "tracer/events.py disagree")
    events, _ = decode_many((raw,), strict=True)
    return events[0]


def timestamp(raw) -> int:
    """An event record's ts_ns (its first field), without decoding the rest; 0 for a record too
    short to have one (it is counted as undecodable where it is decoded, and must not stop follow
    on the way: follow reads this off the last record of every batch)."""
    return _TS.unpack_from(raw)[0] if len(raw) >= 8 else 0


_TS = struct.Struct("<Q")


def decode_many(raws, strict: bool = False) -> tuple[list[Event], int]:
    """A batch of records: the Events, in order, and how many records could not be decoded
    (wrong size, unknown hook; with strict=True those raise DecodeError instead).

    The hot path of follow with every frame matching: one unpack_from per record, the hook and
    the interface name looked up in dicts, and the Event made without the frozen dataclass's
    per-field object.__setattr__ (it stays immutable to everyone else)."""
    out: list[Event] = []
    append = out.append
    errors = 0
    unpack = _LAYOUT.unpack_from
    hooks, names, new = _HOOKS, _NAMES, object.__new__
    for raw in raws:
        if len(raw) != EVENT_SIZE:
            if strict:
                raise DecodeError(f"event of {len(raw)} bytes, expected {EVENT_SIZE}")
            errors += 1
            continue
        ts, skb, location, netns, ifindex, frame_len, reason, hook, cap_len, cpu, name, data = unpack(raw)
        hook_ = hooks.get(hook)
        if hook_ is None:
            if strict:
                raise DecodeError(f"unknown hook {hook}")
            errors += 1
            continue
        ifname = names.get(name) or event_name(name)
        e = new(Event)
        e.__dict__.update(ts_ns=ts, skb=skb, hook=hook_, netns=netns, ifindex=ifindex, ifname=ifname,
                          frame_len=frame_len, data=data if cap_len >= SNAPLEN else data[:cap_len],
                          reason=reason, location=location, cpu=cpu)
        append(e)
    return out, errors


_HOOKS = {int(h): h for h in Hook}
_NAMES: dict[bytes, str] = {}  # the 16 raw bytes of an ifname -> its name (few devices, many events)


def event_name(raw: bytes) -> str:
    """A device name as the kernel hands it (16 bytes, NUL-padded), decoded once per name."""
    name = _NAMES.get(raw)
    if name is None:
        if len(_NAMES) >= 4096:
            _NAMES.clear()
        name = _NAMES[raw] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return name


def encode(e: Event) -> bytes:
    """The record the kernel would have sent for e (replays of recordings as ring-buffer records)."""
    return _LAYOUT.pack(e.ts_ns, e.skb, e.location, e.netns, e.ifindex, e.frame_len, e.reason, int(e.hook),
                        len(e.data), e.cpu, e.ifname.encode(), e.data.ljust(SNAPLEN, b"\0"))


def to_dict(e: Event) -> dict:
    """JSON-able form, used for recordings that the unit tests replay."""
    return {"ts_ns": e.ts_ns, "skb": e.skb, "hook": e.hook.name.lower(), "netns": e.netns,
            "ifindex": e.ifindex, "ifname": e.ifname, "frame_len": e.frame_len,
            "data": e.data.hex(), "reason": e.reason, "location": e.location, "cpu": e.cpu}


def from_dict(d: dict) -> Event:
    return Event(ts_ns=d["ts_ns"], skb=d["skb"], hook=Hook[d["hook"].upper()], netns=d["netns"],
                 ifindex=d["ifindex"], ifname=d["ifname"], frame_len=d["frame_len"],
                 data=bytes.fromhex(d["data"]), reason=d["reason"], location=d["location"],
                 cpu=d.get("cpu", 0))
