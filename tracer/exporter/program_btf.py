"""Load bpf/exporter_btf.c's precompiled CO-RE object with libbpf (through ctypes): the libbpf
twin of program.ExporterProgram, with the same interface (set_devices, read, delete, close,
attached, context manager) and the same map layouts (bpf/exporter.h, mirrored in program.py).

Counters: the frame path counts in per-CPU arrays indexed by small device indices and pair slots
assigned here (IndexTable; bpf/exporter_btf.c's top comment), the rest in per-CPU hashes as the
bcc build does; read() adds both up into the same Counts keys, so the collector cannot tell.

No compiler and no bcc in the process (importing bcc maps LLVM, ≈ 76 MB resident): the object
is built once per (sources, kernel BTF) into /var/cache/tapttrace/bpf/ by
tracer/libbpf_loader.build_object (scripts/setup.sh, or at first use under a lock); the maps are
read and written with bpf(2) through libbpf's thin wrappers.
"""
from __future__ import annotations

import ctypes
import errno
import struct
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from ..errors import KernelError, say_note
from ..libbpf_loader import _why, build_object, find_map, libbpf, open_object
from .program import COUNT_FIELDS, HEALTH, MAP_LAYOUT, ROLE_BRIDGE, ROLE_PORT, Counts, DevKey, Role, count_key

SOURCE = "exporter.c"
PROGRAMS = ("ttx_netif_receive_skb", "ttx_net_dev_queue", "ttx_kfree_skb", "ttx_consume_skb")
FDB_PROGRAMS = {"bridge:br_fdb_update": "ttx_br_fdb_update", "bridge:fdb_delete": "ttx_fdb_delete"}
CONFIG = struct.Struct("<ii")  # struct ttx_config: kfree_reason_arg, pad
COUNTER_MAPS = ("verdicts", "drops", "taps", "fdb")
_ENOENT = errno.ENOENT

DEV_BITS = 8  # TTX_DEV_BITS (exporter.h): device indices 1 .. 2**DEV_BITS - 1
MAX_DEVS = 1 << DEV_BITS
V_FORWARDED, V_FLOODED, V_LOCAL, V_DROPPED, V_DELIVERED = 1, 2, 3, 4, 5
TAP_QUEUED, TAP_DELIVERED = 1, 2


# ctypes mirrors of exporter.h's libbpf-only structs.
class DevEnt(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("role", "bridge", "idx", "pad")]


class DevCounts(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("tap_queued", "tap_delivered", "flooded", "local", "dropped")]


class PairCounts(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("forwarded", "delivered")]


BTF_MAP_LAYOUT = {**MAP_LAYOUT, "devs": (DevKey, DevEnt), "devcnt": (ctypes.c_uint32, DevCounts),
                  "paircnt": (ctypes.c_uint32, PairCounts), "pairs": (ctypes.c_uint32, ctypes.c_uint32)}

Ident = tuple[int, int, int]  # what a device index stands for: (netns, ifindex, bridge)


def dev_series(ident: Ident) -> list[tuple[str, tuple]]:
    """The Counts (family, key) of each DevCounts field of the device `ident`, in field order."""
    ns, ifindex, br = ident
    return [("taps", (ns, ifindex, TAP_QUEUED, 0)), ("taps", (ns, ifindex, TAP_DELIVERED, 0)),
            ("verdicts", (ns, br, ifindex, 0, V_FLOODED)), ("verdicts", (ns, br, ifindex, br, V_LOCAL)),
            ("verdicts", (ns, br, ifindex, 0, V_DROPPED))]


def pair_series(into: Ident, out: Ident) -> list[tuple[str, tuple]]:
    """The Counts (family, key) of each PairCounts field of the pair (in port, out port)."""
    ns, in_port, br = into
    return [("verdicts", (ns, br, in_port, out[1], V_FORWARDED)), ("verdicts", (ns, br, in_port, out[1], V_DELIVERED))]


@dataclass
class IndexChanges:
    """What IndexTable.assign changed, for the kernel's tables."""

    new_devs: list[int] = field(default_factory=list)  # indices given out: zero their counters first
    new_pairs: list[tuple[int, int, int]] = field(default_factory=list)  # (in idx, out idx, slot)
    freed_pairs: list[tuple[int, int, int]] = field(default_factory=list)


