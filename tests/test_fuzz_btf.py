"""Property-based tests of the BTF reader (tracer/btf.py) on damaged BTF (issue 14). Pure: no root.

The kernel's BTF is read at every start; a module's, a cache's or a future kernel's may not be
what the reader expects. Any bytes must give a Btf or BtfError, and every question asked of a
Btf an answer, BtfNotFound or BitfieldError: the callers (tracer/features.py) catch exactly those
and degrade, say, to "drops are named by function"."""
from __future__ import annotations

from pathlib import Path

from fuzzing import FUZZ
from hypothesis import given
from hypothesis import strategies as st

from tracer.btf import BitfieldError, Btf, BtfError, BtfNotFound

FIXTURE = (Path(__file__).parent / "fixtures" / "btf" / "new.btf").read_bytes()
EXPECTED = (BtfError, BtfNotFound, BitfieldError)


@st.composite
def damaged_btf(draw) -> bytes:
    data = bytearray(FIXTURE)
    for at, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1,
                                   max_size=6)):
        data[at] = value  # a header field, a kind, a type id, a string offset...
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


def ask(btf: Btf) -> None:
    """The questions tapttrace asks (tracer/features.py, tracer/exporter/program.py)."""
    for question in (lambda: btf.member("sk_buff", "len"), lambda: btf.member_offset("net_device", "nd_net.net"),
                     lambda: btf.member("sk_buff", "pkt_type"), lambda: btf.member_size("sk_buff", "dev"),
                     lambda: btf.enum_values("skb_drop_reason"), lambda: btf.enum_values("big_enum"),
                     lambda: btf.tracepoint_args("kfree_skb"), lambda: btf.struct_id("possible_net_t"),
                     lambda: btf.pointer_size):
        try:
            question()
        except EXPECTED:
            pass
    for type_id in range(len(btf) + 1):
        try:
            btf.type_name(type_id)
            btf.size_of(type_id)
        except EXPECTED:
            pass


@FUZZ
@given(st.one_of(damaged_btf(), st.binary(max_size=64)))
def test_damaged_btf_is_read_or_refused_and_every_question_answered(data):
    try:
        btf = Btf(data)
    except BtfError:
        return
    ask(btf)
    try:
        Btf(data, index=btf.index_blob())
    except BtfError:
        pass
