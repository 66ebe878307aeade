"""JSON lines: one object per journey (schema: docs/journey.schema.json)."""
from __future__ import annotations

import json
import os
import re
from json.encoder import encode_basestring_ascii
from typing import IO, TYPE_CHECKING, Any, Callable

from ..records import Copy, Hop, Journey

if TYPE_CHECKING:  # for the annotation only: the sinks don't load the follow pipeline
    from ..follow import FollowSummary
    from ..stitch import ShapedTrip

SCHEMA_ID = "tapttrace.journey/1"


def journey_to_dict(j: Journey, wall_offset_ns: int) -> dict:
    """wall_offset_ns turns the kernel's monotonic timestamps into Unix time."""
    start = j.first_ns
    return {
        "schema": SCHEMA_ID,
        "id": j.id,
        "start_ns": start + wall_offset_ns,
        "end_ns": j.last_ns + wall_offset_ns,
        "src_mac": j.src_mac,
        "dst_mac": j.dst_mac,
        "ethertype": f"0x{j.ethertype:04x}",
        "summary": j.summary,
        "frame_len": j.frame_len,
        "verdict": j.verdict,
        "bridge": j.bridge or None,
        "fdb": j.fdb or None,
        "fdb_local": j.fdb_local or None,
        "toward_guest": j.toward_guest,
        "vm": j.vm or None,
        "note": j.note or None,
        "drop": ({"reason": j.reason, "location": j.location, "dev": j.drop_dev}
                 if j.verdict == "dropped" else None),
        "flood": ({"ports": j.flood_ports, "missed": j.flood_missed} if j.verdict == "flooded" else None),
        "hops": [
            {"t_us": round((h.ts_ns - start) / 1000, 3), "copy": h.copy, "event": h.event,
             "netns": h.netns, "dev": h.dev, "role": h.role or None, "reason": h.reason or None,
             "location": h.location or None, "reader": h.reader or None, "detail": h.detail or None,
             "fault": h.fault or None}
            for h in j.hops
        ],
        "copies": [
            {"copy": c.index, "outcome": c.outcome, "dev": c.dev, "netns": c.netns, "port": c.port or None,
             "reason": c.reason or None, "location": c.location or None}
            for c in j.copies
        ],
    }


def journey_from_dict(d: dict, wall_offset_ns: int = 0) -> Journey:
    """The inverse of journey_to_dict (the frame bytes aren't in the JSON): for replaying diagnoses."""
    start = d["start_ns"] - wall_offset_ns
    drop = d.get("drop") or {}
    flood = d.get("flood") or {}
    return Journey(
        id=d["id"], first_ns=start, last_ns=d["end_ns"] - wall_offset_ns, src_mac=d["src_mac"],
        dst_mac=d["dst_mac"], ethertype=int(d["ethertype"], 16), summary=d["summary"], frame_len=d["frame_len"],
        frame=b"", verdict=d["verdict"], reason=drop.get("reason", ""), location=drop.get("location", ""),
        drop_dev=drop.get("dev", ""), flood_ports=list(flood.get("ports", [])),
        flood_missed=list(flood.get("missed", [])), bridge=d.get("bridge") or "", fdb=d.get("fdb") or "",
        fdb_local=d.get("fdb_local") or "",
        toward_guest=d["toward_guest"], note=d.get("note") or "", vm=d.get("vm") or "",
        hops=[Hop(start + round(h["t_us"] * 1000), h["copy"], h["event"], h["netns"], h["dev"], h["role"] or "",
                  h["reason"] or "", h["location"] or "", h["reader"] or "", h.get("detail") or "",
                  h.get("fault") or "")
              for h in d["hops"]],
        copies=[Copy(c["copy"], c["outcome"], c["dev"], c["netns"], c["reason"] or "", c["location"] or "",
                     c.get("port") or "") for c in d["copies"]],
    )


_SLOT = re.compile(r'"\\u0001(\d+)\\u0001"')
# What goes in each slot of a compiled line's template, as an expression, and the JSON text that
# goes before and after it (a string's quotes, the ethertype's 0x), kept in the text around the
# slot. For a Journey: of the journey `j`, its start `start`, its hops `hops` and the wall-clock
# offset `off`.
_FIELDS = [("id", "j.id", "", ""), ("start_ns", "start + off", "", ""), ("end_ns", "j.last_ns + off", "", ""),
           ("src_mac", "j.src_mac", '"', '"'), ("dst_mac", "j.dst_mac", '"', '"'),
           ("ethertype", "j.ethertype:04x", '"0x', '"'), ("summary", "dumps(j.summary)", "", ""),
           ("frame_len", "j.frame_len", "", ""), ("toward_guest", "'true' if j.toward_guest else 'false'", "", ""),
           ("vm", "dumps(j.vm) if j.vm else 'null'", "", ""),
           ("note", "dumps(j.note) if j.note else 'null'", "", "")]
# For a ShapedTrip `t` (stitch.py): its frame's FrameInfo `info`, its hops' times `stamps`, and
# what follow's Annotator says of it, `toward`, `vm` and `note`.
_TRIP_FIELDS = [("id", "t.id", "", ""), ("start_ns", "start + off", "", ""),
                ("end_ns", "stamps[-1] + off", "", ""),
                ("src_mac", "info.src_mac", '"', '"'), ("dst_mac", "info.dst_mac", '"', '"'),
                ("ethertype", "info.ethertype:04x", '"0x', '"'), ("summary", "dumps(info.summary)", "", ""),
                ("frame_len", "t.frame_len", "", ""), ("toward_guest", "'true' if toward else 'false'", "", ""),
                ("vm", "dumps(vm) if vm else 'null'", "", ""), ("note", "dumps(note) if note else 'null'", "", "")]


