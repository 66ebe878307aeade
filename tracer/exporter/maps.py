"""bpf/exporter.c's maps as user space sees them, whichever loader made them.

bpf/exporter.c is one source for both loaders, so both make the same maps: libbpf
(program_btf.LibbpfExporterProgram) and bcc (program.ExporterProgram) only build, load and attach
it, then hand the maps' fds to ExporterMaps, which does the rest the same way for both: the
device table with its small indices (IndexTable), reads that add the per-CPU arrays and hashes up
into one Counts, deletes. Maps are read and written by fd through libbpf's thin bpf_map_*
wrappers (libbpf.so.1 is there wherever bcc is: Debian's libbcc links it), never through bcc's
table objects, so the collector cannot tell which loader ran.

The ctypes structures mirror bpf/exporter.h; their sizes are checked against the loaded maps'.
"""
from __future__ import annotations

import ctypes
import errno
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from ..errors import KernelError

ROLE_PORT, ROLE_TAP, ROLE_BRIDGE = 1, 2, 4
VERDICTS = {1: "forwarded", 2: "flooded", 3: "local", 4: "dropped", 5: "delivered"}
TAP_EVENTS = {1: "queued", 2: "delivered", 3: "dropped", 4: "local"}
FDB_EVENTS = {1: "learned", 2: "moved", 3: "deleted"}
DECISIONS = {1: "forward", 2: "local", 3: "flood"}  # TTX_D_*: the bridge's FDB decision
PKT_TYPES = {0: "unicast", 1: "multicast", 2: "broadcast"}  # TTX_PKT_*: the kernel's enum br_pkt_type
HEALTH = {0: "counter_map_full", 1: "frame_table_full"}
V_FORWARDED, V_FLOODED, V_LOCAL, V_DROPPED, V_DELIVERED = 1, 2, 3, 4, 5
TAP_QUEUED, TAP_DELIVERED = 1, 2
DEV_BITS = 8  # TTX_DEV_BITS (exporter.h): device indices 1 .. 2**DEV_BITS - 1
MAX_DEVS = 1 << DEV_BITS
_ENOENT = errno.ENOENT


# ctypes mirrors of bpf/exporter.h.
class DevKey(ctypes.Structure):
    _fields_ = [("netns", ctypes.c_uint32), ("ifindex", ctypes.c_uint32)]


class DevEnt(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("role", "bridge", "idx", "pad")]


class VerdictKey(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("netns", "bridge", "in_port", "out_port", "verdict")]


class DropKey(ctypes.Structure):
    _fields_ = [("location", ctypes.c_uint64)] + [(n, ctypes.c_uint32) for n in ("netns", "ifindex", "reason", "pad")]


class TapKey(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("netns", "ifindex", "event", "reason")]


class FdbKey(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("netns", "bridge", "port", "event")]


class DecisionKey(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("netns", "bridge", "in_port", "out_port", "decision", "pkt_type")]


class DevCounts(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("tap_queued", "tap_delivered", "flooded", "local", "dropped")]


class PairCounts(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("forwarded", "delivered")]


COUNTER_MAPS = ("verdicts", "drops", "taps", "fdb", "decisions")
# Every map user space touches: (key, value) as the kernel holds them (a per-CPU map's value is one
# CPU's), per_cpu. Checked against each loaded map's key and value sizes.
MAP_LAYOUT = {"verdicts": (VerdictKey, ctypes.c_uint64, True), "drops": (DropKey, ctypes.c_uint64, True),
              "taps": (TapKey, ctypes.c_uint64, True), "fdb": (FdbKey, ctypes.c_uint64, True),
              "decisions": (DecisionKey, ctypes.c_uint64, True),
              "devs": (DevKey, DevEnt, False), "vm_macs": (ctypes.c_uint64, DevKey, False),
              "devgen": (ctypes.c_uint32, ctypes.c_uint64, False), "health": (ctypes.c_uint32, ctypes.c_uint64, True),
              "devcnt": (ctypes.c_uint32, DevCounts, True), "paircnt": (ctypes.c_uint32, PairCounts, True),
              "pairs": (ctypes.c_uint32, ctypes.c_uint32, False)}
# The counter maps' keys as Counts (and delete()) spell them: field names in tuple order.
COUNT_FIELDS = {"verdicts": ("netns", "bridge", "in_port", "out_port", "verdict"),
                "drops": ("netns", "ifindex", "reason", "location"),
                "taps": ("netns", "ifindex", "event", "reason"),
                "fdb": ("netns", "bridge", "port", "event"),
                "decisions": ("netns", "bridge", "in_port", "out_port", "decision", "pkt_type")}


def count_key(name: str, key: tuple) -> ctypes.Structure:
    """The ctypes key of counter map `name` for a Counts key tuple (fields by name: a DropKey's
    tuple order is not its struct order)."""
    return MAP_LAYOUT[name][0](**dict(zip(COUNT_FIELDS[name], key)))


@dataclass(frozen=True)
class Role:
    """What user space tells the kernel about one interesting device."""

    netns: int
    ifindex: int
    role: int  # ROLE_* bits
    bridge: int  # the bridge's ifindex (its own for a bridge device), 0 for a tap outside bridges


@dataclass(frozen=True)
class Counts:
    """One read of every counter map: key tuples -> totals summed over CPUs."""

    verdicts: dict[tuple[int, int, int, int, int], int]  # (netns, bridge, in_port, out_port, verdict)
    drops: dict[tuple[int, int, int, int], int]  # (netns, ifindex, reason, location)
    taps: dict[tuple[int, int, int, int], int]  # (netns, ifindex, event, reason)
    fdb: dict[tuple[int, int, int, int], int]  # (netns, bridge, port, event)
    health: dict[str, int]
    # (netns, bridge, in_port, out_port, decision, pkt_type): empty where the bridge's functions
    # can't be hooked (no fentry, no kprobes; the bcc exporter)
    decisions: dict[tuple[int, int, int, int, int, int], int] = field(default_factory=dict)


