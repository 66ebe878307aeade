"""JSON lines: one object per journey (schema: docs/journey.schema.json)."""
from __future__ import annotations

import json
from typing import IO

from ..records import Copy, Hop, Journey

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
        "toward_guest": j.toward_guest,
        "vm": j.vm or None,
        "note": j.note or None,
        "drop": ({"reason": j.reason, "location": j.location, "dev": j.drop_dev}
                 if j.verdict == "dropped" else None),
        "flood": ({"ports": j.flood_ports, "missed": j.flood_missed} if j.verdict == "flooded" else None),
        "hops": [
            {"t_us": round((h.ts_ns - start) / 1000, 3), "copy": h.copy, "event": h.event,
             "netns": h.netns, "dev": h.dev, "role": h.role or None, "reason": h.reason or None,
             "location": h.location or None, "reader": h.reader or None}
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
        flood_missed=list(flood.get("missed", [])), bridge=d.get("bridge") or "",
        toward_guest=d["toward_guest"], note=d.get("note") or "", vm=d.get("vm") or "",
        hops=[Hop(start + round(h["t_us"] * 1000), h["copy"], h["event"], h["netns"], h["dev"], h["role"] or "",
                  h["reason"] or "", h["location"] or "", h["reader"] or "") for h in d["hops"]],
        copies=[Copy(c["copy"], c["outcome"], c["dev"], c["netns"], c["reason"] or "", c["location"] or "",
                     c.get("port") or "") for c in d["copies"]],
    )


class JsonLinesSink:
    """Journeys are buffered until flush() (run_follow calls it after every batch and before it
    waits for events) or the summary: one write for many lines under load."""

    def __init__(self, out: IO[str], wall_offset_ns: int):
        self.out = out
        self.wall_offset_ns = wall_offset_ns

    def journey(self, j: Journey) -> None:
        self.out.write(json.dumps(journey_to_dict(j, self.wall_offset_ns), separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self.out.flush()

    def summary(self, s: "FollowSummary") -> None:  # noqa: F821 - defined in tracer.follow
        self.out.write(json.dumps({"schema": "tapttrace.summary/1", **s.as_dict()}) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass
