"""pcap output: classic libpcap format with nanosecond timestamps, readable by tcpdump and Wireshark.

Written by hand rather than through a library: the format is a 24-byte header and a 16-byte
header per record, and a dependency would have to come from outside Debian's bcc world.
"""
from __future__ import annotations

import os
import struct
from typing import IO, Union

# The nanosecond-resolution variant of the libpcap magic: the kernel's timestamps are in ns and
# the usual 0xa1b2c3d4 would throw three digits away.
MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535

_FILE_HEADER = struct.Struct("<IHHiIII")  # magic, version 2.4, thiszone, sigfigs, snaplen, linktype
_RECORD_HEADER = struct.Struct("<IIII")  # seconds, nanoseconds, captured length, original length


class PcapSink:
    """Writes Ethernet frames. Usable as a context manager.

    Every record goes out in one write and is flushed at once, so a reader following the file
    (tcpdump -r while a trace runs, or after tapttrace is killed) never meets half a record.
    """

    def __init__(self, target: Union[str, os.PathLike[str], IO[bytes]]):
        # Only a file we opened is ours to close; a caller's stream (stdout for `--pcap -`) is not.
        self._out: IO[bytes]
        if isinstance(target, (str, os.PathLike)):
            self._own, self._out = True, open(target, "wb")
        else:
            self._own, self._out = False, target
        self._out.write(_FILE_HEADER.pack(MAGIC_NS, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
        self._out.flush()

    def write_frame(self, ts_ns_wallclock: int, frame: bytes, orig_len: int) -> None:
        """ts_ns_wallclock is Unix time in ns; orig_len > len(frame) marks a truncated capture."""
        # A record longer than the snaplen the header announced makes readers reject the file.
        frame = bytes(frame[:SNAPLEN])
        sec, nsec = divmod(ts_ns_wallclock, 1_000_000_000)
        header = _RECORD_HEADER.pack(sec, nsec, len(frame), max(orig_len, len(frame)))
        self._out.write(header + frame)
        self._out.flush()

    def close(self) -> None:
        if self._own:
            self._out.close()
        else:
            self._out.flush()

    def __enter__(self) -> PcapSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
