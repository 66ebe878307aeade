"""Load bpf/follow.c's precompiled CO-RE object with libbpf (through ctypes); the libbpf
twin of loader.FollowProgram, with the same EventSource interface (poll_batch, poll, drain,
lost, watch_ips, close, context manager).

No compiler in the process: the object is the one the wheel carries (built when the wheel was),
else built once per content (sources, headers, flags: tracer/bpfbuild.py) into
/var/cache/tapttrace/bpf/ by clang (`build_object`, called by scripts/setup.sh and, under a
lock, at first use), and loaded here by libbpf.so.1, which applies the CO-RE relocations
against the running kernel's BTF. The watched MAC, the tracepoint argument layout and what the
kernel offers (features.rdonly_cast) go into .rodata before load, so one object serves every MAC,
every run and every kernel.

Building and caching serve every object in OBJECTS: bpf/exporter.c too, which
tracer/exporter/program_btf.py loads with the ctypes wrapper `libbpf()` below (and whose maps
the exporter reads through it whichever loader made them: tracer/exporter/program.py).

`python -m tracer.libbpf_loader [SOURCE...]` builds the objects (follow.c, exporter.c: all
by default) and prints their paths.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import re
import struct
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from . import bpfbuild, trips
from .bpfbuild import OBJECTS, VMLINUX_BTF
from .features import BRIDGE_FUNCS, BTF_ONLY_FUNCS, bridge_plan
from .config import ip_key, mac_to_int
from .errors import EnvironmentProblem, KernelError, say_note
from .events import event_name
from .records import NF_FAMILIES
from .ringbuf import Record, RingBuffer

FOLLOW_SOURCE = "follow.c"
SOURCES = (FOLLOW_SOURCE, *OBJECTS[FOLLOW_SOURCE][0])
CACHE_DIR = Path(os.environ.get("TAPTTRACE_BPF_CACHE", "/var/cache/tapttrace/bpf"))
LIBBPF = "libbpf.so.1"
# libbpf 1.0: the .so.1 ABI, and an unresolved __weak kfunc (bpf_rdonly_cast before 6.2) left to
# the verifier's dead-code pass instead of refused at load. Debian 12's libbpf1 is 1.1.
LIBBPF_MIN = (1, 0)
PROGRAMS = ("tt_netif_receive_skb", "tt_net_dev_queue", "tt_kfree_skb", "tt_consume_skb")
# The hops inside the bridge and the tap (features.BRIDGE_FUNCS): each function's fentry and
# kprobe programs, off (autoload false) unless features.plan_bridge_hooks names that kind for it
# (BridgeHooks). bpf/exporter.c has its own pair for each function of its FDB decisions ("ttx").
HOOK_KINDS = ("fentry", "kprobe")


def bridge_program(func: str, kind: str, prefix: str = "tt") -> str:
    """The program that hooks `func` through `kind` ("fentry" | "kprobe"): bpf/follow.c's
    (prefix "tt") or bpf/exporter.c's ("ttx")."""
    return f"{prefix}_{func}_{kind}"


# Functions whose fentry program has a fexit beside it, loaded and attached with it
# (tt_<func>_fexit): nft_do_chain's verdict is its return value.
WITH_FEXIT = frozenset({"nft_do_chain"})


def bridge_programs(func: str, kind: str, prefix: str = "tt") -> tuple[str, ...]:
    """Every program that hooks `func` through `kind`: bridge_program's, and its fexit."""
    first = bridge_program(func, kind, prefix)
    return (first, f"{prefix}_{func}_fexit") if kind == "fentry" and func in WITH_FEXIT else (first,)


