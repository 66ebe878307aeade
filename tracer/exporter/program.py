"""Compile and attach bpf/exporter.c with bcc (-DTT_BCC: raw tracepoints, fields read at BTF
offsets), the loader chain's fallback; its maps are then ExporterMaps' (maps.py), as libbpf's are.

The only module of the exporter that imports bcc, and only to compile and attach: kernel-specific
values arrive as -D integer constants (the Features record's offsets, plus the bridge
structures' offsets read from BTF here), and bcc hands over its maps' fds.
"""
from __future__ import annotations

from ..bpfbuild import BPF_DIR
from ..errors import EnvironmentProblem, KernelError, say_note
from .maps import MAP_LAYOUT, ExporterMaps

SOURCE = "exporter.c"
# The bridge's tracepoints the FDB hooks attach to (features.tracepoints' names): absent while the
# bridge, a module, is not loaded; the frame hooks are on the core tracepoints.
FDB_TRACEPOINTS = ("bridge:br_fdb_update", "bridge:fdb_delete")


def fdb_tracepoints_missing(features) -> list[str]:
    """The FDB hooks' tracepoints this kernel has no such tracepoint for now."""
    return [tp for tp in FDB_TRACEPOINTS if not getattr(features.tracepoints.get(tp), "present", False)]


def fdb_note(tracepoint: str) -> str:
    """What either loader says when it leaves an FDB hook out."""
    return f"no FDB counts from {tracepoint} (the kernel has no such tracepoint now: is the bridge module loaded?)"


# The bridge's functions whose entry is an FDB decision (bpf/exporter.c's ttx_<func>_fentry and
# _kprobe programs; libbpf only): forward, flood, and local (passed up with no forward or flood).
DECISION_FUNCS = ("br_forward", "br_flood", "br_pass_frame_up")
DECISIONS_LOST = "no FDB decision counts (tapttrace_fdb_decisions_total stays empty)"


def decision_notes(features, hooks: dict[str, str], given_up: dict[str, list[str]]) -> list[str]:
    """What either loader says when some of DECISION_FUNCS are not hooked: one note per reason.
    hooks: func -> "fentry" | "kprobe" | "none" as loaded; given_up: reason -> funcs (BridgeHooks)."""
    if all(hooks.get(func, "none") == "none" for func in DECISION_FUNCS) and not given_up:
        if features.bridge_hook == "none":
            return [f"{DECISIONS_LOST}: this kernel allows neither fentry nor kprobes on the bridge's functions; "
                    "the frame counts are unaffected"]
    notes = [f"{DECISIONS_LOST} at {', '.join(funcs)} ({why}); the frame counts are unaffected"
             for why, funcs in given_up.items()]
    gone = {func for funcs in given_up.values() for func in funcs}
    absent = [func for func in DECISION_FUNCS if hooks.get(func, "none") == "none" and func not in gone]
    if absent:
        notes.append(f"{DECISIONS_LOST} at {', '.join(absent)}: no hook reaches them now (is the bridge module "
                     "loaded? `tapttrace doctor` says what this kernel allows); the frame counts are unaffected")
    return notes


def bridge_offsets(btf_path: str = "/sys/kernel/btf/vmlinux") -> dict[str, int]:
    """Offsets of the bridge structures the FDB hooks read, from BTF (never from headers)."""
    from ..btf import Btf

    btf = Btf.load(btf_path)
    off = btf.member_offset
    return {"OFF_BR_DEV": off("net_bridge", "dev"), "OFF_BRPORT_DEV": off("net_bridge_port", "dev"),
            "OFF_FDB_DST": off("net_bridge_fdb_entry", "dst"),
            "OFF_FDB_ADDR": off("net_bridge_fdb_entry", "key.addr"),
            "OFF_FDB_VID": off("net_bridge_fdb_entry", "key.vlan_id")}


def exporter_cflags(features, bridge: dict[str, int], max_series: int, max_frames: int, max_pairs: int = 4096,
                    fdb_hooks: bool = True) -> list[str]:
    """bcc's build of bpf/exporter.c: what libbpf's loader sets before load (map sizes, .rodata's
    struct ttx_config as TT_CFG_*) and what CO-RE relocates there (offsets), as integer defines."""
    reason = 2 if features.kfree_skb_reason_arg == 2 else -1
    flags = [f"-I{BPF_DIR}", "-DTT_BCC", f"-DMAX_SERIES={int(max_series)}", f"-DMAX_FRAMES={int(max_frames)}",
             f"-DMAX_PAIRS={int(max_pairs)}", f"-DTT_CFG_kfree_reason_arg={reason}"]
    flags += features.offsets.as_cflags()
    flags += [f"-D{k}={int(v)}" for k, v in bridge.items()]
    if fdb_hooks:
        flags.append("-DTT_FDB_HOOKS")
    if not features.bpf_atomics.ok:
        flags.append("-DTT_NO_ATOMICS")  # bpf/kernel_compat.h: no compare-and-swap before 5.12
    return flags


class ExporterProgram(ExporterMaps):
    """bpf/exporter.c compiled, loaded and attached by bcc. Leaving the context (or close())
    detaches everything."""

    loader = "bcc"

    def __init__(self, features, max_series: int = 16384, max_frames: int = 65536, max_pairs: int = 4096):
        try:
            import bcc
        except ImportError:
            raise EnvironmentProblem(
                "bcc is not importable: install Debian's python3-bpfcc (scripts/setup.sh)") from None
        super().__init__(max_pairs)
        self._bpf = None
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
        missing = fdb_tracepoints_missing(features)
        cflags = exporter_cflags(features, bridge, max_series, max_frames, max_pairs, fdb_hooks=not missing)
        try:
            # bcc attaches RAW_TRACEPOINT_PROBE functions as it loads them.
            self._bpf = bcc.BPF(src_file=str(BPF_DIR / SOURCE).encode(), cflags=cflags)
            fds = {name: self._bpf[name.encode()].map_fd for name in MAP_LAYOUT}
        except Exception as exc:  # bcc raises bare Exception for compile and attach failures
            self.close()
            raise KernelError(f"could not load bpf/{SOURCE} with bcc: {' '.join(str(exc).split())[:400]}") from None
        try:
            self._take_maps(fds, f"bpf/{SOURCE}")
        except BaseException:
            self.close()
            raise
        for tracepoint in missing:
            self.notes.append(fdb_note(tracepoint))
            say_note(self.notes[-1])
        # The decision hooks are fentry/kprobe programs through the bridge's BTF: libbpf only.
        self.notes.append(f"{DECISIONS_LOST}: the bcc exporter hooks none of the bridge's functions "
                          "(libbpf's does); the frame counts are unaffected")
        say_note(self.notes[-1])

    @property
    def attached(self) -> int:
        return len(self._bpf.raw_tracepoint_fds) if self._bpf is not None else 0

    def close(self) -> None:
        self._release_maps()
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
