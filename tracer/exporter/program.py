"""Compile and attach bpf/exporter.c with bcc; read its counter maps as plain Python records.

The only module of the exporter that imports bcc. Kernel-specific values arrive as -D integer
constants: the Features record's offsets, plus the bridge structures' offsets read from BTF here.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import EnvironmentProblem, KernelError

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
HOOKS = ("netif_receive_skb", "net_dev_queue", "kfree_skb", "consume_skb", "br_fdb_update", "fdb_delete")

ROLE_PORT, ROLE_TAP, ROLE_BRIDGE = 1, 2, 4
VERDICTS = {1: "forwarded", 2: "flooded", 3: "local", 4: "dropped", 5: "delivered"}
TAP_EVENTS = {1: "queued", 2: "delivered", 3: "dropped", 4: "local"}
FDB_EVENTS = {1: "learned", 2: "moved", 3: "deleted"}
HEALTH = {0: "counter_map_full", 1: "frame_table_full"}


# ctypes mirrors of bpf/exporter.h; their sizes are checked against bcc's at load.
class DevKey(ctypes.Structure):
    _fields_ = [("netns", ctypes.c_uint32), ("ifindex", ctypes.c_uint32)]


class DevVal(ctypes.Structure):
    _fields_ = [("role", ctypes.c_uint32), ("bridge", ctypes.c_uint32)]


class VerdictKey(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("netns", "bridge", "in_port", "out_port", "verdict")]


class DropKey(ctypes.Structure):
    _fields_ = [("location", ctypes.c_uint64)] + [(n, ctypes.c_uint32) for n in ("netns", "ifindex", "reason", "pad")]


class TapKey(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("netns", "ifindex", "event", "reason")]


class FdbKey(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("netns", "bridge", "port", "event")]


MAP_LAYOUT = {"devs": (DevKey, DevVal), "verdicts": (VerdictKey, ctypes.c_uint64),
              "drops": (DropKey, ctypes.c_uint64), "taps": (TapKey, ctypes.c_uint64),
              "fdb": (FdbKey, ctypes.c_uint64)}
# The counter maps' keys as Counts (and delete()) spell them: field names in tuple order.
COUNT_FIELDS = {"verdicts": ("netns", "bridge", "in_port", "out_port", "verdict"),
                "drops": ("netns", "ifindex", "reason", "location"),
                "taps": ("netns", "ifindex", "event", "reason"),
                "fdb": ("netns", "bridge", "port", "event")}


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


def bridge_offsets(btf_path: str = "/sys/kernel/btf/vmlinux") -> dict[str, int]:
    """Offsets of the bridge structures the FDB hooks read, from BTF (never from headers)."""
    from ..btf import Btf

    btf = Btf.load(btf_path)
    off = btf.member_offset
    return {"OFF_BR_DEV": off("net_bridge", "dev"), "OFF_BRPORT_DEV": off("net_bridge_port", "dev"),
            "OFF_FDB_DST": off("net_bridge_fdb_entry", "dst"),
            "OFF_FDB_ADDR": off("net_bridge_fdb_entry", "key.addr"),
            "OFF_FDB_VID": off("net_bridge_fdb_entry", "key.vlan_id")}


def exporter_cflags(features, bridge: dict[str, int], max_series: int, max_frames: int) -> list[str]:
    flags = [f"-I{BPF_DIR}", f"-DMAX_SERIES={int(max_series)}", f"-DMAX_FRAMES={int(max_frames)}"]
    flags += features.offsets.as_cflags()
    flags += [f"-D{k}={int(v)}" for k, v in bridge.items()]
    flags.append(f"-DARG_KFREE_LOCATION={int(features.kfree_skb_location_arg)}")
    if features.kfree_skb_reason_arg is not None:
        flags.append(f"-DARG_KFREE_REASON={int(features.kfree_skb_reason_arg)}")
    if not features.bpf_atomics.ok:
        flags.append("-DTT_NO_ATOMICS")  # bpf/kernel_compat.h: no compare-and-swap before 5.12
    return flags


class ExporterProgram:
    """The loaded, attached exporter program. Leaving the context (or close()) detaches everything."""

    def __init__(self, features, max_series: int = 16384, max_frames: int = 65536):
        try:
            import bcc
        except ImportError:
            raise EnvironmentProblem("bcc is not importable: install Debian's python3-bpfcc (scripts/setup.sh)") from None
        self._bpf = None
        self._first_devices = True
        features.headers.apply()
        from ..btf import BtfNotFound

        try:
            bridge = bridge_offsets(features.btf_path or "/sys/kernel/btf/vmlinux")
        except BtfNotFound:
            # The bridge built as a module keeps its structs in /sys/kernel/btf/bridge, split BTF
            # this reader does not parse; libbpf's object (the chain's first choice) reads it.
            raise EnvironmentProblem("the bcc exporter needs the bridge's structs in vmlinux's BTF, and this "
                                     "kernel has the bridge as a module: use the libbpf exporter "
                                     "(TAPTTRACE_EXPORTER_LOADER=libbpf; needs clang-14 libbpf-dev bpftool)") from None
        cflags = exporter_cflags(features, bridge, max_series, max_frames)
        try:
            # bcc attaches RAW_TRACEPOINT_PROBE functions as it loads them.
            self._bpf = bcc.BPF(src_file=str(BPF_DIR / "exporter_bcc.c").encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception for compile and attach failures
            self.close()
            raise KernelError(f"could not load bpf/exporter.c: {exc}") from None
        self.size_errors = self._check_layout()
        if self.size_errors:
            self.close()
            raise KernelError("bpf/exporter.c and tracer/exporter/program.py disagree on map layouts: "
                              + ", ".join(self.size_errors))
        self.attached = len(HOOKS)

    def _check_layout(self) -> list[str]:
        bad = []
        for name, (key, val) in MAP_LAYOUT.items():
            table = self._bpf[name.encode()]
            if ctypes.sizeof(table.Key) != ctypes.sizeof(key):
                bad.append(f"{name} key {ctypes.sizeof(table.Key)} != {ctypes.sizeof(key)}")
            leaf = getattr(table, "sLeaf", table.Leaf)  # per-CPU tables: the one-CPU value
            if name != "devs" and ctypes.sizeof(leaf) != ctypes.sizeof(val):
                bad.append(f"{name} value {ctypes.sizeof(leaf)} != {ctypes.sizeof(val)}")
        return bad

    def set_devices(self, roles: Iterable[Role], vm_macs: dict[int, tuple[int, int]]) -> None:
        """Make the kernel's device and VM-MAC tables exactly these (adds, updates, removes)."""
        want = {(r.netns, r.ifindex): (r.role, r.bridge) for r in roles}
        table = self._bpf[b"devs"]
        have = {(k.netns, k.ifindex): (v.role, v.bridge) for k, v in table.items()}
        changed = False
        for key in have.keys() - want.keys():
            del table[DevKey(*key)]
            changed = True
        for key, val in want.items():
            if have.get(key) != val:
                table[DevKey(*key)] = DevVal(*val)
                changed = True
        if changed or self._first_devices:
            # The hooks cache `devs`' answer per net_device pointer, tagged with this generation
            # (bpf/exporter.c, devc): a new generation makes them ask again. Also bumped on the
            # first call, so nothing cached before it outlives it.
            gen = self._bpf[b"devgen"]
            gen[ctypes.c_int(0)] = ctypes.c_uint64(gen[ctypes.c_int(0)].value + 1)
            self._first_devices = False
        macs = self._bpf[b"vm_macs"]
        have_macs = {k.value: (v.netns, v.ifindex) for k, v in macs.items()}
        for mac in have_macs.keys() - vm_macs.keys():
            del macs[ctypes.c_uint64(mac)]
        for mac, tap in vm_macs.items():
            if have_macs.get(mac) != tap:
                macs[ctypes.c_uint64(mac)] = DevKey(*tap)

    def _sum(self, name: str, fields: tuple[str, ...]) -> dict[tuple, int]:
        out: dict[tuple, int] = {}
        for k, per_cpu in self._bpf[name.encode()].items():
            out[tuple(getattr(k, f) for f in fields)] = sum(int(v) for v in per_cpu)
        return out

    def read(self) -> Counts:
        health = self._bpf[b"health"]
        return Counts(
            verdicts=self._sum("verdicts", COUNT_FIELDS["verdicts"]),
            drops=self._sum("drops", COUNT_FIELDS["drops"]),
            taps=self._sum("taps", COUNT_FIELDS["taps"]),
            fdb=self._sum("fdb", COUNT_FIELDS["fdb"]),
            health={name: sum(int(v) for v in health[ctypes.c_int(i)]) for i, name in HEALTH.items()},
        )

    def delete(self, name: str, keys: Iterable[tuple]) -> None:
        """Remove counter series (of devices gone for good) so the kernel maps don't fill up."""
        table = self._bpf[name.encode()]
        for key in keys:
            try:
                del table[table.Key(**dict(zip(COUNT_FIELDS[name], key)))]
            except KeyError:
                pass

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
            self.attached = 0

    def __enter__(self) -> "ExporterProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
