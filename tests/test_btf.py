"""The BTF reader on the generated blobs in tests/fixtures/btf/ and on the running kernel's BTF."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tracer.btf import BitfieldError, Btf, BtfError, BtfNotFound, Kind

FIXTURES = Path(__file__).parent / "fixtures" / "btf"


@pytest.fixture(scope="module")
def new() -> Btf:
    return Btf.load(FIXTURES / "new.btf")


@pytest.fixture(scope="module")
def old() -> Btf:
    return Btf.load(FIXTURES / "old.btf")


def test_every_kind_is_walked_to_the_end(new):
    kinds = {new.type(i).kind for i in range(1, len(new))}
    assert kinds == set(Kind) - {Kind.UNKN}
    # The records after DECL_TAG, ENUM64, FLOAT, TYPE_TAG... still decode in place.
    last = new.type(len(new) - 1)
    assert (last.kind, last.name, last.size_or_type) == (Kind.DATASEC, ".data..percpu", 32)
    assert new.find("double") == [new.find("double", Kind.FLOAT)[0]]


def test_member_offsets_through_anonymous_unions_and_struct_group(new):
    # dev sits in an anonymous union inside an anonymous struct inside an anonymous union.
    assert new.member_offset("sk_buff", "dev") == 16
    assert new.member_offset("sk_buff", "next") == 0
    assert new.member_offset("sk_buff", "len") == 24
    assert new.member_offset("sk_buff", "mac_header") == 32
    assert new.member_offset("sk_buff", "network_header") == 34
    assert new.member_offset("sk_buff", "headers.network_header") == 34
    assert new.member_offset("sk_buff", "head") == 40
    assert new.member_offset("sk_buff", "data") == 48
    assert new.member_size("sk_buff", "mac_header") == 2
    assert new.member_size("sk_buff", "dev") == 8


def test_nested_paths_and_typedef_structs(new):
    assert new.member_offset("net_device", "nd_net.net") == 24
    assert new.member_offset("possible_net_t", "net") == 0
    assert new.member_offset("net", "ns.inum") == 16
    assert new.member_size("net_device", "name") == 16
    info = new.member("net_device", "nd_net.net")
    assert info.type_name == "struct net *"
    assert info.path == "net_device.nd_net.net"


def test_bitfields_are_reported_and_refused_as_bytes(new):
    info = new.member("sk_buff", "pkt_type")
    assert (info.is_bitfield, info.bit_offset, info.bitfield_size) == (True, 225, 3)
    with pytest.raises(BitfieldError):
        new.member_offset("sk_buff", "pkt_type")
    with pytest.raises(BitfieldError):
        new.member_size("sk_buff", "cloned")
    # Old-style bitfield: kind_flag 0, width and bit offset in the INT encoding.
    old_style = new.member("oldbf", "flags")
    assert (old_style.is_bitfield, old_style.bit_offset, old_style.bitfield_size) == (True, 10, 3)
    assert new.member_offset("oldbf", "byte") == 2


def test_lookup_skips_forward_declarations_and_name_tails(new):
    ids = new.find("sk_buff")
    assert [new.type(i).kind for i in ids] == [Kind.FWD, Kind.STRUCT]
    assert new.type(new.struct_id("sk_buff")).size_or_type == 64
    assert new.member_offset("__sk_buff", "len") == 0


def test_missing_things_raise_lookup_errors(new):
    with pytest.raises(BtfNotFound):
        new.member_offset("sk_buff", "no_such_member")
    with pytest.raises(BtfNotFound):
        new.member_offset("sk_buff", "len.x")  # not a struct
    with pytest.raises(BtfNotFound):
        new.member_offset("sk_buff", "dev.ifindex")  # through a pointer
    with pytest.raises(BtfNotFound):
        new.member_offset("no_such_struct", "x")
    with pytest.raises(BtfNotFound):
        new.enum_values("no_such_enum")
    with pytest.raises(BtfNotFound):
        new.tracepoint_args("no_such_tracepoint")


def test_enum_values_of_every_flavour(new):
    reasons = new.enum_values("skb_drop_reason")
    assert reasons["SKB_DROP_REASON_NOT_SPECIFIED"] == 2
    assert reasons["SKB_DROP_REASON_SUBSYS_MASK"] == 0xFFFF0000
    assert new.enum_values("signed_enum") == {"MINUS_ONE": -1, "ONE": 1}
    assert new.enum_values("big_enum") == {"HUGE": 1 << 40, "ALL": (1 << 64) - 1}
    assert new.enum_values("big_signed_enum") == {"NEG": -2}


def test_tracepoint_args_skip_the_probe_data_pointer(new, old):
    args = new.tracepoint_args("kfree_skb")
    assert [(a.index, a.type_name) for a in args] == [
        (0, "struct sk_buff *"), (1, "void *"), (2, "enum skb_drop_reason"), (3, "struct sock *")]
    assert [a.type_name for a in new.tracepoint_args("consume_skb")] == ["struct sk_buff *", "void *"]
    assert [a.type_name for a in old.tracepoint_args("kfree_skb")] == ["struct sk_buff *", "void *"]
    assert [a.type_name for a in old.tracepoint_args("consume_skb")] == ["struct sk_buff *"]


def test_type_names_spell_qualifiers_and_hide_type_tags(new):
    func = new.find("netif_receive_skb", Kind.FUNC)[0]
    params = new.proto_params(new.type(func).size_or_type)
    assert [(n, new.type_name(t)) for n, t in params] == [
        ("skb", "const struct sk_buff *"),
        ("tagged", "struct sk_buff *"),
        ("v", "volatile unsigned int"),
        ("r", "unsigned char * restrict"),
    ]
    assert new.type_name(new.find("sock")[0]) == "struct sock"


def test_the_type_index_cache_is_used_only_for_the_blob_it_was_made_from(tmp_path):
    cache = tmp_path / "run" / "btf-index.bin"
    walked = Btf.load(FIXTURES / "new.btf")
    first = Btf.load(FIXTURES / "new.btf", cache)  # walks the types, writes the cache
    assert cache.is_file()
    cached = Btf.load(FIXTURES / "new.btf", cache)  # reads the index back
    for btf in (first, cached):
        assert len(btf) == len(walked) and btf.index_blob() == walked.index_blob()
        assert btf.member_offset("sk_buff", "mac_header") == walked.member_offset("sk_buff", "mac_header")
    other = Btf.load(FIXTURES / "old.btf", cache)  # another kernel's BTF: the key differs, walked anew
    assert other.index_blob() == Btf.load(FIXTURES / "old.btf").index_blob()
    cache.write_bytes(cache.read_bytes()[:16] + b"\x01\x02\x03")  # right key, broken index
    assert Btf.load(FIXTURES / "old.btf", cache).index_blob() == other.index_blob()


def test_malformed_blobs_are_refused():
    good = (FIXTURES / "new.btf").read_bytes()
    with pytest.raises(BtfError, match="magic"):
        Btf(b"\0\0" + good[2:])
    with pytest.raises(BtfError):
        Btf(good[:100])
    # Type id 1's info word: kind 31 does not exist, so nothing after it can be trusted.
    bad = bytearray(good)
    bad[24 + 4 + 3] = 31
    with pytest.raises(BtfError, match="unknown BTF kind 31"):
        Btf(bytes(bad))


def _bpftool_members(raw: str, struct_name: str) -> dict[str, int]:
    """Top-level named members of a struct and their bit offsets, as bpftool reads them."""
    block = re.search(rf"^\[\d+\] STRUCT '{struct_name}' size=\d+ vlen=\d+\n((?:\t.*\n)*)", raw, re.M)
    assert block, struct_name
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"'(\w+)' type_id=\d+ bits_offset=(\d+)", block.group(1))}


@pytest.mark.kernel
def test_running_kernel_btf_parses_and_agrees_with_bpftool():
    # How long the parse takes is measured by bench/startup.py, not asserted here (docs/testing.md).
    btf = Btf.load()
    assert len(btf) > 10000
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool is not installed")
    raw = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "raw"],
                         check=True, capture_output=True, text=True).stdout
    assert raw.count("\n[") + 1 == len(btf) - 1  # every type id bpftool lists, we list
    for struct_name in ("net_device", "net", "ns_common"):
        for name, bits in _bpftool_members(raw, struct_name).items():
            assert btf.member(struct_name, name).bit_offset == bits, (struct_name, name)
    args = btf.tracepoint_args("kfree_skb")
    assert args[0].type_name == "struct sk_buff *"