# -- device indices ---------------------------------------------------------------------------

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


# -- maps by fd -------------------------------------------------------------------------------


class _MapInfo(ctypes.Structure):
    """The head of the kernel's struct bpf_map_info (bpf_obj_get_info_by_fd fills what fits)."""

    _fields_ = [(n, ctypes.c_uint32) for n in ("type", "id", "key_size", "value_size", "max_entries", "map_flags")]


class _Map:
    """One map of the loaded program, by fd; per-CPU values come back as one list per key."""

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


def layout_errors(lib: ctypes.CDLL, fds: dict[str, int]) -> list[str]:
    """Where the loaded maps' key/value sizes differ from MAP_LAYOUT's (exporter.h's mirrors)."""
    bad = []
    for name, (key, val, _) in MAP_LAYOUT.items():
        info, size = _MapInfo(), ctypes.c_uint32(ctypes.sizeof(_MapInfo))
        err = lib.bpf_obj_get_info_by_fd(fds[name], ctypes.byref(info), ctypes.byref(size))
        if err:
            bad.append(f"{name}: {errno.errorcode.get(-err, err)}")
            continue
        if info.key_size != ctypes.sizeof(key):
            bad.append(f"{name} key {info.key_size} != {ctypes.sizeof(key)}")
        if info.value_size != ctypes.sizeof(val):
            bad.append(f"{name} value {info.value_size} != {ctypes.sizeof(val)}")
    return bad


class CounterProgram(Protocol):
    """The exporter's BPF program as the collector uses it: program.ExporterProgram (bcc) or
    program_btf.LibbpfExporterProgram, both reading their maps through ExporterMaps; leaving its
    block (or close()) detaches it."""

    def set_devices(self, roles: Iterable[Role], vm_macs: dict[int, tuple[int, int]]) -> None: ...
    def read(self) -> Counts: ...
    def delete(self, name: str, keys: Iterable[tuple]) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> CounterProgram: ...
    def __exit__(self, *exc: object) -> None: ...


class ExporterMaps:
    """What follows the load, for either loader: a loader's class (a subclass) loads and attaches
    bpf/exporter.c, then calls _take_maps with the maps' fds; set_devices, read and delete are
    the same code for both. close() (or leaving the context) detaches everything."""

    loader = ""

    def __init__(self, max_pairs: int = 4096):
        from ..libbpf_loader import libbpf

        self._lib = libbpf()
        self.indices = IndexTable(MAX_DEVS, int(max_pairs))
        self._maps: dict[str, _Map] = {}
        self.notes: list[str] = []  # what was given up (FDB hooks, FDB decisions), in plain words

    def _take_maps(self, fds: dict[str, int], source: str) -> None:
        """The loaded maps, by fd (owned by the loader: valid until it closes); KernelError when
        their layout is not exporter.h's."""
        bad = layout_errors(self._lib, fds)
        if bad:
            raise KernelError(f"{source} and tracer/exporter/maps.py disagree on map layouts: " + ", ".join(bad))
        ncpus = max(1, self._lib.libbpf_num_possible_cpus())
        self._maps = {name: _Map(self._lib, fds[name], key, val, ncpus if per_cpu else 0)
                      for name, (key, val, per_cpu) in MAP_LAYOUT.items()}

    @property
    def attached(self) -> int:
        raise NotImplementedError

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
        for key in have.keys() - want_ent.keys():
            devs.delete(DevKey(*key))
        for key, val in want_ent.items():
            if have.get(key) != val:
                devs.update(DevKey(*key), DevEnt(*val, 0))
        # The hooks cache `devs`' answer per net_device pointer, tagged with this generation
        # (bpf/exporter.c, devc): a new generation makes them ask again. Bumped at every refresh,
        # not only when `devs` changes: a namespace deleted and made again can get the same inode
        # and its devices the same ifindexes (a lab, a VM's netns restarted), so `devs` reads the
        # same while a new device sits at an address the cache still gives an old one's answer
        # (another device's, or "not ours": its frames then go uncounted until `devs` changes; the
        # likely cause of the FDB-decision kernel test's one failure on 5.10, two labs in a row with
        # one inode). A bump costs each watched device one `devs` lookup per CPU at its next frame.
        gen = m["devgen"]
        zero = ctypes.c_uint32(0)
        now = gen.lookup(zero)
        gen.update(zero, ctypes.c_uint64((now.value if now is not None else 0) + 1))
        macs = m["vm_macs"]
        have_macs = {k.value: (v.netns, v.ifindex) for k, v in macs.items()}
        for mac in have_macs.keys() - vm_macs.keys():
            macs.delete(ctypes.c_uint64(mac))
        for mac, tap in vm_macs.items():
            if have_macs.get(mac) != tap:
                macs.update(ctypes.c_uint64(mac), DevKey(*tap))

    def _all_zero(self, idx: int) -> bool:
        """No count left under device index idx (its own counters and its pairs'): it can be reused."""
        elems = [("devcnt", idx)] + [("paircnt", slot) for _, _, slot in self.indices.pairs_of(idx)]
        return not any(any(self._maps[name].sums(ctypes.c_uint32(i)) or ()) for name, i in elems)

    def _sum(self, name: str) -> dict[tuple, int]:
        """A counter hash's keys (as Counts spells them) and totals over CPUs."""
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
            decisions=families["decisions"],
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

    def _release_maps(self) -> None:
        """Forget the fds before the loader closes them (a number reused by another map must not be written)."""
        self._maps = {}

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