class IndexTable:
    """Small indices for watched devices (1 .. max_devs-1) and counter slots for (in, out) pairs of
    one bridge (1 .. max_pairs-1), assigned by user space; 0 is none (the kernel counts in the hash
    maps then). An index outlives its device's watch ("retired") until its counters are read as zero
    (the collector deletes the series of devices gone for good), so vanished devices keep their
    series exactly as hash keys do."""

    def __init__(self, max_devs: int = MAX_DEVS, max_pairs: int = 4096):
        self.idx: dict[Ident, int] = {}
        self.owner: dict[int, Ident] = {}
        self.pairs: dict[tuple[int, int], int] = {}
        self.retired: set[int] = set()
        # Given out lowest first, given back to the end: a freed index is reused as late as possible.
        self._free_devs = deque(range(1, max_devs))
        self._free_pairs = deque(range(1, max_pairs))

    def of(self, ns: int, ifindex: int, bridge: int) -> int:
        return self.idx.get((ns, ifindex, bridge), 0)

    def assign(self, want: dict[tuple[int, int], tuple[int, int]], releasable: Callable[[int], bool]) -> IndexChanges:
        """Indices for the devices `want` ((netns, ifindex) -> (role, bridge)); indices retired by an
        earlier call whose counters releasable() finds all zero are given back first."""
        ch = IndexChanges()
        idents = {(ns, i, br): role for (ns, i), (role, br) in want.items()}
        for idx in sorted(self.retired):
            if self.owner[idx] not in idents and releasable(idx):
                ch.freed_pairs += self._free(idx)
        for ident, idx in self.idx.items():
            if ident in idents:
                self.retired.discard(idx)  # watched again: counting goes on under the same index
            else:
                self.retired.add(idx)
        for ident in sorted(idents):
            if ident not in self.idx and self._free_devs:
                idx = self._free_devs.popleft()
                self.idx[ident], self.owner[idx] = idx, ident
                ch.new_devs.append(idx)
        by_bridge: dict[tuple[int, int], list[tuple[Ident, int]]] = {}
        for ident, role in sorted(idents.items()):
            if ident[2] and ident in self.idx:
                by_bridge.setdefault((ident[0], ident[2]), []).append((ident, role))
        for members in by_bridge.values():
            for into, in_role in members:
                if not in_role & (ROLE_PORT | ROLE_BRIDGE):
                    continue
                for out, out_role in members:
                    if out == into or not out_role & ROLE_PORT:
                        continue
                    pair = (self.idx[into], self.idx[out])
                    if pair not in self.pairs and self._free_pairs:
                        self.pairs[pair] = slot = self._free_pairs.popleft()
                        ch.new_pairs.append((*pair, slot))
        return ch

    def pairs_of(self, idx: int) -> list[tuple[int, int, int]]:
        return [(i, o, slot) for (i, o), slot in self.pairs.items() if idx in (i, o)]

    def _free(self, idx: int) -> list[tuple[int, int, int]]:
        gone = self.pairs_of(idx)
        for i, o, slot in gone:
            del self.pairs[(i, o)]
            self._free_pairs.append(slot)
        del self.idx[self.owner.pop(idx)]
        self.retired.discard(idx)
        self._free_devs.append(idx)
        return gone

    def series(self) -> Iterator[tuple[str, int, list[tuple[str, tuple]]]]:
        """(map, index, [(family, key) per field]) of every counter element in use."""
        for idx, ident in self.owner.items():
            yield "devcnt", idx, dev_series(ident)
        for (i, o), slot in self.pairs.items():
            yield "paircnt", slot, pair_series(self.owner[i], self.owner[o])


