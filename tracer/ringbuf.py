"""Read a BPF ring buffer (BPF_MAP_TYPE_RINGBUF) through its mmap, many records a call.

Independent of bcc and libbpf: give it the map's fd and its size in bytes (max_entries), as

    rb = RingBuffer(map_fd, size_bytes)
    for rec in rb.poll(timeout_ms=50):   # memoryviews of the records' bytes
        ...
    rb.close()

The layout is the kernel's (kernel/bpf/ringbuf.c; libbpf's ringbuf.c reads it the same way):
page 0 holds consumer_pos (u64, ours to write, mapped read-write); page 1 holds producer_pos
(u64, read-only); the data pages follow, mapped twice in a row so a record that wraps around the
end reads as one contiguous run. Each record starts with an 8-byte header {u32 len, u32 pg_off},
len carrying BUSY (bit 31: reserved, not yet submitted) and DISCARD (bit 30: skip it); records
are 8-byte aligned and positions grow without bound, taken modulo the data size.

One call reads the headers up to producer_pos (stopping at the first busy record), copies the
committed run out in one slice, hands back memoryviews into that copy and only then moves
consumer_pos, so the kernel gets the space back at once. It waits (epoll on the map fd) only
when nothing is there. Headers are read before the data they cover, which the kernel publishes
with a release store; on x86 (TSO) plain loads keep that order.
"""
from __future__ import annotations

import mmap
import select
import struct
import time
from typing import Optional, Union

# A raw record as the event sources hand it on: a memoryview into a ring-buffer read, or bytes
# (a kernel-stitched trip swept from its map, tracer/trips.py).
Record = Union[bytes, memoryview]

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def walk(data, cons: int, prod: int, mask: int, base: int = 0, limit: Optional[int] = None) -> int:
    """Position after the last committed record in [cons, prod) of a ring laid out at `data[base:]`
    (the data area mapped twice, as the kernel's is). Stops at a busy record, and before a record
    that would end past `limit` (the producer's position: a header whose length says otherwise
    is not the kernel's, and consumer_pos must never pass producer_pos)."""
    pos = cons
    unpack = _U32.unpack_from
    while pos < prod:
        hdr = unpack(data, base + (pos & mask))[0]
        if hdr & BUSY_BIT:
            break
        nxt = pos + (((hdr & ~(BUSY_BIT | DISCARD_BIT)) + HDR_SIZE + 7) & ~7)
        if limit is not None and nxt > limit:
            break
        pos = nxt
    return pos


def split(block, length: Optional[int] = None) -> list[memoryview]:
    """The records of a run of committed records copied out of the ring (DISCARDed ones left out)."""
    mv = memoryview(block)
    n = len(mv) if length is None else length
    out = []
    pos = 0
    unpack = _U32.unpack_from
    while pos + HDR_SIZE <= n:  # a run cut inside a header has no record there
        hdr = unpack(mv, pos)[0]
        size = hdr & ~(BUSY_BIT | DISCARD_BIT)
        if not hdr & DISCARD_BIT:
            out.append(mv[pos + HDR_SIZE:pos + HDR_SIZE + size])
        pos += (size + HDR_SIZE + 7) & ~7
    return out


BATCH_MIN = 256  # poll_batch: fewer records than this in a wake-up while busy: linger for more
BATCH_LINGER_S = 0.005
# At most this much of the ring a batch: what a batch becomes in user space (journeys, JSON lines)
# is held at once, and a 4 MB ring read whole at saturation added ≈ 40 MB to follow's peak RSS.
BATCH_MAX_BYTES = 1 << 20
BUSY_WINDOW_S = 0.1
BUSY_RECORDS = 100  # records in a BUSY_WINDOW_S that make the ring busy (1 000 a second)


