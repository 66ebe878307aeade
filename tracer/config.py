"""Flags become one frozen, validated config; only validated integers ever reach BPF C."""
from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Optional

from .errors import UsageError

_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}")


def parse_mac(text: str) -> str:
    """Normalise a MAC to lower-case colon form; UsageError for anything else."""
    if not _MAC_RE.fullmatch(text or ""):
        raise UsageError(f"{text!r} is not a MAC address (expected six hex bytes like 52:54:00:e4:2e:c1)")
    return text.lower().replace("-", ":")


def mac_to_int(mac: str) -> int:
    return int(parse_mac(mac).replace(":", ""), 16)


def parse_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"{text!r} is not an IPv4 or IPv6 address") from None


def ip_key(addr: str) -> bytes:
    """The 16-byte form BPF's watch_ips map is keyed by (IPv4 as ::ffff:a.b.c.d)."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return bytes(10) + b"\xff\xff" + ip.packed
    return ip.packed


@dataclass(frozen=True)
class FollowConfig:
    mac: str
    ips: tuple[str, ...] = ()
    count: Optional[int] = None  # stop after this many journeys
    duration: Optional[float] = None  # stop after this many seconds
    json: bool = False
    pcap: Optional[str] = None
    record: Optional[str] = None  # write raw events + device table for replay in tests
    learn_ips: bool = True
    netns: tuple[str, ...] = ()  # only journeys that touch these namespaces (validated by the runtime)
    # 4 MB: ≈ 9 500 kernel-stitched journeys (or 21 000 events), half a second of 20 k frames/s
    # while follow builds its first journeys (device table, kallsyms) or is briefly descheduled
    ringbuf_pages: int = 1024
    vm: str = ""  # the guest's VM name, for the journeys (not a filter: the MAC is)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", parse_mac(self.mac))
        object.__setattr__(self, "ips", tuple(parse_ip(i) for i in self.ips))
        if self.count is not None and self.count < 1:
            raise UsageError("--count must be at least 1")
        # not (d > 0) also refuses nan, which compares false with everything (click's FLOAT reads "nan")
        if self.duration is not None and not (0 < self.duration < math.inf):
            raise UsageError("--duration must be a positive number of seconds")
        pages = self.ringbuf_pages
        if pages < 1 or pages & (pages - 1):
            raise UsageError("the ring buffer size must be a power of two number of pages")
