"""pcap output (classic libpcap format, nanosecond timestamps), readable by tcpdump and Wireshark."""
from __future__ import annotations

import struct
from typing import IO, Union

MAGIC_NS = 0xA1B23C4D  # nanosecond-resolution variant of the libpcap magic
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535


class PcapSink:
    """Writes frames; every record is flushed so a reader never sees half of one."""

    def __init__(self, target: Union[str, IO[bytes]]):
        self._own = isinstance(target, str)
        self._out: IO[bytes] = open(target, "wb") if isinstance(target, str) else target
        self._out.write(struct.pack("<IHHiIII", MAGIC_NS, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
        self._out.flush()

    def write_frame(self, ts_ns: int, frame: bytes, orig_len: int) -> None:
        """ts_ns is Unix time in nanoseconds; orig_len > len(frame) marks a truncated capture."""
        sec, nsec = divmod(ts_ns, 1_000_000_000)
        self._out.write(struct.pack("<IIII", sec, nsec, len(frame), max(orig_len, len(frame))) + frame)
        self._out.flush()

    def close(self) -> None:
        if self._own:
            self._out.close()

    def __enter__(self) -> "PcapSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
