"""Replay a recording made with `follow --record` through the pure pipeline (no root, no kernel)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from . import events as ev_codec
from .devices import DeviceTable
from .follow import Annotator
from .records import Device, Event, Journey
from .stitch import Namer, Stitcher


@dataclass
class Recording:
    mac: str
    ips: list[str]
    events: list[Event]
    devices: DeviceTable
    namer: Namer


def load(path: Union[str, Path]) -> Recording:
    meta: dict = {}
    events: list[Event] = []
    netns: dict[int, str] = {}
    devices: list[Device] = []
    symbols: dict[int, str] = {}
    reasons: dict[int, str] = {}
    chains: dict[int, tuple[str, str, str]] = {}
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        kind = rec.pop("type")
        if kind == "meta":
            meta = rec
        elif kind == "event":
            events.append(ev_codec.from_dict(rec))
        elif kind == "devices":
            netns = {int(k): v for k, v in rec["netns"].items()}
            devices = [Device(**d) for d in rec["devices"]]
        elif kind == "names":
            symbols = {int(k): v for k, v in rec["symbols"].items()}
            reasons = {int(k): v for k, v in rec["reasons"].items()}
            chains = {int(k): tuple(v) for k, v in rec.get("chains", {}).items()}
    namer = Namer(reason=lambda r: reasons.get(r, f"unknown:{r}"),
                  symbol=lambda a: symbols.get(a, f"0x{a:x}") if a else "", nf_chain=chains.get)
    return Recording(meta["mac"], list(meta.get("ips", [])), events, DeviceTable.static(netns, devices), namer)


def journeys(rec: Recording, **stitch_options) -> list[Journey]:
    """All journeys of a recording, as follow would have printed them at the end of the run."""
    stitcher = Stitcher(rec.devices, rec.namer, **stitch_options)
    annotate = Annotator(rec.mac, set(rec.ips), rec.devices)
    out: list[Journey] = []
    for e in rec.events:
        stitcher.feed(e)
        out.extend(stitcher.flush(e.ts_ns))
    out.extend(stitcher.flush(rec.events[-1].ts_ns if rec.events else 0, final=True))
    return [annotate(j) for j in out]