class _Map:
    """One map of the loaded object, by fd; per-CPU values come back as one list per key."""

    def __init__(self, lib: ctypes.CDLL, fd: int, key_type, value_type, per_cpu: int = 0):
        self._lib, self.fd = lib, fd
        self.key_type, self.value_type = key_type, value_type
        self.per_cpu = per_cpu  # number of possible CPUs, 0 for a shared map
        stride = (ctypes.sizeof(value_type) + 7) // 8 * 8  # the kernel rounds per-CPU values to 8 bytes
        self._value_buf = ctypes.c_uint64 * (per_cpu * stride // 8) if per_cpu else value_type

    def keys(self) -> Iterator:
        key, nxt = None, self.key_type()
        while True:
            err = self._lib.bpf_map_get_next_key(self.fd, ctypes.byref(key) if key is not None else None,
                                                 ctypes.byref(nxt))
            if err:
                if -err != _ENOENT:
                    raise KernelError(f"reading an exporter map failed: {errno.errorcode.get(-err, err)}")
                return
            key = nxt
            yield key
            nxt = self.key_type()

    def lookup(self, key):
        """The value (a list of per-CPU u64 for a per-CPU map), or None."""
        buf = self._value_buf()
        if self._lib.bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(buf)):
            return None
        if self.per_cpu:
            stride = len(buf) // self.per_cpu
            return [buf[i * stride] for i in range(self.per_cpu)]
        return buf

    def sums(self, key) -> Optional[list[int]]:
        """A per-CPU map's value as its u64 words, each summed over CPUs."""
        buf = self._value_buf()
        if self._lib.bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(buf)):
            return None
        stride = len(buf) // self.per_cpu
        return [sum(buf[c * stride + w] for c in range(self.per_cpu)) for w in range(stride)]

    def zero_words(self, key, words: Optional[Iterable[int]] = None) -> None:
        """Zero these u64 words (all, by default) of a per-CPU map's value on every CPU."""
        buf = self._value_buf()
        if words is not None:
            if self._lib.bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(buf)):
                return
            stride = len(buf) // self.per_cpu
            for c in range(self.per_cpu):
                for w in words:
                    buf[c * stride + w] = 0
        self.update(key, buf)

    def items(self) -> Iterator[tuple]:
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:  # deleted meanwhile
                yield key, value

    def update(self, key, value) -> None:
        err = self._lib.bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), 0)
        if err:
            raise KernelError(f"updating an exporter map failed: {errno.errorcode.get(-err, err)}")

    def delete(self, key) -> None:
        self._lib.bpf_map_delete_elem(self.fd, ctypes.byref(key))  # ENOENT: already gone, fine


