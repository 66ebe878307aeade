"""A small reader of raw BTF (the /sys/kernel/btf/vmlinux format) for offsets, enums and tracepoint args.

Only what tapttrace asks of the kernel's types is answered: where a member sits in a
struct, the values of an enum, and the parameters of a raw tracepoint. Types are
decoded on demand from one pass that records where each type record starts, so
loading all of vmlinux BTF stays far below a second in CPython.
"""
from __future__ import annotations

import enum
import hashlib
import os
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

_MAGIC = 0xEB9F
_HEADER = "HBBIIIII"  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len


class Kind(enum.IntEnum):
    """BTF_KIND_* values from include/uapi/linux/btf.h."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# Bytes that follow the 12-byte common header of each kind: (fixed, per vlen item).
# An unknown kind can't be skipped safely, so parsing stops on it instead of guessing.
_TRAILER = {
    Kind.UNKN: (0, 0),
    Kind.INT: (4, 0),
    Kind.PTR: (0, 0),
    Kind.ARRAY: (12, 0),
    Kind.STRUCT: (0, 12),
    Kind.UNION: (0, 12),
    Kind.ENUM: (0, 8),
    Kind.FWD: (0, 0),
    Kind.TYPEDEF: (0, 0),
    Kind.VOLATILE: (0, 0),
    Kind.CONST: (0, 0),
    Kind.RESTRICT: (0, 0),
    Kind.FUNC: (0, 0),
    Kind.FUNC_PROTO: (0, 8),
    Kind.VAR: (4, 0),
    Kind.DATASEC: (0, 12),
    Kind.FLOAT: (0, 0),
    Kind.DECL_TAG: (4, 0),
    Kind.TYPE_TAG: (0, 0),
    Kind.ENUM64: (0, 12),
}
_MODIFIERS = frozenset({Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
_QUALIFIERS = frozenset({Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
_MAX_NESTING = 64  # pointers, arrays and prototypes inside one another: real kernels stay far below


class BtfError(Exception):
    """The BTF data is malformed or of a version this reader does not know."""


class BtfNotFound(LookupError):
    """A type, member or enum asked for is not in this BTF."""


class BitfieldError(ValueError):
    """A byte offset or size was asked of a bitfield member."""


@dataclass(frozen=True)
class BtfType:
    """One type record's common header, decoded."""

    id: int
    kind: Kind
    name: str
    vlen: int
    kind_flag: bool
    size_or_type: int  # size for INT/STRUCT/UNION/ENUM*/FLOAT/DATASEC, else a type id
    offset: int  # where the record starts in the type section


@dataclass(frozen=True)
class Member:
    """One member of a struct or union as BTF lists it."""

    name: str  # "" for an anonymous struct/union member
    type_id: int
    bit_offset: int
    bitfield_size: int  # 0 unless the member is a bitfield


@dataclass(frozen=True)
class MemberInfo:
    """Where a (possibly nested) member sits from the start of the outer struct."""

    path: str
    bit_offset: int
    bitfield_size: int  # 0 unless a bitfield
    type_id: int
    type_name: str
    size: int  # bytes of the member's type (of the storage unit, for a bitfield)

    @property
    def is_bitfield(self) -> bool:
        return self.bitfield_size != 0

    @property
    def offset(self) -> int:
        """Byte offset; refuses bitfields, which have none."""
        if self.is_bitfield or self.bit_offset % 8:
            raise BitfieldError(
                f"{self.path} is a bitfield ({self.bitfield_size} bits at bit {self.bit_offset})"
            )
        return self.bit_offset // 8


@dataclass(frozen=True)
class TracepointArg:
    """One argument of a raw tracepoint, as BPF sees it in ctx->args[index]."""

    index: int
    type_id: int
    type_name: str  # C spelling, e.g. "struct sk_buff *" or "enum skb_drop_reason"
    name: str = ""  # BTF usually leaves btf_trace_* parameters unnamed


