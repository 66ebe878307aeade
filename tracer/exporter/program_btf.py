"""Load bpf/exporter.c's precompiled CO-RE object with libbpf (through ctypes): tp_btf programs,
fields as plain CO-RE loads. The loader chain's first choice; program.ExporterProgram (bcc) is
its fallback. Both only load and attach: what follows is maps.ExporterMaps', the same for both.

No compiler and no bcc in the process (importing bcc maps LLVM, ≈ 76 MB resident): the object
is the wheel's (tracer/_bpf/), else built once per content into /var/cache/tapttrace/bpf/ by
tracer/libbpf_loader.build_object (scripts/setup.sh, or at first use under a lock; docs/install.md).
"""
from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from ..errors import KernelError, say_note
from ..libbpf_loader import BridgeHooks, _why, build_object, find_map, open_object
from .maps import COUNTER_MAPS, MAP_LAYOUT, ExporterMaps
from .program import DECISION_FUNCS, FDB_TRACEPOINTS, decision_notes, fdb_note, fdb_tracepoints_missing

SOURCE = "exporter.c"
PROGRAMS = ("ttx_netif_receive_skb", "ttx_net_dev_queue", "ttx_kfree_skb", "ttx_consume_skb")
FDB_PROGRAMS = dict(zip(FDB_TRACEPOINTS, ("ttx_br_fdb_update", "ttx_fdb_delete")))
CONFIG = struct.Struct("<iI")  # struct ttx_config (tt_config in .rodata): kfree_reason_arg, rdonly_cast


class LibbpfExporterProgram(ExporterMaps):
    """bpf/exporter.c's CO-RE object loaded and attached by libbpf. Leaving the context (or
    close()) detaches everything."""

    loader = "libbpf"

    def __init__(self, features, max_series: int = 16384, max_frames: int = 65536,
                 obj_path: Optional[Path] = None, attach: bool = True, max_pairs: int = 4096):
        """attach=False loads (the verifier's say) without attaching, for tests."""
        super().__init__(max_pairs)
        self._obj: Optional[int] = None  # the bpf_object pointer while open
        self._links: list[int] = []
        # The FDB decisions' programs: features.bridge_plan, then fentry -> kprobe -> given up, as
        # follow's bridge hops (libbpf_loader.BridgeHooks).
        self.bridge = BridgeHooks(features, DECISION_FUNCS, prefix="ttx")
        try:
            path = obj_path or build_object(source=SOURCE)
            self.bridge.load(lambda: self._open(path),
                             lambda: self._load(features, int(max_series), int(max_frames), int(max_pairs)),
                             self.close)
            self._take_maps({name: self._lib.bpf_map__fd(self._map(name)) for name in MAP_LAYOUT}, f"bpf/{SOURCE}")
            if attach:
                self._attach()
        except BaseException:
            self.close()
            raise
        for note in decision_notes(features, self.bridge.hooks, self.bridge.given_up):
            self._note(note)

    @property
    def decision_hooks(self) -> dict[str, str]:
        """How each function of the FDB decisions is hooked now: "fentry", "kprobe" or "none"."""
        return dict(self.bridge.hooks)

    def _open(self, path: Path) -> None:
        self._obj = open_object(self._lib, path)

    def _map(self, name: str) -> int:
        if self._obj is None:
            raise RuntimeError(f"bpf/{SOURCE}'s object is closed: no map {name}")
        return find_map(self._lib, self._obj, name, SOURCE)

    def _programs(self) -> Iterator[tuple[str, int]]:
        lib = self._lib
        prog = lib.bpf_object__next_program(self._obj, None) if self._obj else None
        while prog:
            yield lib.bpf_program__name(prog).decode(), prog
            prog = lib.bpf_object__next_program(self._obj, prog)

    def _load(self, features, max_series: int, max_frames: int, max_pairs: int) -> None:
        lib = self._lib
        self.bridge.set_autoload(lib, self._obj)
        for tracepoint in fdb_tracepoints_missing(features):  # the bridge (a module) not loaded
            lib.bpf_program__set_autoload(dict(self._programs())[FDB_PROGRAMS[tracepoint]], False)
            if fdb_note(tracepoint) not in self.notes:  # (loaded again after a decision hook failed)
                self._note(fdb_note(tracepoint))
        rodata = self._map(".rodata")
        size = ctypes.c_size_t(0)
        lib.bpf_map__initial_value(rodata, ctypes.byref(size))
        if size.value != CONFIG.size:
            raise KernelError(f"bpf/{SOURCE}'s .rodata is {size.value} bytes, not the {CONFIG.size} of "
                              "struct ttx_config: rebuild the object (scripts/setup.sh)")
        reason = 2 if features.kfree_skb_reason_arg == 2 else -1
        config = ctypes.create_string_buffer(CONFIG.pack(reason, int(features.rdonly_cast)), CONFIG.size)
        if lib.bpf_map__set_initial_value(rodata, config, CONFIG.size):
            raise KernelError("libbpf refused the exporter's configuration (.rodata)")
        # bcc's build gets the same sizes as -DMAX_SERIES, MAX_FRAMES, MAX_PAIRS (program.py).
        for name, entries in [(n, max_series) for n in COUNTER_MAPS] + [("tapq", max_frames), ("paircnt", max_pairs)]:
            if lib.bpf_map__set_max_entries(self._map(name), entries):
                raise KernelError(f"libbpf refused {entries} entries for the exporter's map {name}")
        err = lib.bpf_object__load(self._obj)
        if err:
            self.bridge.check_load(err)
            raise KernelError(f"could not load bpf/{SOURCE}: {_why(err)}")

    def _attach(self) -> None:
        for name, prog in self._programs():
            if not self._lib.bpf_program__autoload(prog):
                continue
            link = self._lib.bpf_program__attach(prog)
            if not link and self.bridge.attach_failed(name):
                continue  # said in decision_notes
            if not link:
                raise KernelError(f"could not attach {name} of bpf/{SOURCE}: {_why(ctypes.get_errno())}")
            self._links.append(link)

    def _note(self, note: str) -> None:
        self.notes.append(note)
        say_note(note)

    @property
    def attached(self) -> int:
        return len(self._links)

    def loaded_programs(self) -> set[str]:
        """Names of the object's programs that are in the kernel (passed the verifier)."""
        return {name for name, prog in self._programs() if self._lib.bpf_program__fd(prog) > 0}

    def close(self) -> None:
        self._release_maps()
        while self._links:
            self._lib.bpf_link__destroy(self._links.pop())
        if self._obj is not None:
            self._lib.bpf_object__close(self._obj)
            self._obj = None