def _slot(i: int) -> str:
    return f"\x01{i}\x01"


def compile_line(j: Journey) -> Callable[[Journey, int], str]:
    """The JSON line of every journey that took j's path (j.shape), as one f-string with a slot
    for each value that differs from one such journey to the next: the same text journey_to_dict
    and json.dumps give (tests/test_trips.py checks it byte for byte), ≈ 10× faster. Only the
    expressions above and slot numbers become code; the text around them is passed in as values."""
    return _compile(j, _FIELDS, "hops[{i}].ts_ns", "j, off", "start = j.first_ns\n    hops = j.hops")


def compile_trip_line(j: Journey) -> Callable[..., str]:
    """compile_line for ShapedTrips on j's path: line(t, off, toward, vm, note), the same text
    as compile_line's for the Journey t stands for (t.journey()) once annotated."""
    return _compile(j, _TRIP_FIELDS, "stamps[{i}]", "t, off, toward, vm, note",
                    "stamps = t.stamps\n    start = stamps[0]\n    info = t.info", first_hop_at_start=True)


def _compile(j: Journey, fields: list, hop_ts: str, args: str, prelude: str,
             first_hop_at_start: bool = False) -> Callable[..., str]:
    d = journey_to_dict(j, 0)
    for i, (name, *_) in enumerate(fields):
        d[name] = _slot(i)
    for i, hop in enumerate(d["hops"]):
        if i or not first_hop_at_start:  # a trip starts at its first hop: t_us 0.0 is text
            hop["t_us"] = _slot(len(fields) + i)
    parts = _SLOT.split(json.dumps(d, separators=(",", ":")))
    texts, slots = parts[0::2], [int(x) for x in parts[1::2]]
    exprs = []
    for k, slot in enumerate(slots):
        if slot < len(fields):
            _, expr, before, after = fields[slot]
            texts[k] += before
            texts[k + 1] = after + texts[k + 1]
        else:  # round(d / 1000, 3) is d / 1000 for an integer d < 2**53: the nearest float to a
            # number with three decimals is what both give (round() alone takes ≈ 0.7 µs)
            expr = f"({hop_ts.format(i=slot - len(fields))} - start) / 1000!r"
        exprs.append(expr)
    body = "".join(f"{{t{k}}}{{{expr}}}" for k, expr in enumerate(exprs)) + f"{{t{len(exprs)}}}"
    params = ", ".join(f"t{k}=t{k}" for k in range(len(texts)))
    source = (f"def line({args}, {params}, dumps=dumps):\n"
              f"    {prelude}\n    return f\"{body}\"\n")
    scope: dict[str, Any] = {f"t{k}": t for k, t in enumerate(texts)}
    scope["dumps"] = encode_basestring_ascii  # what json.dumps does with a str, without its Python layers
    exec(compile(source, "<tapttrace.jsonl line>", "exec"), scope)
    line: Callable[..., str] = scope["line"]
    return line


class JsonLinesSink:
    """Journeys are buffered until flush() (run_follow calls it after every batch and before it
    waits for events) or the summary: one write for many lines under load."""

    def __init__(self, out: IO[str], wall_offset_ns: int):
        self.out = out
        self.wall_offset_ns = wall_offset_ns
        self._lines: list[str] = []

    def journey(self, j: Journey) -> None:
        shape = j.shape
        if shape is not None:  # the kernel stitched it: its path's compiled line (compile_line)
            line = shape.cache.get(compile_line)
            if line is None:
                line = shape.cache[compile_line] = compile_line(j)
            self._lines.append(line(j, self.wall_offset_ns))
            return
        self._lines.append(json.dumps(journey_to_dict(j, self.wall_offset_ns), separators=(",", ":")))

    def trip(self, t: ShapedTrip, toward_guest: bool, vm: str, note: str) -> None:
        """A whole journey the kernel stitched on a path seen before, with what follow's Annotator
        says of it: the line journey() gives for t.journey() annotated, from t's values alone."""
        shape = t.shape
        line = shape.cache.get(compile_trip_line)
        if line is None:
            line = shape.cache[compile_trip_line] = compile_trip_line(shape.template)
        self._lines.append(line(t, self.wall_offset_ns, toward_guest, vm, note))

    def flush(self) -> None:
        if self._lines:
            self._lines.append("")
            self._write("\n".join(self._lines))
            self._lines = []
        self.out.flush()

    def _write(self, text: str) -> None:
        """Straight to the file descriptor when there is one, every byte: CPython's buffered
        writer (3.11) dropped the rest of a large write that a signal cut short (strace: write of
        1 083 149 bytes returned 67 341, the next write was the next batch)."""
        try:
            fd = self.out.fileno()
        except (AttributeError, OSError, ValueError):  # io.StringIO and other in-memory streams
            self.out.write(text)
            return
        self.out.flush()
        view = memoryview(text.encode())
        while view:
            view = view[os.write(fd, view):]  # a signal may cut a write short: go on from there

    def summary(self, s: FollowSummary) -> None:
        self._lines.append(json.dumps({"schema": "tapttrace.summary/1", **s.as_dict()}))
        self.flush()

    def close(self) -> None:
        pass