class Btf:
    """Random access to the types of one raw BTF blob."""

    def __init__(self, data: bytes, index: Optional[bytes] = None):
        """index: what index_blob() returned for the same data (a cache), else the types are walked."""
        self._data = data
        mv = memoryview(data)
        if len(data) < 24:
            raise BtfError("BTF data is shorter than its header")
        magic = struct.unpack_from("<H", data, 0)[0]
        if magic == _MAGIC:
            self._endian = "<"
        elif magic == 0x9FEB:
            self._endian = ">"
        else:
            raise BtfError(f"not BTF: bad magic {magic:#06x}")
        e = self._endian
        _, version, _, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            e + _HEADER, data, 0
        )
        if version != 1:
            raise BtfError(f"unsupported BTF version {version}")
        tstart, sstart = hdr_len + type_off, hdr_len + str_off
        if tstart + type_len > len(data) or sstart + str_len > len(data):
            raise BtfError("BTF sections run past the end of the data")
        self._types = mv[tstart : tstart + type_len]
        self._strings = bytes(mv[sstart : sstart + str_len])
        self._offsets, name_offs = self._index_from(index, type_len) if index else self._index_types(type_len)
        # Packed name offsets, one 4-byte slot per type id: bytes.find() over them is a
        # C-speed scan, cheaper than building a name dictionary of 100k+ entries.
        self._name_offs = name_offs.tobytes()

    @classmethod
    def load(cls, path: Union[str, Path] = VMLINUX_BTF, index_cache: Optional[Path] = None) -> Btf:
        """Read a raw BTF file, /sys/kernel/btf/vmlinux by default.

        index_cache: a file keeping the type index between runs. Walking vmlinux's 120k+ type
        records costs ≈0.14 s of every start; the cache is keyed by a hash of the BTF itself
        (≈5 ms), so a new kernel or module set can never be served a stale index."""
        data = Path(path).read_bytes()
        if index_cache is None:
            return cls(data)
        key = hashlib.blake2b(data, digest_size=16).digest()
        try:
            blob = Path(index_cache).read_bytes()
            if blob[:16] == key:
                return cls(data, index=blob[16:])
        except (OSError, BtfError):
            pass  # missing or unusable: walk the types and write it anew
        btf = cls(data)
        try:
            Path(index_cache).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(f"{index_cache}.{os.getpid()}")
            tmp.write_bytes(key + btf.index_blob())
            tmp.replace(index_cache)  # atomic: a concurrent reader sees the old file or the new one
        except OSError:
            pass  # a cache we can't write only costs time
        return btf

    def index_blob(self) -> bytes:
        """The type index as bytes, for Btf(data, index=...)."""
        return self._offsets.tobytes() + self._name_offs

    def _index_from(self, index: bytes, type_len: int) -> tuple[array, array]:
        half = len(index) // 2
        if len(index) % 8 or not half:
            raise BtfError("BTF index cache has a bad size")
        offsets, name_offs = array("I"), array("I")
        offsets.frombytes(index[:half])
        name_offs.frombytes(index[half:])
        if offsets[0] != 0 or offsets[-1] + 12 > max(type_len, 12) or len(offsets) != len(name_offs):
            raise BtfError("BTF index cache does not fit the type section")
        return offsets, name_offs

    def _index_types(self, type_len: int) -> tuple[array, array]:
        # One cheap pass: only the start of each record is kept; everything else is
        # decoded when asked. Type id 0 is void and has no record.
        unpack = struct.Struct(self._endian + "II").unpack_from
        trailer = [(0, 0)] * 32
        for kind, sizes in _TRAILER.items():
            trailer[kind] = sizes
        known = set(_TRAILER)
        types = self._types
        offsets = array("I", [0])
        name_offs = array("I", [0])
        append, append_name = offsets.append, name_offs.append
        pos = 0
        while pos < type_len:
            if pos + 12 > type_len:
                raise BtfError("last BTF type record runs past the type section")
            append(pos)
            name_off, info = unpack(types, pos)
            append_name(name_off)
            kind = (info >> 24) & 0x1F
            if kind not in known:
                raise BtfError(f"unknown BTF kind {kind} at type id {len(offsets) - 1}")
            fixed, per_item = trailer[kind]
            pos += 12 + fixed + per_item * (info & 0xFFFF)
        if pos != type_len:
            raise BtfError("last BTF type record runs past the type section")
        return offsets, name_offs

    # -- raw access ---------------------------------------------------------------

    def __len__(self) -> int:
        """Number of type ids, void included."""
        return len(self._offsets)

    def string(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        if end < 0:
            raise BtfError(f"BTF string offset {offset} is past the string section or unterminated")
        try:
            return self._strings[offset:end].decode()
        except UnicodeDecodeError:
            raise BtfError(f"BTF string at {offset} is not UTF-8") from None

    def type(self, type_id: int) -> BtfType:
        if not 0 < type_id < len(self._offsets):
            raise BtfNotFound(f"no BTF type id {type_id}")
        pos = self._offsets[type_id]
        name_off, info, size_or_type = struct.unpack_from(self._endian + "III", self._types, pos)
        return BtfType(
            id=type_id,
            kind=Kind((info >> 24) & 0x1F),
            name=self.string(name_off),
            vlen=info & 0xFFFF,
            kind_flag=bool(info >> 31),
            size_or_type=size_or_type,
            offset=pos,
        )

    def _items(self, t: BtfType, fmt: str) -> Iterator[tuple]:
        return struct.iter_unpack(
            self._endian + fmt,
            self._types[t.offset + 12 : t.offset + 12 + struct.calcsize(fmt) * t.vlen],
        )

    def members(self, type_id: int) -> list[Member]:
        """Members of a struct or union, in declaration order."""
        t = self.type(type_id)
        if t.kind not in (Kind.STRUCT, Kind.UNION):
            raise BtfNotFound(f"BTF type {type_id} is a {t.kind.name}, not a struct or union")
        out = []
        for name_off, mtype, moff in self._items(t, "III"):
            if t.kind_flag:
                out.append(Member(self.string(name_off), mtype, moff & 0xFFFFFF, moff >> 24))
            else:
                out.append(Member(self.string(name_off), mtype, moff, 0))
        return out

    # -- lookup by name -----------------------------------------------------------

    def find(self, name: str, kind: Optional[Kind] = None) -> list[int]:
        """Type ids named `name` (optionally of one kind), in id order."""
        needle = name.encode()
        ids: list[int] = []
        # Strings are deduplicated but one may still be the tail of another, so only
        # matches that start right after a NUL (or at 0) count.
        start = 0
        while True:
            hit = self._strings.find(needle + b"\0", start)
            if hit < 0:
                break
            if hit == 0 or self._strings[hit - 1] == 0:
                ids.extend(self._ids_named(hit))
            start = hit + 1
        ids.sort()
        if kind is not None:
            ids = [i for i in ids if self.type(i).kind == kind]
        return ids

    def _ids_named(self, name_off: int) -> Iterator[int]:
        # The array holds decoded ints, so its bytes are in native order whatever the BTF's.
        packed = struct.pack("=I", name_off)
        pos = self._name_offs.find(packed)
        while pos >= 0:
            if pos % 4 == 0:
                yield pos // 4
            pos = self._name_offs.find(packed, pos + 1)

    def _named(self, name: str, kinds: tuple[Kind, ...]) -> int:
        for type_id in self.find(name):
            t = self.type(type_id)
            # A FWD or an empty declaration may share the name; the definition is what counts.
            if t.kind in kinds:
                return type_id
        wanted = "/".join(k.name.lower() for k in kinds)
        raise BtfNotFound(f"no {wanted} named {name!r} in BTF")

    def struct_id(self, name: str) -> int:
        """The id of struct/union `name`, or of the one typedef `name` stands for (possible_net_t)."""
        try:
            return self._named(name, (Kind.STRUCT, Kind.UNION))
        except BtfNotFound:
            for type_id in self.find(name, Kind.TYPEDEF):
                target = self.resolve(type_id)
                if target and self.type(target).kind in (Kind.STRUCT, Kind.UNION):
                    return target
            raise

    # -- type helpers -------------------------------------------------------------

    def resolve(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the underlying type id."""
        seen = 0
        while type_id and self.type(type_id).kind in _MODIFIERS:
            type_id = self.type(type_id).size_or_type
            seen += 1
            if seen > 64:
                raise BtfError(f"modifier loop at BTF type {type_id}")
        return type_id

    def size_of(self, type_id: int, _depth: int = 0) -> int:
        """sizeof() of a type, in bytes."""
        if _depth > _MAX_NESTING:  # arrays of arrays of…: only damaged BTF loops
            raise BtfError(f"BTF type {type_id} nests deeper than {_MAX_NESTING}")
        type_id = self.resolve(type_id)
        if type_id == 0:
            raise BtfNotFound("void has no size")
        t = self.type(type_id)
        if t.kind in (Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FLOAT):
            return t.size_or_type
        if t.kind == Kind.PTR:
            return self.pointer_size
        if t.kind == Kind.ARRAY:
            elem, _, nelems = struct.unpack_from(self._endian + "III", self._types, t.offset + 12)
            return self.size_of(elem, _depth + 1) * nelems
        raise BtfNotFound(f"BTF type {type_id} ({t.kind.name}) has no size")

    @property
    def pointer_size(self) -> int:
        # BTF doesn't record pointer width; the kernel's long is as wide as a pointer.
        for type_id in self.find("long unsigned int", Kind.INT):
            return self.type(type_id).size_or_type
        return 8

    def type_name(self, type_id: int, _depth: int = 0) -> str:
        """The C spelling of a type, e.g. "const struct sk_buff *"."""
        if type_id == 0:
            return "void"
        if _depth > _MAX_NESTING:  # a pointer to itself, a prototype taking itself: only damaged BTF
            raise BtfError(f"BTF type {type_id} nests deeper than {_MAX_NESTING}")
        spell = lambda inner: self.type_name(inner, _depth + 1)  # noqa: E731
        t = self.type(type_id)
        if t.kind in (Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FWD):
            tag = {Kind.STRUCT: "struct", Kind.UNION: "union"}.get(t.kind, "enum")
            if t.kind == Kind.FWD:
                tag = "union" if t.kind_flag else "struct"
            return f"{tag} {t.name or '(anon)'}"
        if t.kind == Kind.PTR:
            inner = spell(t.size_or_type)
            return inner + ("*" if inner.endswith("*") else " *")
        if t.kind == Kind.TYPE_TAG:
            # __rcu/__user annotations: invisible in C, and args must compare equal with or without them.
            return spell(t.size_or_type)
        if t.kind in _QUALIFIERS:
            inner = spell(t.size_or_type)
            word = t.kind.name.lower()
            return f"{inner} {word}" if inner.endswith("*") else f"{word} {inner}"
        if t.kind == Kind.ARRAY:
            elem, _, nelems = struct.unpack_from(self._endian + "III", self._types, t.offset + 12)
            return f"{spell(elem)}[{nelems}]"
        if t.kind == Kind.FUNC_PROTO:
            params = ", ".join(spell(p) for _, p in self.proto_params(type_id))
            return f"{spell(t.size_or_type)} (*)({params})"
        return t.name

    def proto_params(self, type_id: int) -> list[tuple[str, int]]:
        """(name, type id) of each parameter of a FUNC_PROTO."""
        t = self.type(type_id)
        if t.kind != Kind.FUNC_PROTO:
            raise BtfNotFound(f"BTF type {type_id} is a {t.kind.name}, not a FUNC_PROTO")
        return [(self.string(n), p) for n, p in self._items(t, "II")]

    # -- the questions tapttrace asks ---------------------------------------------

    def member(self, struct_name: str, path: str) -> MemberInfo:
        """Locate `path` ("a.b.c") in struct `struct_name`, looking through anonymous members."""
        type_id = self.struct_id(struct_name)
        bits = 0
        found: Optional[Member] = None
        for depth, part in enumerate(path.split(".")):
            if depth:
                type_id = self.resolve(found.type_id)  # type: ignore[union-attr]
                kind = self.type(type_id).kind if type_id else None
                if kind not in (Kind.STRUCT, Kind.UNION):
                    raise BtfNotFound(
                        f"{struct_name}.{'.'.join(path.split('.')[:depth])} is not a struct or union"
                    )
            hit = self._find_member(type_id, part)
            if hit is None:
                raise BtfNotFound(f"struct {struct_name} has no member {path!r}")
            delta, found = hit
            bits += delta
        assert found is not None
        bitfield = found.bitfield_size
        start = bits
        # Old-style (kind_flag=0) bitfields keep their width in the INT encoding instead.
        target = self.resolve(found.type_id)
        if not bitfield and target and self.type(target).kind == Kind.INT:
            t = self.type(target)
            encoding = struct.unpack_from(self._endian + "I", self._types, t.offset + 12)[0]
            int_bits, int_off = encoding & 0xFF, (encoding >> 16) & 0xFF
            if int_bits != t.size_or_type * 8:
                bitfield, start = int_bits, bits + int_off
        return MemberInfo(
            path=f"{struct_name}.{path}",
            bit_offset=start,
            bitfield_size=bitfield,
            type_id=found.type_id,
            type_name=self.type_name(found.type_id),
            size=self.size_of(found.type_id),
        )

    def _find_member(self, type_id: int, name: str) -> Optional[tuple[int, Member]]:
        members = self.members(type_id)
        for m in members:
            if m.name == name:
                return m.bit_offset, m
        # Not a direct member: it may live in an anonymous struct/union (sk_buff is full of them).
        for m in members:
            if m.name:
                continue
            inner = self.resolve(m.type_id)
            if inner and self.type(inner).kind in (Kind.STRUCT, Kind.UNION):
                hit = self._find_member(inner, name)
                if hit is not None:
                    return m.bit_offset + hit[0], hit[1]
        return None

    def member_offset(self, struct_name: str, path: str) -> int:
        """Byte offset of `path` in `struct_name`; BitfieldError for bitfields."""
        return self.member(struct_name, path).offset

    def member_size(self, struct_name: str, path: str) -> int:
        """Byte size of `path` in `struct_name`; BitfieldError for bitfields."""
        info = self.member(struct_name, path)
        if info.is_bitfield:
            raise BitfieldError(f"{info.path} is a {info.bitfield_size}-bit bitfield")
        return info.size

    def enum_values(self, name: str) -> dict[str, int]:
        """{enumerator: value} of enum `name` (ENUM or ENUM64)."""
        type_id = self._named(name, (Kind.ENUM, Kind.ENUM64))
        t = self.type(type_id)
        signed = t.kind_flag
        out: dict[str, int] = {}
        if t.kind == Kind.ENUM:
            for name_off, value in self._items(t, "I" + ("i" if signed else "I")):
                out[self.string(name_off)] = value
        else:
            for name_off, lo, hi in self._items(t, "III"):
                value = (hi << 32) | lo
                if signed and value >= 1 << 63:
                    value -= 1 << 64
                out[self.string(name_off)] = value
        return out

    def tracepoint_args(self, tracepoint: str) -> tuple[TracepointArg, ...]:
        """Arguments of raw tracepoint `tracepoint`, from typedef btf_trace_<tracepoint>."""
        typedef = self._named(f"btf_trace_{tracepoint}", (Kind.TYPEDEF,))
        ptr = self.type(self.type(typedef).size_or_type)
        proto = self.type(ptr.size_or_type) if ptr.kind == Kind.PTR else ptr
        if proto.kind != Kind.FUNC_PROTO:
            raise BtfError(f"btf_trace_{tracepoint} is not a pointer to a function prototype")
        params = self.proto_params(proto.id)
        # The first parameter is the probe's `void *__data`, which BPF never sees.
        return tuple(
            TracepointArg(index=i, type_id=tid, type_name=self.type_name(tid), name=name)
            for i, (name, tid) in enumerate(params[1:])
        )