# struct tt_follow_config in bpf/follow.c: watch_mac, kfree_reason_arg, consume_location_arg, trips, learn,
# rdonly_cast, pad
CONFIG = struct.Struct("<QiiIIII")
# struct tt_nf_chain in bpf/tapttrace.h: family, pad, table[32], chain[32]
NF_CHAIN = struct.Struct("<II32s32s")
# "off": every hop as its own event record, no journey stitched in the kernel (for comparisons:
# tests/test_trips_kernel.py, bench follow-match-events).
TRIPS_ENV = "TAPTTRACE_FOLLOW_TRIPS"
# A trip (tracer/trips.py) still in the kernel's map this long is handed to the stitcher as it
# stands (its frame is queued somewhere: a guest not reading, a stuck qdisc), well inside the
# stitcher's idle time, so the journey still shows as "queued" when it should.
TRIP_SWEEP_AGE_NS = 250_000_000
TRIP_SWEEP_EVERY_S = 0.1


# -- building the object --------------------------------------------------------------


def build_tools(source: str = FOLLOW_SOURCE, btf: Path = VMLINUX_BTF) -> tuple[Optional[str], Optional[str], str]:
    """(clang, bpftool, problem): what building an object needs, and what is missing ("" if nothing)."""
    return bpfbuild.build_tools(source, btf)


def object_path(cache: Optional[Path] = None, source: str = FOLLOW_SOURCE) -> Path:
    """Where the object of `source` for these sources and this kernel's variant is: the one the
    wheel carries (tracer/_bpf/) if it does, else <cache>/<bpfbuild.object_name> (built or not)."""
    name = bpfbuild.object_name(source, probed_defines())
    packaged = bpfbuild.PACKAGED_DIR / name
    if cache is None and packaged.is_file():
        return packaged
    return (cache or CACHE_DIR) / name


@functools.lru_cache(maxsize=None)
def probed_defines() -> tuple[str, ...]:
    """The object's variant (bpfbuild.VARIANTS) for what the running kernel's BPF refuses, found
    by loading: TT_NO_ATOMICS before 5.12 (bpf/kernel_compat.h). Probed once a process:
    object_path() runs at every loader choice and again at the build."""
    from .features import probe_bpf_atomics

    return () if probe_bpf_atomics(os.geteuid() == 0).ok else (bpfbuild.NO_ATOMICS,)


