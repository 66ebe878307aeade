"""The ring-buffer record layout and its decoding (pure)."""
import struct
from pathlib import Path

import pytest

from tracer import events
from tracer.records import Hook


def raw_event(hook=1, cap_len=14, name=b"vnet0", size=None):
    data = bytes(range(128))
    rec = struct.pack("<QQQIIIIHHI16s128s", 123, 0xFFFF888100000000, 0xFFFFFFFF81000000, 4026531840, 7, 98, 13,
                      hook, cap_len, 1, name, data)
    return rec if size is None else rec[:size]


def test_layout_matches_bpf_header():
    text = (Path(__file__).resolve().parent.parent / "bpf" / "tapttrace.h").read_text()
    assert f"#define TT_SNAPLEN {events.SNAPLEN}" in text
    assert events.EVENT_SIZE == 192


def test_decode_fields():
    e = events.decode(raw_event())
    assert (e.ts_ns, e.hook, e.netns, e.ifindex, e.ifname, e.frame_len, e.reason) == (
        123, Hook.RECEIVE, 4026531840, 7, "vnet0", 98, 13)
    assert e.data == bytes(range(14))  # only the captured bytes
    assert events.from_dict(events.to_dict(e)) == e


@pytest.mark.parametrize("bad", [raw_event(size=100), raw_event(hook=99)])
def test_bad_records_raise_decode_error(bad):
    with pytest.raises(events.DecodeError):
        events.decode(bad)
