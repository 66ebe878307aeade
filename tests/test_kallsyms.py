"""Kernel address symbolization on a trimmed copy of this machine's /proc/kallsyms."""
from __future__ import annotations

from pathlib import Path

import pytest

from tracer.kallsyms import Kallsyms

FIXTURES = Path(__file__).parent / "fixtures" / "kallsyms"


@pytest.fixture(scope="module")
def ksyms() -> Kallsyms:
    return Kallsyms.load(FIXTURES / "kallsyms-6.18")


def test_symbolize_at_and_inside_functions(ksyms):
    consume = ksyms.address_of("consume_skb")
    assert consume == 0xFFFFFFFF81E962B0
    assert ksyms.symbolize(consume) == "consume_skb"
    assert ksyms.symbolize(consume + 0x1A) == "consume_skb+0x1a"
    assert ksyms.symbolize(ksyms.address_of("tun_do_read") + 0x2F0) == "tun_do_read+0x2f0"


def test_module_symbols_are_sorted_in_and_named(ksyms):
    # The fixture lists module symbols first and out of order, as load order does.
    assert ksyms.symbolize(0xFFFFFFFFC0A01010) == "vxlan_rcv+0x10 [vxlan]"
    assert ksyms.symbolize(0xFFFFFFFFC0A02040) == "vxlan_xmit_one [vxlan]"
    assert ksyms.symbolize(0xFFFFFFFFC0B00004) == "tap_handle_frame+0x4 [tap]"


def test_data_symbols_do_not_shadow_code(ksyms):
    # skb_data_between_text (a 'd' symbol) sits at 0x...96200, inside sk_skb_reason_drop's range.
    assert ksyms.symbolize(0xFFFFFFFF81E96210) == "sk_skb_reason_drop+0x12f0"
    assert "skb_data_between_text" not in ksyms
    assert "weak_helper" in ksyms  # W symbols are code too
    assert len(ksyms) == 25  # the fixture's t, T and W lines


def test_unknown_addresses_read_as_hex(ksyms):
    assert ksyms.symbolize(0x1000) == "0x1000"
    assert ksyms.symbolize(0) == "0x0"
    assert ksyms.lookup(0x1000) is None


def test_restricted_kallsyms_symbolizes_nothing():
    restricted = Kallsyms.load(FIXTURES / "kallsyms-restricted")
    assert restricted.restricted
    assert restricted.symbolize(0xFFFFFFFF81E962B0) == "0xffffffff81e962b0"


def test_loading_is_lazy(tmp_path):
    missing = Kallsyms.load(tmp_path / "nope")  # nothing read yet, so nothing fails yet
    with pytest.raises(FileNotFoundError):
        missing.symbolize(0xFFFFFFFF81000000)


def test_preloading_reads_the_table_in_the_background(tmp_path):
    preloaded = Kallsyms.load(FIXTURES / "kallsyms-6.18").preload()
    preloaded._preload.join(60)  # a deadline for the background read, not a bound on its speed
    assert preloaded._addresses is not None  # read before anyone asked
    assert preloaded.symbolize(0xFFFFFFFF81E962B0 + 0x1A) == "consume_skb+0x1a"
    missing = Kallsyms.load(tmp_path / "nope").preload()
    missing._preload.join(60)
    with pytest.raises(FileNotFoundError):  # the failure still shows at first use
        missing.symbolize(0xFFFFFFFF81000000)


@pytest.mark.kernel
def test_running_kernel_kallsyms():
    ksyms = Kallsyms.load()
    assert not ksyms.restricted, "run as root: kallsyms addresses are hidden"
    address = ksyms.address_of("consume_skb")
    assert address is not None
    assert ksyms.symbolize(address + 4) == "consume_skb+0x4"


def reference_table(data: bytes) -> list[tuple[int, str]]:
    """The text symbols the plain way: a regex a line, then sorted by address (stable)."""
    import re

    found = [(int(m.group(1), 16), m.group(2).decode(errors="replace"))
             for m in re.finditer(rb"^([0-9a-fA-F]{16}) [tTwW] ([^\n]*)", data, re.M)]
    return sorted(found, key=lambda entry: entry[0])


def table(k: Kallsyms) -> list[tuple[int, str]]:
    return [(k._ensure()[i], k._entry(i)) for i in range(len(k))]


@pytest.mark.parametrize("text", [
    (FIXTURES / "kallsyms-6.18").read_bytes(),
    (FIXTURES / "kallsyms-restricted").read_bytes(),
    b"ffffffff81000000 T _text\nnot an address line\nzzzzzzzzzzzzzzzz T odd\nffffffff81000010 t b\n",
    b"ffffffffc0a00000 t m1\t[m]\nffffffff81000000 T a\nffffffff81000000 W a2\nffffffff81000020 d data\n",
    b"",
], ids=["fixture", "restricted", "malformed-lines", "modules-first", "empty"])
@pytest.mark.parametrize("piece", [1 << 18, 50])  # the file read in pieces of whole lines
def test_the_table_is_every_text_line_in_address_order(tmp_path, monkeypatch, text, piece):
    import tracer.kallsyms

    monkeypatch.setattr(tracer.kallsyms, "_PIECE", piece)
    path = tmp_path / "kallsyms"
    path.write_bytes(text)
    assert table(Kallsyms.load(path)) == reference_table(text)


@pytest.mark.kernel
def test_the_running_kernels_table_is_every_text_line_in_address_order():
    data = Path("/proc/kallsyms").read_bytes()
    k = Kallsyms.load()
    k._parse(data)
    assert table(k) == reference_table(data)