class LibbpfExporterProgram:
    """bpf/exporter_btf.c loaded and attached by libbpf. Leaving the context (or close())
    detaches everything."""

    loader = "libbpf"

    def __init__(self, features, max_series: int = 16384, max_frames: int = 65536,
                 obj_path: Optional[Path] = None, attach: bool = True, max_pairs: int = 4096):
        """attach=False loads (the verifier's say) without attaching, for tests."""
        self._lib = libbpf()
        self._obj = None
        self.indices = IndexTable(MAX_DEVS, int(max_pairs))
        self._links: list[int] = []
        self.notes: list[str] = []  # what was given up (the FDB hooks where the bridge has no tracepoints)
        try:
            self._open(obj_path or build_object(source=SOURCE))
            self._load(features, int(max_series), int(max_frames), int(max_pairs))
            if attach:
                self._attach()
            self._maps = self._open_maps()
        except BaseException:
            self.close()
            raise

    def _open(self, path: Path) -> None:
        self._obj = open_object(self._lib, path)

    def _map(self, name: str) -> int:
        return find_map(self._lib, self._obj, name, SOURCE)

    def _programs(self) -> Iterator[tuple[str, int]]:
        lib = self._lib
        prog = lib.bpf_object__next_program(self._obj, None) if self._obj else None
        while prog:
            yield lib.bpf_program__name(prog).decode(), prog
            prog = lib.bpf_object__next_program(self._obj, prog)

    def _load(self, features, max_series: int, max_frames: int, max_pairs: int) -> None:
        lib = self._lib
        for tracepoint, name in FDB_PROGRAMS.items():
            tp = features.tracepoints.get(tracepoint)
            if tp is None or not tp.present:  # the bridge (a module) not loaded: nothing to hook
                prog = dict(self._programs())[name]
                lib.bpf_program__set_autoload(prog, False)
                self._note(f"no FDB counts from {tracepoint} (the kernel has no such tracepoint now: "
                           "is the bridge module loaded?)")
        rodata = self._map(".rodata")
        size = ctypes.c_size_t(0)
        lib.bpf_map__initial_value(rodata, ctypes.byref(size))
        if size.value != CONFIG.size:
            raise KernelError(f"bpf/{SOURCE}'s .rodata is {size.value} bytes, not the {CONFIG.size} of "
                              "struct ttx_config: rebuild the object (scripts/setup.sh)")
        reason = 2 if features.kfree_skb_reason_arg == 2 else -1
        config = ctypes.create_string_buffer(CONFIG.pack(reason, 0), CONFIG.size)
        if lib.bpf_map__set_initial_value(rodata, config, CONFIG.size):
            raise KernelError("libbpf refused the exporter's configuration (.rodata)")
        for name, entries in [(n, max_series) for n in COUNTER_MAPS] + [("tapq", max_frames), ("paircnt", max_pairs)]:
            if lib.bpf_map__set_max_entries(self._map(name), entries):
                raise KernelError(f"libbpf refused {entries} entries for the exporter's map {name}")
        bad = []
        for name, (key, val) in BTF_MAP_LAYOUT.items():
            m = self._map(name)
            if lib.bpf_map__key_size(m) != ctypes.sizeof(key):
                bad.append(f"{name} key {lib.bpf_map__key_size(m)} != {ctypes.sizeof(key)}")
            if lib.bpf_map__value_size(m) != ctypes.sizeof(val):
                bad.append(f"{name} value {lib.bpf_map__value_size(m)} != {ctypes.sizeof(val)}")
        if bad:
            raise KernelError(f"bpf/{SOURCE} and tracer/exporter/program.py disagree on map layouts: "
                              + ", ".join(bad))
        err = lib.bpf_object__load(self._obj)
        if err:
            raise KernelError(f"could not load bpf/{SOURCE}: {_why(err)}")

    def _attach(self) -> None:
        for name, prog in self._programs():
            if not self._lib.bpf_program__autoload(prog):
                continue
            link = self._lib.bpf_program__attach(prog)
            if not link:
                raise KernelError(f"could not attach {name} of bpf/{SOURCE}: {_why(ctypes.get_errno())}")
            self._links.append(link)

    def _open_maps(self) -> dict[str, _Map]:
        lib = self._lib
        ncpus = max(1, lib.libbpf_num_possible_cpus())
        fd = lambda name: lib.bpf_map__fd(self._map(name))  # noqa: E731
        maps = {"devs": _Map(lib, fd("devs"), DevKey, DevEnt),
                "devcnt": _Map(lib, fd("devcnt"), ctypes.c_uint32, DevCounts, ncpus),
                "paircnt": _Map(lib, fd("paircnt"), ctypes.c_uint32, PairCounts, ncpus),
                "pairs": _Map(lib, fd("pairs"), ctypes.c_uint32, ctypes.c_uint32),
                "vm_macs": _Map(lib, fd("vm_macs"), ctypes.c_uint64, DevKey),
                "devgen": _Map(lib, fd("devgen"), ctypes.c_uint32, ctypes.c_uint64),
                "health": _Map(lib, fd("health"), ctypes.c_uint32, ctypes.c_uint64, ncpus)}
        for name in COUNTER_MAPS:
            maps[name] = _Map(lib, fd(name), MAP_LAYOUT[name][0], ctypes.c_uint64, ncpus)
        return maps

    def _note(self, note: str) -> None:
        self.notes.append(note)
        say_note(note)

    @property
    def attached(self) -> int:
        return len(self._links)

    def loaded_programs(self) -> set[str]:
        """Names of the object's programs that are in the kernel (passed the verifier)."""
        return {name for name, prog in self._programs() if self._lib.bpf_program__fd(prog) > 0}

    def set_devices(self, roles: Iterable[Role], vm_macs: dict[int, tuple[int, int]]) -> None:
        """Make the kernel's device and VM-MAC tables exactly these (adds, updates, removes)."""
        want = {(r.netns, r.ifindex): (r.role, r.bridge) for r in roles}
        ch = self.indices.assign(want, self._all_zero)
        m = self._maps
        for i, o, _ in ch.freed_pairs:
            m["pairs"].update(ctypes.c_uint32(i << DEV_BITS | o), ctypes.c_uint32(0))
        for idx in ch.new_devs:  # counters start at zero before the kernel is given the index
            m["devcnt"].zero_words(ctypes.c_uint32(idx))
        for i, o, slot in ch.new_pairs:
            m["paircnt"].zero_words(ctypes.c_uint32(slot))
            m["pairs"].update(ctypes.c_uint32(i << DEV_BITS | o), ctypes.c_uint32(slot))
        want_ent = {key: (role, br, self.indices.of(key[0], key[1], br)) for key, (role, br) in want.items()}
        devs = m["devs"]
        have = {(k.netns, k.ifindex): (v.role, v.bridge, v.idx) for k, v in devs.items()}
        changed = False
        for key in have.keys() - want_ent.keys():
            devs.delete(DevKey(*key))
            changed = True
        for key, val in want_ent.items():
            if have.get(key) != val:
                devs.update(DevKey(*key), DevEnt(*val, 0))
                changed = True
        if changed or self._first_devices:
            # A new generation makes the hooks' per-CPU device cache ask `devs` again (bpf/exporter.c).
            gen = self._maps["devgen"]
            zero = ctypes.c_uint32(0)
            now = gen.lookup(zero)
            gen.update(zero, ctypes.c_uint64((now.value if now is not None else 0) + 1))
            self._first_devices = False
        macs = self._maps["vm_macs"]
        have_macs = {k.value: (v.netns, v.ifindex) for k, v in macs.items()}
        for mac in have_macs.keys() - vm_macs.keys():
            macs.delete(ctypes.c_uint64(mac))
        for mac, tap in vm_macs.items():
            if have_macs.get(mac) != tap:
                macs.update(ctypes.c_uint64(mac), DevKey(*tap))

    _first_devices = True

    def _all_zero(self, idx: int) -> bool:
        """No count left under device index idx (its own counters and its pairs'): it can be reused."""
        elems = [("devcnt", idx)] + [("paircnt", slot) for _, _, slot in self.indices.pairs_of(idx)]
        return not any(any(self._maps[name].sums(ctypes.c_uint32(i)) or ()) for name, i in elems)

    def _sum(self, name: str) -> dict[tuple, int]:
        fields = COUNT_FIELDS[name]
        return {tuple(getattr(k, f) for f in fields): sum(per_cpu) for k, per_cpu in self._maps[name].items()}

    def read(self) -> Counts:
        health = self._maps["health"]
        families = {name: self._sum(name) for name in COUNTER_MAPS}
        for name, i, series in self.indices.series():
            for (family, key), value in zip(series, self._maps[name].sums(ctypes.c_uint32(i)) or ()):
                if value:
                    out = families[family]
                    out[key] = out.get(key, 0) + value
        return Counts(
            verdicts=families["verdicts"],
            drops=families["drops"],
            taps=families["taps"],
            fdb=families["fdb"],
            health={name: sum(health.lookup(ctypes.c_uint32(i)) or [0]) for i, name in HEALTH.items()},
        )

    def delete(self, name: str, keys: Iterable[tuple]) -> None:
        """Remove counter series (of devices gone for good) so the kernel maps don't fill up: the
        hash entries, and the array words that count the same keys."""
        table = self._maps[name]
        doomed = set()
        for key in keys:
            table.delete(count_key(name, key))
            doomed.add(key)
        for map_name, i, series in self.indices.series():
            words = [w for w, (family, key) in enumerate(series) if family == name and key in doomed]
            if words:
                self._maps[map_name].zero_words(ctypes.c_uint32(i), words)

    def close(self) -> None:
        while self._links:
            self._lib.bpf_link__destroy(self._links.pop())
        if self._obj is not None:
            self._lib.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> "LibbpfExporterProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
