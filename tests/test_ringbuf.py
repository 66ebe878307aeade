"""tracer/ringbuf.py: walking records laid out as the kernel lays them out, then a real BPF ring buffer."""
from __future__ import annotations

import os
import struct
import time

import pytest

from tracer import ringbuf
from tracer.ringbuf import BUSY_BIT, DISCARD_BIT, HDR_SIZE


class FakeRing:
    """A ring of `size` bytes laid out like the kernel's: a data area mapped twice in a row."""

    def __init__(self, size: int):
        self.size = size
        self.mem = bytearray(2 * size)
        self.prod = 0

    def _put(self, pos: int, b: bytes) -> None:
        for i, x in enumerate(b):  # through both mappings, as the kernel's pages are
            off = (pos + i) % self.size
            self.mem[off] = x
            self.mem[off + self.size] = x

    def reserve(self, payload: bytes, flags: int = BUSY_BIT) -> int:
        pos = self.prod
        self._put(pos, struct.pack("<II", len(payload) | flags, 0) + payload)
        self.prod += (len(payload) + HDR_SIZE + 7) & ~7
        return pos

    def commit(self, pos: int, discard: bool = False) -> None:
        ln = struct.unpack_from("<I", self.mem, pos % self.size)[0] & ~(BUSY_BIT | DISCARD_BIT)
        self._put(pos, struct.pack("<I", ln | (DISCARD_BIT if discard else 0)))

    def read(self, cons: int) -> tuple[list[bytes], int]:
        end = ringbuf.walk(self.mem, cons, self.prod, self.size - 1)
        start = cons % self.size
        return [bytes(r) for r in ringbuf.split(bytes(self.mem[start:start + end - cons]))], end


def test_records_are_split_on_8_byte_boundaries_and_discarded_ones_skipped():
    ring = FakeRing(256)
    payloads = [b"a" * 5, b"bb" * 8, b"c", b"d" * 13]
    positions = [ring.reserve(p) for p in payloads]
    for pos, p in zip(positions, payloads):
        ring.commit(pos, discard=p == b"c")
    got, cons = ring.read(0)
    assert got == [b"a" * 5, b"bb" * 8, b"d" * 13]
    assert cons == ring.prod == (8 + 8) + (8 + 16) + (8 + 8) + (8 + 16)


def test_a_busy_record_stops_the_walk_until_it_is_submitted():
    ring = FakeRing(256)
    a = ring.reserve(b"first")
    b = ring.reserve(b"second")
    c = ring.reserve(b"third")
    ring.commit(a)
    ring.commit(c)  # submitted out of order: b is still being written
    got, cons = ring.read(0)
    assert got == [b"first"] and cons == b
    ring.commit(b)
    got, cons = ring.read(cons)
    assert got == [b"second", b"third"] and cons == ring.prod


def test_records_wrapping_around_the_end_read_whole():
    ring = FakeRing(64)
    cons = 0
    seen = []
    for k in range(40):  # positions pass the ring's size many times
        payload = bytes([k]) * (3 + k % 17)
        ring.commit(ring.reserve(payload))
        got, cons = ring.read(cons)
        seen += got
        assert got == [payload]
    assert cons == ring.prod > 10 * ring.size


def test_size_must_be_a_power_of_two_multiple_of_the_page():
    with pytest.raises(ValueError):
        ringbuf.RingBuffer(-1, 3 * 4096)


# -- a real ring buffer, filled by a BPF program on this process's getppid() calls ---------------

BPF_TEXT = r"""
BPF_RINGBUF_OUTPUT(rb, 1);  /* one page: records wrap around quickly */

struct rec { u32 seq; u32 tgid; u8 pad[SIZE - 8]; };
BPF_ARRAY(seq, u32, 1);

RAW_TRACEPOINT_PROBE(sys_enter)
{
    if ((bpf_get_current_pid_tgid() >> 32) != TGID || ctx->args[1] != NR_GETPPID)
        return 0;
    int zero = 0;
    u32 *n = seq.lookup(&zero);
    if (!n)
        return 0;
    u32 s = *n;  /* one thread of one process calls it */
    *n = s + 1;
    struct rec *r = rb.ringbuf_reserve(sizeof(struct rec));
    if (!r)
        return 0;
    r->seq = s;
    r->tgid = TGID;
    if (s % 5 == 4)
        rb.ringbuf_discard(r, 0);
    else
        rb.ringbuf_submit(r, 0);
    return 0;
}
"""


@pytest.fixture
def bpf_ring():
    from conftest import kernel_unavailable

    why = kernel_unavailable()
    if why:
        pytest.skip(why)
    import bcc

    from tracer.kheaders import find_headers

    find_headers().apply()
    b = bcc.BPF(text=BPF_TEXT.encode(), cflags=[f"-DTGID={os.getpid()}", "-DSIZE=100", "-DNR_GETPPID=110"])
    try:
        table = b[b"rb"]
        yield table.map_fd, table.max_entries
    finally:
        b.cleanup()


@pytest.mark.kernel
def test_reads_what_a_bpf_program_submitted_in_order_across_wraps(bpf_ring):
    fd, size = bpf_ring
    assert size == 4096
    rb = ringbuf.RingBuffer(fd, size)
    try:
        assert rb.read() == [] and rb.poll(10) == []
        seqs = []
        for _ in range(30):  # 30 × 11 records of 112 bytes: the one page wraps many times
            for _ in range(11):
                os.getppid()
            recs = rb.poll(100)
            assert all(len(r) == 100 for r in recs)
            seqs += [struct.unpack_from("<I", r)[0] for r in recs]
            assert all(struct.unpack_from("<I", r, 4)[0] == os.getpid() for r in recs)
        assert seqs == [s for s in range(330) if s % 5 != 4]  # discarded records left out
        assert rb.available() == 0
    finally:
        rb.close()


@pytest.mark.kernel
def test_a_full_ring_loses_records_and_reading_frees_the_space(bpf_ring):
    fd, size = bpf_ring
    with ringbuf.RingBuffer(fd, size) as rb:
        for _ in range(100):  # 100 × 112 bytes > 4096: the program's reserve fails past ~36
            os.getppid()
        first = rb.read()
        assert 20 < len(first) < 40
        for _ in range(5):
            os.getppid()
        assert len(rb.read()) == 4  # room again (one of any 5 in a row is discarded)


@pytest.mark.kernel
def test_caught_up_moves_only_when_a_read_leaves_nothing_committed_behind(bpf_ring):
    fd, size = bpf_ring
    with ringbuf.RingBuffer(fd, size) as rb:
        assert rb.caught_up_ns == 0
        for _ in range(11):
            os.getppid()
        before = time.monotonic_ns()
        part = rb.read(max_bytes=200)  # two records of the ~9 there
        assert 0 < len(part) < 5 and rb.caught_up_ns == 0 and rb.available() > 0
        rest = rb.read()
        assert len(part) + len(rest) == 9 and rb.caught_up_ns >= before
        reached = rb.caught_up_ns
        assert rb.read() == [] and rb.caught_up_ns > reached