def build_object(btf: Path = VMLINUX_BTF, cache: Optional[Path] = None, source: str = FOLLOW_SOURCE) -> Path:
    """The compiled object of bpf/<source>: the wheel's, the cache's, or built now into the cache
    (one builder at a time: a lock file)."""
    try:
        target = object_path(cache, source)
    except OSError as e:
        raise EnvironmentProblem(f"cannot read {e.filename} to build bpf/{source}: {e.strerror}") from None
    if target.is_file():
        return target
    _, _, problem = build_tools(source, btf)
    if problem:
        raise EnvironmentProblem(problem)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = open(target.parent / ".build.lock", "w")
    except OSError as e:
        raise EnvironmentProblem(f"cannot write the BPF object cache {target.parent}: {e.strerror}") from None
    stem = Path(source).stem
    variant = probed_defines()
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():  # another process built it while we waited
            return target
        try:
            bpfbuild.compile_object(source, variant, target, btf)
        except bpfbuild.BuildError as e:
            raise (EnvironmentProblem if e.missing else KernelError)(e.message) from None
        # Older sources' objects go (rebuilt if needed); the other variant's stays.
        keep = {bpfbuild.object_name(source, v) for v in bpfbuild.VARIANTS}
        for old in target.parent.glob(f"{stem}-*.o"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
    return target


# -- libbpf through ctypes ----------------------------------------------------------------


def libbpf_version() -> tuple[tuple[int, int], str]:
    """((major, minor), "v1.1") of the libbpf.so.1 the loader would use; OSError if there is none,
    AttributeError if it is too old to say (before 0.6)."""
    lib = ctypes.CDLL(LIBBPF)
    lib.libbpf_major_version.restype = ctypes.c_uint32
    lib.libbpf_minor_version.restype = ctypes.c_uint32
    lib.libbpf_version_string.restype = ctypes.c_char_p
    return (lib.libbpf_major_version(), lib.libbpf_minor_version()), lib.libbpf_version_string().decode()


_lib: Optional[ctypes.CDLL] = None
_messages: list[str] = []
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_print_cb = None  # kept alive as long as libbpf may call it


# A verifier log comes as one message of up to libbpf's log buffer. One buffer, allocated on the
# first message worth keeping: libbpf says ~1500 DEBUG lines per load, and a fresh 1 MiB buffer
# for each cost 14 s of follow's 30 s start under qemu (TCG), 9 ms a message.
_PRINT_BUF = 1 << 20
_print_buf = None


def _on_print(level: int, fmt: bytes, args) -> int:
    global _print_buf
    if level > 1:  # LIBBPF_DEBUG: not kept (LIBBPF_WARN 0, LIBBPF_INFO 1 are)
        return 0
    if _print_buf is None:
        _print_buf = ctypes.create_string_buffer(_PRINT_BUF)
    _libc.vsnprintf(_print_buf, _PRINT_BUF, fmt, args)
    text = _print_buf.value.decode(errors="replace").strip()
    said = verifier_error(text)
    _messages.append(f"verifier: {said}" if said else text[-1000:])
    del _messages[:-20]
    return 0


_INSN_OR_STATE = re.compile(r"^(\d+: |; |from \d+ to \d+|func |last_idx|regs=|parent |frame\d|"
                            r"-- BEGIN|Validating |reg type unsupported|arg#|caller:|callee:|propagating)")


def verifier_error(log: str) -> str:
    """The verifier's own words in a libbpf program-load log: the lines after the last instruction
    it checked ("invalid access to map value, value_size=432 off=12412 size=2; R9 max value is
    outside of the allowed memory range"), or "" when `log` is no verifier log."""
    if "-- BEGIN PROG LOAD LOG --" not in log:
        return ""
    body = log.split("-- BEGIN PROG LOAD LOG --", 1)[1].split("-- END PROG LOAD LOG --", 1)[0]
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    end = next((i for i, line in enumerate(lines) if line.startswith("processed ")), len(lines))
    start = end
    while start > 0 and not re.match(r"^\d+: \(", lines[start - 1]):
        start -= 1
    said = [line for line in lines[start:end] if not _INSN_OR_STATE.match(line)]
    if not said:  # refused before any instruction (a BTF or attach problem): not the registers' state
        said = [line for line in lines[:3] if not _INSN_OR_STATE.match(line) and not re.match(r"R\d", line)]
    prog = re.search(r"prog '([^']+)'", log)
    return (f"{prog.group(1)}: " if prog else "") + "; ".join(said)[:400]


_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


def libbpf() -> ctypes.CDLL:
    """libbpf.so.1 with the prototypes used here; EnvironmentProblem if it can't be loaded."""
    global _lib, _print_cb
    if _lib is not None:
        # bcc links the same libbpf.so.1 and sets its own print callback when it loads a program:
        # take ours back, or libbpf's reasons (the br_flood hook's EPERM, say) are lost.
        _lib.libbpf_set_print(_print_cb)
        return _lib
    try:
        lib = ctypes.CDLL(LIBBPF, use_errno=True)
    except OSError as e:
        raise EnvironmentProblem(f"cannot load {LIBBPF} ({e}): apt-get install libbpf1") from None
    P, I, U, S = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t
    for name, res, args in (
        ("bpf_object__open_file", P, [ctypes.c_char_p, P]),
        ("bpf_object__load", I, [P]),
        ("bpf_object__close", None, [P]),
        ("bpf_object__find_map_by_name", P, [P, ctypes.c_char_p]),
        ("bpf_object__next_program", P, [P, P]),
        ("bpf_program__name", ctypes.c_char_p, [P]),
        ("bpf_program__attach", P, [P]),
        ("bpf_program__set_autoload", I, [P, ctypes.c_bool]),
        ("bpf_program__autoload", ctypes.c_bool, [P]),
        ("bpf_program__fd", I, [P]),
        ("bpf_link__destroy", I, [P]),
        ("bpf_map__fd", I, [P]),
        ("bpf_map__set_max_entries", I, [P, U]),
        ("bpf_map__set_initial_value", I, [P, P, S]),
        ("bpf_map__initial_value", P, [P, ctypes.POINTER(S)]),
        ("bpf_map_update_elem", I, [I, P, P, ctypes.c_uint64]),
        ("bpf_map_lookup_elem", I, [I, P, P]),
        ("bpf_map_delete_elem", I, [I, P]),
        ("bpf_map_get_next_key", I, [I, P, P]),
        ("bpf_obj_get_info_by_fd", I, [I, P, ctypes.POINTER(U)]),
        ("bpf_map__key_size", U, [P]),
        ("bpf_map__value_size", U, [P]),
        ("libbpf_num_possible_cpus", I, []),
        ("libbpf_set_print", P, [_PRINT_FN]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    _print_cb = _PRINT_FN(_on_print)
    lib.libbpf_set_print(_print_cb)
    _lib = lib
    return lib


def _why(err: int) -> str:
    """errno's name, and libbpf's last words about it."""
    verifier = next((m for m in reversed(_messages) if m.startswith("verifier: ")), "")
    said = verifier or "; ".join(m for m in _messages[-3:] if m)[-300:]
    name = errno.errorcode.get(abs(err), str(err))
    return f"{name}" + (f" ({said})" if said else "")


def open_object(lib: ctypes.CDLL, path: Path) -> int:
    """bpf_object__open_file, or one clear line saying why not."""
    del _messages[:]
    obj = lib.bpf_object__open_file(str(path).encode(), None)
    if not obj:
        raise KernelError(f"libbpf could not open {path}: {_why(ctypes.get_errno())}")
    return obj


def find_map(lib: ctypes.CDLL, obj: int, name: str, source: str) -> int:
    """A map of an opened object; its absence means an object built from older sources."""
    m = lib.bpf_object__find_map_by_name(obj, name.encode())
    if not m:
        raise KernelError(f"bpf/{source}'s object has no map {name}: rebuild it (scripts/setup.sh)")
    return m


class _BridgeHookFailed(Exception):
    """The object loads without these bridge programs, not with them: loaded again without."""

    def __init__(self, funcs: tuple[str, ...], why: str):
        super().__init__(why)
        self.funcs = funcs
        self.why = why


class BridgeHooks:
    """How an object's programs on the bridge's (and the tap's) own functions go into the kernel:
    features.bridge_plan first (fentry where the function has BTF, else a kprobe, none where
    neither can be had or no loaded code has the function), then, as the object loads and attaches,
    fentry -> kprobe -> given up, per function. Shared by follow's hops (bpf/follow.c, prefix "tt")
    and the exporter's FDB decisions (bpf/exporter.c, "ttx"), so a kernel's quirk is met once.

    load(open_, load_, close) opens the object and calls load_(), which calls set_autoload()
    before bpf_object__load, check_load() when that fails and attach_failed() for a program that
    won't attach; given_up then says, per reason, which functions went without a hook."""

    def __init__(self, features, funcs: Iterable[str] = tuple(BRIDGE_FUNCS), prefix: str = "tt",
                 plan: Optional[dict[str, str]] = None):
        plan = bridge_plan(features) if plan is None else plan
        self.prefix = prefix
        self.kprobes = bool(features.kprobes.ok)
        # func -> "fentry" | "kprobe" | "none": what each function goes through now.
        self.hooks = {func: plan.get(func, "none") for func in funcs}
        self.programs = {name for func in self.hooks for kind in HOOK_KINDS for name in bridge_programs(func, kind, prefix)}
        self.given_up: dict[str, list[str]] = {}  # why -> functions, for one note each

    def chosen(self) -> dict[str, str]:
        """program name -> function, for the programs to load now."""
        return {name: func for func, kind in self.hooks.items() if kind != "none"
                for name in bridge_programs(func, kind, self.prefix)}

    def set_autoload(self, lib: ctypes.CDLL, obj: Optional[int]) -> None:
        """Turn on the chosen programs of the opened object, and off the rest of its bridge programs."""
        chosen = self.chosen()
        prog = lib.bpf_object__next_program(obj, None)
        while prog:
            name = lib.bpf_program__name(prog).decode()
            if name in self.programs:
                lib.bpf_program__set_autoload(prog, name in chosen)
            prog = lib.bpf_object__next_program(obj, prog)

    def check_load(self, err: int) -> None:
        """After bpf_object__load failed with err: _BridgeHookFailed when libbpf's words name one
        of the chosen programs (the object is loaded again without it), else nothing (the caller's
        own failure)."""
        chosen = self.chosen()
        said = " ".join(_messages)
        # each function once (one may have two programs: bridge_programs)
        named = tuple(dict.fromkeys(func for name, func in chosen.items() if name in said))
        if named:
            # One function's BTF missing is that function's problem; anything else (EPERM: the
            # kernel refuses fentry itself) is every fentry's, so they all go at once.
            fentry = tuple(dict.fromkeys(f for f in chosen.values() if self.hooks[f] == "fentry"))
            each = "find kernel BTF type ID" in said or "btf_id" in said or self.hooks[named[0]] != "fentry"
            raise _BridgeHookFailed(named if each else fentry, f"could not load: {_why(err)}")

    def fall_back(self, failed: _BridgeHookFailed) -> None:
        for func in failed.funcs:
            if self.hooks[func] == "fentry" and self.kprobes and func not in BTF_ONLY_FUNCS:
                # No fentry into it here (no BTF of it: a module loaded after the probe, or
                # one without BTF); the kprobe needs none. Nothing is lost: no note.
                self.hooks[func] = "kprobe"
            else:
                self.give_up(func, failed.why)

    def give_up(self, func: str, why: str) -> None:
        self.given_up.setdefault(f"{self.hooks[func]}: {why}", []).append(func)
        self.hooks[func] = "none"

    def attach_failed(self, name: str) -> bool:
        """A program that would not attach: True (given up) when it is one of the chosen bridge
        programs, not there to hook after all (a module unloaded, no kprobes…)."""
        func = self.chosen().get(name)
        if func is None:
            return False
        self.give_up(func, f"could not attach: {_why(ctypes.get_errno())}")
        return True

    def load(self, open_: Callable[[], None], load_: Callable[[], None], close: Callable[[], None]) -> None:
        """open_(), then load_(), again until it goes through: each failure of a bridge program
        (check_load's _BridgeHookFailed) closes the object and falls back a step."""
        while True:
            open_()
            try:
                load_()
                return
            except _BridgeHookFailed as failed:
                close()
                self.fall_back(failed)
            except BaseException:
                close()
                raise


class LibbpfFollowProgram:
    """bpf/follow.c loaded and attached by libbpf. Leaving the context detaches everything."""

    loader = "libbpf"

    def __init__(self, features, mac: str, ringbuf_pages: int = 256, obj_path: Optional[Path] = None,
                 attach: bool = True, kernel_trips: bool = True, learn: bool = False):
        """attach=False loads (the verifier's say) without attaching: for tests of the variants
        this kernel can load but not attach. kernel_trips=False: every hop as its own event record
        (no journeys stitched in the kernel). learn=True: the kernel adds the guest's own addresses
        to the watched ones as soon as it sends from them (follow's address learning)."""
        # Without BPF compare-and-swap (before 5.12) no trip slot can be claimed: the object is
        # built without them (bpf/kernel_compat.h) and every hop comes as its own event.
        self.trips = kernel_trips and features.bpf_atomics.ok
        self.learn = learn
        self._next_sweep = 0.0
        lib = libbpf()
        self._lib = lib
        self._obj: Optional[int] = None  # the bpf_object pointer while open
        self._links: list[int] = []
        self._chains_at_close: dict[int, tuple[str, str, str]] = {}  # see nf_chain()
        self._chains_fd = -1  # nf_chains', once loaded
        self._tallies_at_close: list[tuple[int, bytes]] = []  # see tallies()
        self._ring: Optional[RingBuffer] = None
        self._trip_slots: Optional[trips.TripSlots] = None
        self.notes: list[str] = []  # what was given up on the way (a bridge hook that wouldn't go)
        mac_int = mac_to_int(mac)
        path = obj_path or build_object()
        self.bridge = BridgeHooks(features)
        # func -> "fentry" | "kprobe" | "none": what each bridge hop goes through now.
        self.hooks = self.bridge.hooks
        self.bridge.load(lambda: self._open(path), lambda: self._load(features, mac_int, int(ringbuf_pages), attach),
                         self.close)
        for why, funcs in self.bridge.given_up.items():
            note = f"no hop at {', '.join(funcs)} ({why}); the tracepoint hops are unaffected"
            self.notes.append(note)
            say_note(note)

    @property
    def bridge_hook(self) -> str:
        """How br_flood is hooked now: "fentry", "kprobe" or "none"."""
        return self.hooks.get("br_flood", "none")

    def _open(self, path: Path) -> None:
        self._obj = open_object(self._lib, path)

    def _map(self, name: str) -> int:
        if self._obj is None:
            raise RuntimeError(f"bpf/{FOLLOW_SOURCE}'s object is closed: no map {name}")
        return find_map(self._lib, self._obj, name, FOLLOW_SOURCE)

    def _load(self, features, mac_int: int, ringbuf_pages: int, attach: bool = True) -> None:
        lib = self._lib
        self.bridge.set_autoload(lib, self._obj)
        rodata = self._map(".rodata")
        size = ctypes.c_size_t(0)
        lib.bpf_map__initial_value(rodata, ctypes.byref(size))
        if size.value != CONFIG.size:
            raise KernelError(f"bpf/follow.c's .rodata is {size.value} bytes, not the {CONFIG.size} of "
                              "struct tt_follow_config: rebuild the object (scripts/setup.sh)")
        reason = features.kfree_skb_reason_arg
        location = features.consume_skb_location_arg
        config = ctypes.create_string_buffer(CONFIG.pack(
            mac_int, 2 if reason == 2 else -1, 1 if location == 1 else -1, int(self.trips), int(self.learn),
            int(features.rdonly_cast), 0),
            CONFIG.size)
        if lib.bpf_map__set_initial_value(rodata, config, CONFIG.size):
            raise KernelError("libbpf refused follow's configuration (.rodata)")
        events = self._map("events")
        ring_bytes = ringbuf_pages * os.sysconf("SC_PAGE_SIZE")
        if lib.bpf_map__set_max_entries(events, ring_bytes):
            raise KernelError(f"libbpf refused a ring buffer of {ringbuf_pages} pages (a power of 2 is needed)")
        err = lib.bpf_object__load(self._obj)
        if err:
            self.bridge.check_load(err)
            raise KernelError(f"could not load bpf/follow.c: {_why(err)}")
        prog = lib.bpf_object__next_program(self._obj, None)
        while prog and attach:
            name = lib.bpf_program__name(prog).decode()
            if not lib.bpf_program__autoload(prog):
                pass
            elif link := lib.bpf_program__attach(prog):
                self._links.append(link)
            elif self.bridge.attach_failed(name):  # given up, with a note
                pass
            else:
                raise KernelError(f"could not attach {name} of bpf/follow.c: {_why(ctypes.get_errno())}")
            prog = lib.bpf_object__next_program(self._obj, prog)
        self._lost_fd = lib.bpf_map__fd(self._map("lost"))
        self._ips_fd = lib.bpf_map__fd(self._map("watch_ips"))
        self._chains_fd = lib.bpf_map__fd(self._map("nf_chains"))
        self._tallied_fd = lib.bpf_map__fd(self._map("tallied"))
        tallies, samples = self._map("tallies"), self._map("tally_samples")
        if (lib.bpf_map__key_size(tallies), lib.bpf_map__value_size(samples)) != (trips.PATH_SIZE, trips.TRIP_SIZE):
            raise KernelError("bpf/follow.c's path key or struct tt_trip is not tracer/trips.py's: rebuild the "
                              "object (scripts/setup.sh)")
        self._tallies_fd = lib.bpf_map__fd(tallies)
        self._samples_fd = lib.bpf_map__fd(samples)
        self._trip_slots = trips.TripSlots(lib.bpf_map__fd(self._map("trips")))
        self._ncpus = max(1, lib.libbpf_num_possible_cpus())
        try:
            self._ring = RingBuffer(lib.bpf_map__fd(events), ring_bytes)
        except (OSError, ValueError) as exc:
            raise KernelError(f"could not map the ring buffer of bpf/follow.c: {exc}") from None

    @property
    def attached(self) -> int:
        return len(self._links)

    def loaded_programs(self) -> set[str]:
        """Names of the object's programs that are in the kernel (passed the verifier)."""
        names: set[str] = set()
        lib = self._lib
        prog = lib.bpf_object__next_program(self._obj, None) if self._obj else None
        while prog:
            if lib.bpf_program__fd(prog) > 0:
                names.add(lib.bpf_program__name(prog).decode())
            prog = lib.bpf_object__next_program(self._obj, prog)
        return names

    def poll_batch(self, timeout_ms: int) -> list:
        """As loader.FollowProgram.poll_batch: the records now in the ring buffer, as memoryviews."""
        records: list = self._open_ring().poll_batch(timeout_ms)  # memoryviews, then swept trips' bytes
        if self.trips and time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + TRIP_SWEEP_EVERY_S
            records += self.sweep_trips(TRIP_SWEEP_AGE_NS)
        return records

    def sweep_trips(self, older_than_ns: int) -> list[bytes]:
        """Trips whose last hop is older than older_than_ns (all with 0), taken from the kernel's
        slots as they stand (tracer/trips.py, TripSlots)."""
        if self._trip_slots is None:
            return []
        return self._trip_slots.sweep(time.monotonic_ns(), older_than_ns)

    def read_up_to_ns(self) -> int:
        """Every record reserved before this moment has been read (RingBuffer.caught_up_ns)."""
        return self._ring.caught_up_ns if self._ring is not None else 0

    def _open_ring(self) -> RingBuffer:
        if self._ring is None:
            raise RuntimeError(f"bpf/{FOLLOW_SOURCE}'s ring buffer is closed")
        return self._ring

    def poll(self, sink: Callable[[Record], None], timeout_ms: int) -> None:
        for raw in self._open_ring().poll(timeout_ms):
            sink(raw)

    def drain(self, sink: Callable[[Record], None]) -> None:
        """What the ring buffer holds, then the trips still in the kernel's map (unfinished)."""
        while True:
            records = self._open_ring().read()
            if not records:
                break
            for raw in records:
                sink(raw)
        if self.trips:
            for trip in self.sweep_trips(0):
                sink(trip)

    def lost(self) -> int:
        """Events the kernel had no ring-buffer room for, since load (summed over CPUs)."""
        return self._per_cpu_count(self._lost_fd)

    def tallied(self) -> int:
        """Whole journeys the kernel counted by their path instead of handing them over, since load."""
        return self._per_cpu_count(self._tallied_fd) if self.trips else 0

    def _per_cpu_count(self, fd: int) -> int:
        if self._obj is None or not self._links:
            return 0
        key = ctypes.c_uint32(0)
        values = (ctypes.c_uint64 * self._ncpus)()
        if self._lib.bpf_map_lookup_elem(fd, ctypes.byref(key), values):
            return 0
        return sum(values)

    def tallies(self) -> list[tuple[int, bytes]]:
        """Whole journeys the kernel counted instead of handing them over (user space was behind):
        per path, how many (summed over CPUs) and a sample trip record (tracer/trips.py) to word
        them by. After close(), what the maps held at the end."""
        if self._obj is None or not self.trips:
            return list(self._tallies_at_close)
        lib = self._lib
        out: list[tuple[int, bytes]] = []
        key = ctypes.create_string_buffer(trips.PATH_SIZE)
        nxt = ctypes.create_string_buffer(trips.PATH_SIZE)
        counts = (ctypes.c_uint64 * self._ncpus)()
        sample = ctypes.create_string_buffer(trips.TRIP_SIZE)
        prev = None
        while len(out) < trips.TALLY_PATHS and not lib.bpf_map_get_next_key(self._tallies_fd, prev, nxt):
            ctypes.memmove(key, nxt, trips.PATH_SIZE)
            prev = key
            if lib.bpf_map_lookup_elem(self._tallies_fd, key, counts) or \
                    lib.bpf_map_lookup_elem(self._samples_fd, key, sample):
                continue  # a sample is written before its count: not seen, unless the table was full
            out.append((sum(counts), sample.raw))
        return out

    def watch_ips(self, addrs: Iterable[str]) -> None:
        one = ctypes.c_uint8(1)
        for addr in addrs:
            key = ctypes.create_string_buffer(ip_key(addr), 16)
            err = self._lib.bpf_map_update_elem(self._ips_fd, key, ctypes.byref(one), 0)
            if err:
                raise KernelError(f"could not add {addr} to follow's watched addresses: "
                                  f"{errno.errorcode.get(abs(err), err)}")

    def nf_chain(self, addr: int) -> Optional[tuple[str, str, str]]:
        """A netfilter hop's chain by its address (the hop's location): (the table's family as nft
        names it, table, chain) from bpf/follow.c's nf_chains; None if it isn't there. After
        close() (follow works through its backlog then), the names the map held at the end."""
        if self._obj is None or self._chains_fd < 0 or not addr:
            return self._chains_at_close.get(addr)
        key = ctypes.c_uint64(addr)
        value = ctypes.create_string_buffer(NF_CHAIN.size)
        if self._lib.bpf_map_lookup_elem(self._chains_fd, ctypes.byref(key), value):
            return None
        family, _, table, chain = NF_CHAIN.unpack(value.raw)
        return (NF_FAMILIES.get(family, f"family {family}"), event_name(table), event_name(chain))

    def _keep_chains(self) -> None:
        """Every chain nf_chains holds now, for nf_chain() once the map is gone."""
        key, nxt = ctypes.c_uint64(0), ctypes.c_uint64(0)
        prev = None
        while len(self._chains_at_close) < 4096 and \
                not self._lib.bpf_map_get_next_key(self._chains_fd, prev, ctypes.byref(nxt)):
            key.value = nxt.value
            prev = ctypes.byref(key)
            names = self.nf_chain(key.value)
            if names is not None:
                self._chains_at_close[key.value] = names

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._trip_slots is not None:
            self._trip_slots.close()
            self._trip_slots = None
        while self._links:
            self._lib.bpf_link__destroy(self._links.pop())
        if self._obj is not None:
            if self._chains_fd >= 0:
                self._keep_chains()
                self._tallies_at_close = self.tallies()
            self._chains_fd = -1
            self._lib.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> "LibbpfFollowProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: Optional[list[str]] = None) -> int:
    """Build the objects named (sources in bpf/: follow.c, exporter.c), or all of them;
    print each one's path."""
    from .errors import TapttraceError

    sources = (sys.argv[1:] if argv is None else argv) or list(OBJECTS)
    status = 0
    for source in sources:
        try:
            print(build_object(source=source))
        except (TapttraceError, ValueError) as e:
            print(f"tapttrace: {getattr(e, 'message', e)}", file=sys.stderr)
            status = status or getattr(e, "exit_code", 2)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