class RingBuffer:
    """A BPF ring buffer map read through mmap. Not thread-safe: one reader."""

    def __init__(self, map_fd: int, size: int, *, page_size: int = mmap.PAGESIZE):
        if size <= 0 or size & (size - 1) or size % page_size:
            raise ValueError(f"ring buffer size {size}: not a power of 2 multiple of the page size")
        self.size = size
        self._page = page_size
        self._mask = size - 1
        self._cons = mmap.mmap(map_fd, page_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._prod = mmap.mmap(map_fd, page_size + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=page_size)
        except BaseException:
            self._cons.close()
            raise
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)
        self.records = 0  # handed out since open
        # Every record reserved before this moment (CLOCK_MONOTONIC, bpf_ktime_get_ns's clock) has
        # been read: the last read that found nothing committed left behind it.
        self.caught_up_ns = 0
        self.bytes = 0
        self._window_start, self._window_count, self._busy = 0.0, 0, False  # poll_batch's arrival rate

    def available(self) -> int:
        """Bytes between the consumer and the producer (committed or not)."""
        return _U64.unpack_from(self._prod, 0)[0] - _U64.unpack_from(self._cons, 0)[0]

    def read(self, max_bytes: Optional[int] = None) -> list[memoryview]:
        """Every committed record now in the ring (or about max_bytes of them), without waiting."""
        asked_ns = time.monotonic_ns()
        cons = _U64.unpack_from(self._cons, 0)[0]
        ring_end = prod = _U64.unpack_from(self._prod, 0)[0]
        if prod <= cons:
            self.caught_up_ns = asked_ns
            return []
        if max_bytes is not None and prod - cons > max_bytes:
            prod = cons + max_bytes  # the walk ends on the first record boundary at or after it
        end = walk(self._prod, cons, prod, self._mask, self._page, limit=ring_end)
        if end >= ring_end:
            self.caught_up_ns = asked_ns
        if end == cons:
            return []
        start = self._page + (cons & self._mask)
        block = self._prod[start:start + (end - cons)]  # one copy; the data area is mapped twice
        _U64.pack_into(self._cons, 0, end)
        out = split(block)
        self.records += len(out)
        self.bytes += end - cons
        return out

    def poll(self, timeout_ms: int, max_bytes: Optional[int] = None) -> list[memoryview]:
        """Records now in the ring; when there are none, wait up to timeout_ms for some."""
        out = self.read(max_bytes)
        if out or timeout_ms == 0:
            return out
        try:
            self._epoll.poll(timeout_ms / 1000 if timeout_ms > 0 else -1)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; a signal handler that raises passes
            pass
        return self.read(max_bytes)

    def poll_batch(self, timeout_ms: int) -> list[memoryview]:
        """poll(), for a consumer that pays per wake-up (follow's loop: ≈ 60 µs a pass). Woken for
        fewer than BATCH_MIN records while records are arriving fast, wait BATCH_LINGER_S for more,
        so the loop runs about once per linger and not once per record. While they arrive slowly
        (fewer than BUSY_RECORDS in the last BUSY_WINDOW_S), hand them over at once: a frame that
        teaches follow the guest's address must reach it before the next frame asks for it."""
        records = self.poll(timeout_ms, BATCH_MAX_BYTES)
        now = time.monotonic()
        if now - self._window_start >= BUSY_WINDOW_S:
            self._busy = self._window_count >= BUSY_RECORDS
            self._window_start, self._window_count = now, 0
        self._window_count += len(records)
        if 0 < len(records) < BATCH_MIN and (self._busy or self._window_count >= BUSY_RECORDS):
            time.sleep(BATCH_LINGER_S)
            records += self.read(BATCH_MAX_BYTES)
        return records

    def fileno(self) -> int:
        """The epoll fd: readable when the ring has data (for a caller's own select/epoll)."""
        return self._epoll.fileno()

    def close(self) -> None:
        for m in (getattr(self, "_cons", None), getattr(self, "_prod", None)):
            if m is not None and not m.closed:
                m.close()
        ep = getattr(self, "_epoll", None)
        if ep is not None and not ep.closed:
            ep.close()

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
