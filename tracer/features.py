"""What the running kernel offers tapttrace, probed once (pwru's Have…() checks in one record).

probe_features() looks at BTF, tracefs, the tracepoints tapttrace hooks, kernel headers,
bcc, and what BPF can attach to, and reads the struct offsets the BPF code needs from
BTF. require() turns a missing must-have into one EnvironmentProblem naming the fix;
doctor_lines() says all of it in words for `tapttrace doctor`. Every path is taken from
a ProbeRoots, so the same probes run on fixture trees in tests.
"""
from __future__ import annotations

import dataclasses
import ctypes
import ctypes.util
import errno
import functools
import os
import re
import struct
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, TypeVar

from .btf import Btf, BtfError, BtfNotFound, Kind, TracepointArg
from .errors import EnvironmentProblem, KernelError, say_note
from .kheaders import KernelHeaders, find_headers

# Every tracepoint tapttrace hooks or plans to; CORE ones carry the follow pipeline.
TRACEPOINTS = (
    "net:netif_receive_skb",
    "net:net_dev_queue",
    "net:net_dev_xmit",
    "skb:kfree_skb",
    "skb:consume_skb",
    "bridge:br_fdb_add",
    "bridge:br_fdb_external_learn_add",
    "bridge:fdb_delete",
    "bridge:br_fdb_update",
)
CORE_TRACEPOINTS = ("net:netif_receive_skb", "net:net_dev_queue", "skb:kfree_skb", "skb:consume_skb")

MOUNT_TRACEFS = "mount -t tracefs nodev /sys/kernel/tracing"
ROOT_FIX = "run as root (or with CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON)"
BCC_FIX = ("apt-get install python3-bpfcc and run tapttrace from a venv made with "
           "--system-site-packages")
_DROP_PREFIXES = ("SKB_DROP_REASON_", "SKB_")
_BPF_MAP_TYPE_RINGBUF = 27
_FENTRY_TARGET = "netif_receive_skb"  # in vmlinux on every kernel, so the probe tests fentry itself


@dataclass(frozen=True)
class ProbeRoots:
    """Where the probes look, and whether they may touch the live kernel."""

    sys: str = "/sys"
    proc: str = "/proc"
    modules: str = "/lib/modules"
    usr_src: str = "/usr/src"
    headers_cache: str = "/var/cache/tapttrace/kernel-headers"
    run_cache: str = "/run/tapttrace"  # per-boot results of the slow probes ("" = don't cache)
    release: str = ""  # "" = the running kernel's (uname -r)
    euid: Optional[int] = None  # None = os.geteuid()
    live: bool = True  # may mount tracefs, export BCC_KERNEL_SOURCE and load probe programs

    @property
    def btf(self) -> Path:
        return Path(self.sys, "kernel/btf/vmlinux")

    @property
    def tracefs_candidates(self) -> tuple[Path, ...]:
        # Older kernels only auto-mount tracefs under debugfs.
        return (Path(self.sys, "kernel/tracing"), Path(self.sys, "kernel/debug/tracing"))


@dataclass(frozen=True)
class Availability:
    """Whether something works, and what was seen (or why not)."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class FormatField:
    """One field line of a tracepoint's format file."""

    name: str
    type: str
    offset: int
    size: int
    signed: bool


@dataclass(frozen=True)
class Tracepoint:
    """One tracepoint: its format file (tracefs) and its raw-tracepoint arguments (BTF)."""

    name: str  # "skb:kfree_skb"
    present: bool
    fields: tuple[FormatField, ...] = ()
    print_fmt: str = ""
    raw_args: Optional[tuple[TracepointArg, ...]] = None  # None: BTF has no btf_trace_<name>

    def field(self, name: str) -> Optional[FormatField]:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True)
class KernelOffsets:
    """Byte offsets of the kernel struct members tapttrace's BPF code reads."""

    skb_head: int
    skb_data: int
    skb_len: int
    skb_mac_header: int
    skb_network_header: int
    skb_dev: int
    netdev_ifindex: int
    netdev_name: int
    netdev_nd_net: int  # possible_net_t nd_net
    possible_net_net: Optional[int]  # struct net *net inside possible_net_t; None without CONFIG_NET_NS
    net_ns_inum: Optional[int]  # net.ns.inum (struct ns_common)

    @property
    def netdev_net(self) -> Optional[int]:
        """Offset of the struct net pointer inside net_device."""
        if self.possible_net_net is None:
            return None
        return self.netdev_nd_net + self.possible_net_net

    def as_cflags(self) -> list[str]:
        """-DOFF_…=n defines; the netns ones are left out when the kernel has no such member."""
        defines = {
            "OFF_SKB_HEAD": self.skb_head,
            "OFF_SKB_DATA": self.skb_data,
            "OFF_SKB_LEN": self.skb_len,
            "OFF_SKB_MAC_HEADER": self.skb_mac_header,
            "OFF_SKB_NETWORK_HEADER": self.skb_network_header,
            "OFF_SKB_DEV": self.skb_dev,
            "OFF_NETDEV_IFINDEX": self.netdev_ifindex,
            "OFF_NETDEV_NAME": self.netdev_name,
            "OFF_NETDEV_ND_NET": self.netdev_nd_net,
            "OFF_PNET_NET": self.possible_net_net,
            "OFF_NETDEV_NET": self.netdev_net,
            "OFF_NET_INUM": self.net_ns_inum,
        }
        return [f"-D{name}={int(value)}" for name, value in defines.items() if value is not None]

    @classmethod
    def from_btf(cls, btf: Btf) -> "KernelOffsets":
        """Read every offset from BTF; BtfNotFound/BitfieldError if a required one is missing."""
        off = btf.member_offset

        def optional(struct_name: str, path: str) -> Optional[int]:
            try:
                return off(struct_name, path)
            except BtfNotFound:
                return None

        return cls(
            skb_head=off("sk_buff", "head"),
            skb_data=off("sk_buff", "data"),
            skb_len=off("sk_buff", "len"),
            skb_mac_header=off("sk_buff", "mac_header"),
            skb_network_header=off("sk_buff", "network_header"),
            skb_dev=off("sk_buff", "dev"),
            netdev_ifindex=off("net_device", "ifindex"),
            netdev_name=off("net_device", "name"),
            netdev_nd_net=off("net_device", "nd_net"),
            possible_net_net=optional("possible_net_t", "net"),
            net_ns_inum=optional("net", "ns.inum"),
        )


@dataclass(frozen=True)
class Features:
    """Everything probe_features() found out about this machine."""

    kernel_release: str
    is_root: bool
    btf: Availability  # detail: the path, or why it can't be used
    tracefs: Availability  # detail: the mount point, or why there is none
    tracefs_path: Optional[str]
    tracefs_mounted_now: bool  # tapttrace mounted it during this probe
    tracepoints: dict[str, Tracepoint]  # keyed "category:name", every one in TRACEPOINTS
    kfree_skb_has_reason: bool
    consume_skb_has_location: bool
    kfree_skb_location_arg: Optional[int]  # raw tracepoint ctx->args[] index
    kfree_skb_reason_arg: Optional[int]
    consume_skb_location_arg: Optional[int]
    drop_reasons: dict[int, str]  # {2: "NOT_SPECIFIED", ...}
    drop_reasons_source: str  # "btf" | "format" | "" (none known)
    ringbuf: Availability
    kprobes: Availability
    fentry: Availability
    bcc: Availability  # detail: bcc's version, or the import error
    headers: Optional[KernelHeaders]
    headers_problem: str  # the EnvironmentProblem message when headers is None
    offsets: Optional[KernelOffsets]
    offsets_problem: str
    hook: str  # "raw_tracepoint" | "tracepoint" | "none": for the core tracepoints
    bridge_hook: str  # "fentry" | "kprobe" | "none": for bridge-internal functions
    btf_path: str = field(default="", compare=False)
    tp_btf: Availability = Availability(False, "not probed")  # tp_btf (BTF-typed raw tracepoint) programs
    # BPF compare-and-swap (5.12+): without it journeys are stitched in user space only (no trips)
    # and the exporter's tap table is a hash map; the objects are built with -DTT_NO_ATOMICS.
    bpf_atomics: Availability = Availability(False, "not probed")
    libbpf: Availability = Availability(False, "not probed")  # libbpf.so.1 and its version (probe_libbpf)
    # The bpf_rdonly_cast kfunc (6.2+), read from the BTF the probe loads anyway: the CO-RE objects
    # take it from .rodata (tt_config.rdonly_cast) and use it only where it is true.
    rdonly_cast: bool = False
    # br_flood's home: "vmlinux", "module" (bridge built as a module: its BTF is /sys/kernel/btf/bridge,
    # which libbpf's fentry finds and bcc's KFUNC_PROBE does not), or "" (no BTF knows it: not loaded)
    bridge_btf: str = ""
    bridge_loaded: bool = False  # the bridge is in the running kernel (built in, or its module loaded)
    bridge_hook_bcc: str = "none"  # bridge_hook for bcc: kprobe where br_flood is only in a module's BTF
    follow_loader: str = "bcc"  # "libbpf" (bpf/follow.c built once, tracer/libbpf_loader.py) | "bcc" (the same source compiled at start, tracer/loader.py)
    follow_loader_why: str = ""
    exporter_loader: str = "bcc"  # "libbpf" (bpf/exporter.c built once, tracer/exporter/program_btf.py) | "bcc" (the same source compiled at start, tracer/exporter/program.py)
    exporter_loader_why: str = ""

    def drop_reason(self, value: int) -> str:
        """The name of drop reason `value`, or "unknown:<n>"."""
        return self.drop_reasons.get(value, f"unknown:{value}")

    @property
    def headers_env(self) -> dict[str, str]:
        """Environment bcc needs to find the chosen kernel headers."""
        return self.headers.env if self.headers else {}


@dataclass(frozen=True)
class DoctorLine:
    """One line of `tapttrace doctor`."""

    item: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = False  # tapttrace can't trace without it


# -- tracefs and tracepoints ------------------------------------------------------

_FIELD = re.compile(r"field:(?P<decl>[^;]*);\s*offset:(\d+);\s*size:(\d+);\s*signed:(\d+);")
_DECL_NAME = re.compile(r"(\w+)\s*(\[[^\]]*\])?\s*$")


def parse_format(text: str) -> tuple[tuple[FormatField, ...], str]:
    """Fields and print fmt of a tracefs events/<cat>/<name>/format file."""
    fields = []
    for m in _FIELD.finditer(text):
        decl = m.group("decl").strip()
        name = _DECL_NAME.search(decl)
        if name is None:
            continue
        ctype = (decl[: name.start()] + (name.group(2) or "")).strip()
        fields.append(FormatField(name.group(1), ctype, int(m.group(2)), int(m.group(3)), m.group(4) == "1"))
    fmt = text.split("print fmt:", 1)[1].strip() if "print fmt:" in text else ""
    return tuple(fields), fmt


def parse_print_symbolic(print_fmt: str, field_name: str) -> dict[int, str]:
    """{value: "NAME"} from `__print_symbolic(REC->field, { 2, "NAME" }, …)` in a print fmt."""
    start = print_fmt.find(f"__print_symbolic(REC->{field_name},")
    if start < 0:
        return {}
    out: dict[int, str] = {}
    # Values are numbers once the kernel has substituted its TRACE_DEFINE_ENUM()s.
    for value, name in re.findall(r"\{\s*(-?0x[0-9a-fA-F]+|-?\d+)\s*,\s*\"([^\"]*)\"\s*\}", print_fmt[start:]):
        out.setdefault(int(value, 0), name)
    return out


def _libc_mount(target: Path) -> Optional[str]:
    """Mount tracefs at target; None on success, else the error."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"nodev", str(target).encode(), b"tracefs", 0, None) == 0:
        return None
    return os.strerror(ctypes.get_errno())


def _exists(path: Path, kind: str = "dir") -> bool:
    """is_dir()/is_file() that says False where an unprivileged user may not even look."""
    try:
        return path.is_dir() if kind == "dir" else path.is_file()
    except OSError:
        return False


def probe_tracefs(roots: ProbeRoots, is_root: bool) -> tuple[Availability, Optional[Path], bool]:
    """Find a mounted tracefs; mount it at <sys>/kernel/tracing when live and root."""
    for candidate in roots.tracefs_candidates:
        if _exists(candidate / "events"):
            return Availability(True, f"mounted at {candidate}"), candidate, False
    target = roots.tracefs_candidates[0]
    if not (roots.live and is_root):
        why = "not root" if not is_root else "live probes off"
        return Availability(False, f"not mounted at {target} (not mounting: {why})"), None, False
    error = _libc_mount(target) if target.is_dir() else f"{target} does not exist"
    if error is None and (target / "events").is_dir():
        return Availability(True, f"mounted at {target} by tapttrace just now"), target, True
    return Availability(False, f"not mounted, and mounting it at {target} failed: {error}"), None, False


def probe_tracepoint(name: str, tracefs: Optional[Path], btf: Optional[Btf]) -> Tracepoint:
    category, event = name.split(":", 1)
    raw_args = None
    if btf is not None:
        try:
            raw_args = btf.tracepoint_args(event)
        except (BtfNotFound, BtfError):
            pass
    fmt_file = tracefs / "events" / category / event / "format" if tracefs else None
    if fmt_file is None or not _exists(fmt_file, "file"):
        # Without tracefs BTF is the only witness: a btf_trace_ typedef means the kernel has it.
        return Tracepoint(name, present=raw_args is not None and tracefs is None, raw_args=raw_args)
    fields, print_fmt = parse_format(fmt_file.read_text())
    return Tracepoint(name, True, fields, print_fmt, raw_args)


def _is_drop_reason(btf_arg: TracepointArg) -> bool:
    return btf_arg.type_name == "enum skb_drop_reason"


def raw_arg_indexes(
    kfree_skb: Optional[tuple[TracepointArg, ...]], consume_skb: Optional[tuple[TracepointArg, ...]]
) -> tuple[Optional[int], Optional[int], Optional[int]]:
    """(kfree_skb location, kfree_skb reason, consume_skb location) ctx->args[] indexes."""

    def location(args: Optional[tuple[TracepointArg, ...]]) -> Optional[int]:
        # The caller's address is the first `void *` after the skb on every kernel so far.
        return next((a.index for a in args or () if a.index > 0 and a.type_name == "void *"), None)

    reason = next((a.index for a in kfree_skb or () if _is_drop_reason(a)), None)
    return location(kfree_skb), reason, location(consume_skb)


def drop_reason_names(btf: Optional[Btf], kfree_skb: Tracepoint) -> tuple[dict[int, str], str]:
    """{value: name} of kfree_skb drop reasons, from BTF's enum, else from the format's print fmt."""
    if btf is not None:
        try:
            values = btf.enum_values("skb_drop_reason")
        except BtfNotFound:
            values = {}
        names: dict[int, str] = {}
        for enumerator, value in values.items():
            # SUBSYS_MASK/_SHIFT describe the value space, they are not reasons.
            if enumerator.endswith(("_MASK", "_SHIFT")):
                continue
            for prefix in _DROP_PREFIXES:
                if enumerator.startswith(prefix):
                    enumerator = enumerator[len(prefix) :]
                    break
            names.setdefault(value, enumerator)
        if names:
            return names, "btf"
    names = parse_print_symbolic(kfree_skb.print_fmt, "reason")
    return names, "format" if names else ""


# -- BPF capabilities ---------------------------------------------------------------


def _version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def probe_bcc() -> Availability:
    """bcc's Python package and libbcc, found without importing bcc: the import maps libbcc and its
    LLVM (≈ 75 MB resident, 0.2 s), which follow's libbpf path never needs."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError) as e:
        return Availability(False, f"cannot import bcc: {e}")
    if spec is None or not spec.submodule_search_locations:
        return Availability(False, "cannot import bcc: No module named 'bcc'")
    if not ctypes.util.find_library("bcc"):
        return Availability(False, "cannot import bcc: libbcc.so.0 is not installed")
    try:
        text = Path(list(spec.submodule_search_locations)[0], "version.py").read_text()
        version = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text).group(1)  # type: ignore[union-attr]
    except (OSError, AttributeError, IndexError):
        version = "?"
    return Availability(True, f"bcc {version}")


def probe_ringbuf(roots: ProbeRoots, release: str, can_load: bool) -> Availability:
    """BPF_MAP_TYPE_RINGBUF: create one through bpf(2) when live, else judge by version (5.8+)."""
    by_version = _version(release) >= (5, 8)
    if not can_load:
        word = "5.8 or newer" if by_version else "older than 5.8"
        return Availability(by_version, f"kernel {release} is {word} (not probed)")
    attr = ctypes.create_string_buffer(72)
    struct.pack_into("<IIII", attr, 0, _BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)  # type, key, value, max_entries
    fd, err = _sys_bpf(_BPF_MAP_CREATE, attr)
    if fd >= 0:
        os.close(fd)
        return Availability(True, "a BPF ring buffer map was created")
    return Availability(False, f"creating a BPF ring buffer map failed: {errno.errorcode.get(err, err)}")


def probe_kprobes(roots: ProbeRoots, tracefs: Optional[Path], btf: Optional[Btf] = None) -> Availability:
    """kprobes through the perf PMU bcc tries first, or tracefs' kprobe_events. Without either,
    whether the kernel was built with kprobes at all is read from its BTF (register_kprobe), or
    from /proc/kallsyms (megabytes: ≈ 0.1 s at every start) where there is no BTF."""
    pmu = Path(roots.sys, "bus/event_source/devices/kprobe")
    if pmu.is_dir():
        return Availability(True, f"perf kprobe PMU at {pmu}")
    # Whether we may write it is the root question, answered separately.
    if tracefs is not None and (tracefs / "kprobe_events").exists():
        return Availability(True, f"{tracefs / 'kprobe_events'} exists")
    if btf is not None:
        built_with = has_kfunc(btf, "register_kprobe")
    else:
        try:
            # A byte search: parsing all of kallsyms for one name would cost ~0.2 s.
            kallsyms = Path(roots.proc, "kallsyms").read_bytes()
        except OSError:
            kallsyms = b""
        built_with = bool(re.search(rb" [tT] register_kprobe$", kallsyms, re.M))
    if built_with:
        return Availability(False, "the kernel has kprobes but neither the perf kprobe PMU nor kprobe_events")
    return Availability(False, "no kprobes (CONFIG_KPROBES is off: no kprobe PMU, kprobe_events or register_kprobe)")


_SYS_BPF = 321  # x86-64
_BPF_MAP_CREATE, _BPF_PROG_LOAD, _BPF_RAW_TRACEPOINT_OPEN = 0, 5, 17
_BPF_PROG_TYPE_TRACING, _BPF_TRACE_RAW_TP, _BPF_TRACE_FENTRY = 26, 23, 24
_TP_BTF_TARGET = "netif_receive_skb"
FOLLOW_LOADER_ENV = "TAPTTRACE_FOLLOW_LOADER"  # "libbpf" | "bcc" | unset/"auto": force follow's loader
EXPORTER_LOADER_ENV = "TAPTTRACE_EXPORTER_LOADER"  # the same for the exporter


def _sys_bpf(cmd: int, attr: ctypes.Array) -> tuple[int, int]:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    return int(fd), ctypes.get_errno()


def _probe_tracing(what: str, target: str, btf_id: int, attach_type: int) -> Availability:
    """Load a two-instruction BPF_PROG_TYPE_TRACING program of `attach_type` on BTF type `btf_id`
    straight through bpf(2) (no compiler, no libbpf, no bcc), attach it, and close both at once."""
    insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"), 16)
    license = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQ", attr, 0, _BPF_PROG_TYPE_TRACING, 2, ctypes.addressof(insns), ctypes.addressof(license))
    struct.pack_into("<16s", attr, 48, f"tt_probe_{what.split()[-1].replace('_', '')}".encode()[:15])
    struct.pack_into("<I", attr, 68, attach_type)  # expected_attach_type
    struct.pack_into("<I", attr, 108, btf_id)  # attach_btf_id
    prog, err = _sys_bpf(_BPF_PROG_LOAD, attr)
    if prog < 0:
        return Availability(False, f"loading {what} program on {target} failed: {errno.errorcode.get(err, err)}")
    try:
        open_attr = ctypes.create_string_buffer(16)
        struct.pack_into("<QI", open_attr, 0, 0, prog)  # name NULL: the program's own attach_btf_id
        link, err = _sys_bpf(_BPF_RAW_TRACEPOINT_OPEN, open_attr)
        if link < 0:
            return Availability(False, f"{what} program loaded but attaching it to {target} failed: "
                                       f"{errno.errorcode.get(err, err)}")
        os.close(link)
    finally:
        os.close(prog)
    return Availability(True, f"{what} program on {target} loaded and attached")


def probe_libbpf() -> Availability:
    """libbpf.so.1 (Debian's libbpf1) and whether it is new enough for the CO-RE objects."""
    from . import libbpf_loader

    need = ".".join(map(str, libbpf_loader.LIBBPF_MIN))
    try:
        version, said = libbpf_loader.libbpf_version()
    except OSError as e:
        return Availability(False, f"cannot load {libbpf_loader.LIBBPF} ({e}): apt-get install libbpf1")
    except AttributeError:
        return Availability(False, f"{libbpf_loader.LIBBPF} is older than 0.6; tapttrace needs {need} or newer")
    if version < libbpf_loader.LIBBPF_MIN:
        return Availability(False, f"{libbpf_loader.LIBBPF} is libbpf {said}; tapttrace needs {need} or newer")
    return Availability(True, f"libbpf {said} ({libbpf_loader.LIBBPF}; tapttrace needs {need} or newer)")


def probe_tp_btf(can_load: bool, btf: Optional[Btf]) -> Availability:
    """tp_btf: a BPF_TRACE_RAW_TP program on btf_trace_netif_receive_skb (_probe_tracing)."""
    if btf is None:
        return Availability(False, "needs BTF")
    if not can_load:
        return Availability(False, "not probed (needs root and live probes)")
    try:
        (btf_id,) = btf.find(f"btf_trace_{_TP_BTF_TARGET}", Kind.TYPEDEF)
    except (ValueError, BtfNotFound, BtfError):
        return Availability(False, f"BTF has no btf_trace_{_TP_BTF_TARGET}")
    return _probe_tracing("a tp_btf", _TP_BTF_TARGET, btf_id, _BPF_TRACE_RAW_TP)


def probe_fentry(can_load: bool, btf: Optional[Btf]) -> Availability:
    """fentry: a BPF_TRACE_FENTRY program on netif_receive_skb (_probe_tracing). Through bpf(2)
    as tp_btf's, not bcc: the libbpf path needs neither bcc nor kernel headers to find out."""
    if btf is None:
        return Availability(False, "needs BTF")
    if not can_load:
        return Availability(False, "not probed (needs root and live probes)")
    try:
        (btf_id,) = btf.find(_FENTRY_TARGET, Kind.FUNC)
    except (ValueError, BtfNotFound, BtfError):
        return Availability(False, f"BTF has no function {_FENTRY_TARGET}")
    return _probe_tracing("an fentry", _FENTRY_TARGET, btf_id, _BPF_TRACE_FENTRY)


# r1 = 0; *(u64 *)(r10 - 8) = r1; r0 = 0; r1 = 1; r0 = cmpxchg(r10 - 8, r0, r1); r0 = 0; exit
_CMPXCHG_PROG = bytes.fromhex("b701000000000000" "7b1af8ff00000000" "b700000000000000" "b701000001000000"
                              "db1af8fff1000000" "b700000000000000" "9500000000000000")
_BPF_PROG_TYPE_SOCKET_FILTER = 1


def probe_bpf_atomics(can_load: bool, release: str = "") -> Availability:
    """BPF_ATOMIC compare-and-swap (5.12+): load a 7-instruction socket filter using it on the stack.
    Older kernels refuse it ("BPF_XADD uses reserved fields", EINVAL)."""
    if not can_load:
        by_version = _version(release or os.uname().release) >= (5, 12)
        return Availability(by_version, f"kernel is {'5.12 or newer' if by_version else 'older than 5.12'} "
                                        "(not probed)")
    insns = ctypes.create_string_buffer(_CMPXCHG_PROG, len(_CMPXCHG_PROG))
    license = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQ", attr, 0, _BPF_PROG_TYPE_SOCKET_FILTER, len(_CMPXCHG_PROG) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license))
    prog, err = _sys_bpf(_BPF_PROG_LOAD, attr)
    if prog < 0:
        return Availability(False, f"a BPF compare-and-swap was refused ({errno.errorcode.get(err, err)}): "
                                   "BPF atomics need Linux 5.12 or newer")
    os.close(prog)
    return Availability(True, "a BPF compare-and-swap loaded")


def has_kfunc(btf: Optional[Btf], name: str) -> bool:
    """Whether BTF has the function `name` (a kfunc's, for the objects' .rodata)."""
    try:
        return btf is not None and bool(btf.find(name, Kind.FUNC))
    except (BtfNotFound, BtfError, ValueError):
        return False


def bridge_btf_home(btf: Optional[Btf], sys_root: str = "/sys") -> str:
    """Where br_flood's BTF is: "vmlinux", "module" (/sys/kernel/btf/bridge) or "" (nowhere yet)."""
    if btf is not None:
        try:
            if btf.find("br_flood", Kind.FUNC):
                return "vmlinux"
        except (BtfNotFound, BtfError, ValueError):
            pass
    return "module" if Path(sys_root, "kernel/btf/bridge").is_file() else ""


def choose_bridge_hook(fentry: bool, kprobes: bool, bridge_btf: str, bridge_loaded: bool) -> str:
    """How br_flood is hooked: fentry where the kernel has it, else a kprobe, else not at all. An
    fentry program needs the function's BTF: a bridge module loaded without BTF of its own (module
    BTF came in 5.11: Debian 11's 5.10) gets the kprobe, which needs none. A bridge not loaded yet
    keeps fentry (the loader falls back to the kprobe if fentry can't load when it starts)."""
    if fentry and (bridge_btf or not bridge_loaded):
        return "fentry"
    return "kprobe" if kprobes else "none"


# The functions follow hooks inside the bridge and the tap (bpf/follow.c: tt_<func>_fentry and
# tt_<func>_kprobe for each), with the module each lives in where the kernel builds it as one.
BRIDGE_FUNCS: dict[str, str] = {
    "br_flood": "bridge",  # the bridge floods: FDB miss, broadcast or multicast
    "br_forward": "bridge",  # the bridge sends the frame to the one port its FDB names
    "maybe_deliver": "bridge",  # a flood offers the frame to one port
    "br_pass_frame_up": "bridge",  # the frame goes up to the host's stack
    "br_dev_queue_push_xmit": "bridge",  # out of a port, if it fits the port's MTU
    "br_nf_dev_queue_xmit": "br_netfilter",  # the same through br_netfilter
    "tun_net_xmit": "tun",  # the tap takes the frame for its queue
    "nft_do_chain": "nf_tables",  # an nf_tables base chain's verdict (a fexit: the verdict is its return)
}
# Functions hooked only through BTF (their "fentry" program is a fexit reading BTF-typed structs):
# no kprobe is offered. nft_do_chain's chain and hook can't be read without nf_tables' BTF (5.11+).
BTF_ONLY_FUNCS = frozenset({"nft_do_chain"})
# Only the lines of those functions ("ffffffffc0a02000 T br_forward\t[bridge]"): matching the names
# in the pattern lets the regex drop every other line at its name (≈ 0.07 s for 5 MB, half of
# matching every name and comparing it in Python).
_KALLSYMS_FUNC = re.compile(r"^[0-9a-f]+ [tT] (" + "|".join(map(re.escape, BRIDGE_FUNCS)) + r")(?:\t\[(\w+)\])?$",
                            re.M)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def plan_bridge_hooks(bridge_hook: str, kprobes: bool, kallsyms_text: str, sys_root: str = "/sys") -> dict[str, str]:
    """How each of BRIDGE_FUNCS is hooked now: "fentry", "kprobe" or "none". Decided when follow
    starts, from /proc/kallsyms, since modules come and go: a function no loaded code has
    (br_netfilter or tun not loaded: no frame goes through it, nothing is lost) is not hooked; a
    module without BTF of its own (before 5.11) can't take fentry, so its functions get kprobes;
    `bridge_hook` is what the kernel allows at all (choose_bridge_hook)."""
    found: dict[str, str] = {}
    for m in _KALLSYMS_FUNC.finditer(kallsyms_text):
        found.setdefault(m.group(1), m.group(2) or "")
    plan = {}
    for func in BRIDGE_FUNCS:
        module = found.get(func)
        if module is None or bridge_hook == "none":
            plan[func] = "none"
        elif bridge_hook == "fentry" and (not module or Path(sys_root, "kernel/btf", module).is_file()):
            plan[func] = "fentry"
        elif func in BTF_ONLY_FUNCS:
            plan[func] = "none"
        else:
            plan[func] = "kprobe" if bridge_hook == "kprobe" or kprobes else "none"
    return plan


def bridge_plan(features: "Features", roots: Optional[ProbeRoots] = None) -> dict[str, str]:
    """plan_bridge_hooks for this kernel as it is now (its /proc/kallsyms and module BTF), within
    what features.bridge_hook allows. Read where the plan is used (follow's loader, doctor), not at
    every command's probe: /proc/kallsyms is megabytes."""
    roots = roots or ProbeRoots()
    hook = features.bridge_hook if features.bridge_hook in ("fentry", "kprobe") else "none"
    if hook == "none":  # nothing can reach them (this kernel has neither fentry nor kprobes)
        return {func: "none" for func in BRIDGE_FUNCS}
    return plan_bridge_hooks(hook, features.kprobes.ok, _read_text(Path(roots.proc, "kallsyms")), roots.sys)


def _choose_loader(env: str, source: str, tp_btf: Availability, btf_path: Path, hook: str, forced: str,
                   extra: str = "") -> tuple[str, str]:
    """("libbpf" | "bcc", why) for the program built from bpf/<source>: libbpf where tp_btf
    programs load and the CO-RE object is built or can be; bcc as the fallback; `forced` (the
    value of env) overrides."""
    forced = forced.strip().lower()
    if forced in ("bcc", "libbpf"):
        return forced, f"forced by {env}={forced}"
    if forced not in ("", "auto"):
        return "bcc", f"{env}={forced!r} is not libbpf, bcc or auto: using bcc"
    if not tp_btf.ok:
        return "bcc", f"no tp_btf programs ({tp_btf.detail})"
    if hook != "raw_tracepoint":
        return "bcc", "the core tracepoints are not all in BTF"
    from . import libbpf_loader

    libbpf = probe_libbpf()
    if not libbpf.ok:
        return "bcc", libbpf.detail
    try:
        obj = libbpf_loader.object_path(source=source)
    except OSError as e:
        return "bcc", f"cannot hash the sources for the object: {e}"
    if obj.is_file():
        return "libbpf", f"tp_btf programs load and {obj} is built{extra}"
    _, _, problem = libbpf_loader.build_tools(source, btf_path)
    if problem:
        return "bcc", problem
    return "libbpf", f"tp_btf programs load; the object will be built into {obj.parent} at first use{extra}"


def choose_follow_loader(tp_btf: Availability, btf_path: Path, bridge_hook: str, hook: str,
                         forced: str = "") -> tuple[str, str]:
    """("libbpf" | "bcc", why). libbpf (bpf/follow.c: plain loads of skb fields, no LLVM in the
    process) where tp_btf programs load and the CO-RE object is built or can be (the object has
    the br_flood hop too, fentry or kprobe, as bridge_hook says); bcc as the fallback."""
    flood = f"; br_flood hop through {bridge_hook}" if bridge_hook != "none" else ""
    return _choose_loader(FOLLOW_LOADER_ENV, "follow.c", tp_btf, btf_path, hook, forced, flood)


def choose_exporter_loader(tp_btf: Availability, btf_path: Path, hook: str, forced: str = "") -> tuple[str, str]:
    """("libbpf" | "bcc", why) for the exporter: libbpf (bpf/exporter.c's CO-RE object,
    tracer/exporter/program_btf.py: plain loads of skb fields, no bcc/LLVM in a long-running
    process) where tp_btf programs load and the object is built or can be; bcc (the same source
    compiled at start, tracer/exporter/program.py) as the fallback."""
    return _choose_loader(EXPORTER_LOADER_ENV, "exporter.c", tp_btf, btf_path, hook, forced)


T = TypeVar("T")


def open_with_fallback(program: str, features: "Features", chosen: str, why: str,
                       openers: dict[str, Callable[[], T]], say: Callable[[str], None] = say_note,
                       lost: str = "journeys are stitched in user space only") -> T:
    """The loader chain, the same for every program: the chosen loader's program (libbpf's CO-RE
    object first, where features chose it); if libbpf can't load it here (a verifier that refuses
    it, an object that won't build) and the choice was not forced, bcc's, with one note saying why
    and what is given up. A forced loader, or no usable bcc, gets the first error as it is."""
    try:
        return openers[chosen]()
    except (KernelError, EnvironmentProblem) as first:
        if chosen != "libbpf" or why.startswith("forced") or "bcc" not in openers:
            raise
        if not features.bcc.ok or features.headers is None:
            raise
        say(f"libbpf could not load {program} ({first.message}); using bcc instead (compiled at start: "
            f"slower to start{', and ' + lost if lost else ''})")
        return openers["bcc"]()


def load_line(item: str, program: str, features: "Features",
              open_program: Callable[[Callable[[str], None]], AbstractContextManager]) -> DoctorLine:
    """doctor's proof that a program loads here: opened through the loader chain (the verifier has
    its say), closed at once. open_program(say) runs the chain with `say` for its note, so a
    verifier refusal shows with the verifier's own words and the fallback taken."""
    if not features.is_root:
        return DoctorLine(item, False, f"{program} not loaded: loading BPF programs needs root", ROOT_FIX)
    said: list[str] = []
    try:
        program_object = open_program(said.append)
    except (KernelError, EnvironmentProblem) as err:
        return DoctorLine(item, False, f"{program} did not load: {err.message}",
                          "tapttrace doctor's lines above say what this kernel lacks", True)
    with program_object:
        loader = getattr(program_object, "loader", "bcc")
    if said:
        return DoctorLine(item, True, f"{said[0]}: bcc loaded it")
    return DoctorLine(item, True, f"{program} loaded by {loader}: the verifier accepted it")


# -- the whole probe ----------------------------------------------------------------


def _load_btf(path: Path, run_cache: str = "") -> tuple[Optional[Btf], Availability]:
    if not path.is_file():
        return None, Availability(False, f"no BTF at {path}")
    try:
        return Btf.load(path, Path(run_cache, "btf-index.bin") if run_cache else None), Availability(True, str(path))
    except (OSError, BtfError) as e:
        return None, Availability(False, f"unreadable BTF at {path}: {e}")


def _probe(roots: ProbeRoots) -> Features:
    release = roots.release or os.uname().release
    is_root = (os.geteuid() if roots.euid is None else roots.euid) == 0
    btf, btf_state = _load_btf(roots.btf, roots.run_cache if roots.live and is_root else "")
    tracefs_state, tracefs, mounted_now = probe_tracefs(roots, is_root)
    tracepoints = {name: probe_tracepoint(name, tracefs, btf) for name in TRACEPOINTS}
    kfree, consume = tracepoints["skb:kfree_skb"], tracepoints["skb:consume_skb"]
    loc_arg, reason_arg, consume_loc_arg = raw_arg_indexes(kfree.raw_args, consume.raw_args)
    reasons, reasons_source = drop_reason_names(btf, kfree)

    try:
        headers, headers_problem = (
            find_headers(roots.modules, roots.usr_src, roots.headers_cache, release,
                         str(Path(roots.sys, "kernel/kheaders.tar.xz"))),
            "",
        )
    except EnvironmentProblem as e:
        headers, headers_problem = None, e.message
    bcc = probe_bcc()
    can_load = roots.live and is_root and bcc.ok
    if can_load and headers is not None:
        headers.apply()  # bcc compiles with them, if a loader falls back to it
    offsets, offsets_problem = None, "no BTF"
    if btf is not None:
        try:
            offsets, offsets_problem = KernelOffsets.from_btf(btf), ""
        except (BtfNotFound, BtfError, ValueError) as e:
            offsets_problem = str(e)

    kprobes = probe_kprobes(roots, tracefs, btf)
    fentry = probe_fentry(roots.live and is_root, btf)
    tp_btf = probe_tp_btf(roots.live and is_root, btf)
    core = [tracepoints[name] for name in CORE_TRACEPOINTS]
    if all(tp.present and tp.raw_args is not None for tp in core) and offsets is not None:
        hook = "raw_tracepoint"
    elif all(tp.present and tp.fields for tp in core):
        hook = "tracepoint"
    else:
        hook = "none"
    bridge_btf = bridge_btf_home(btf, roots.sys)
    bridge_loaded = bridge_btf == "vmlinux" or Path(roots.sys, "module/bridge").is_dir()
    bridge_hook = choose_bridge_hook(fentry.ok, kprobes.ok, bridge_btf, bridge_loaded)
    # bcc's KFUNC_PROBE looks for its function in vmlinux's BTF only: a bridge built as a module
    # (every Debian kernel) gets the kprobe there, which reaches module functions.
    bridge_hook_bcc = bridge_hook
    if bridge_hook == "fentry" and bridge_btf != "vmlinux":
        bridge_hook_bcc = "kprobe" if kprobes.ok else "none"
    atomics = probe_bpf_atomics(roots.live and is_root, release)
    follow_loader, follow_loader_why = choose_follow_loader(tp_btf, roots.btf, bridge_hook, hook,
                                                            os.environ.get(FOLLOW_LOADER_ENV, ""))
    exporter_loader, exporter_loader_why = choose_exporter_loader(tp_btf, roots.btf, hook,
                                                                  os.environ.get(EXPORTER_LOADER_ENV, ""))
    return Features(
        kernel_release=release,
        is_root=is_root,
        btf=btf_state,
        tracefs=tracefs_state,
        tracefs_path=str(tracefs) if tracefs else None,
        tracefs_mounted_now=mounted_now,
        tracepoints=tracepoints,
        kfree_skb_has_reason=kfree.field("reason") is not None or reason_arg is not None,
        consume_skb_has_location=consume.field("location") is not None or consume_loc_arg is not None,
        kfree_skb_location_arg=loc_arg,
        kfree_skb_reason_arg=reason_arg,
        consume_skb_location_arg=consume_loc_arg,
        drop_reasons=reasons,
        drop_reasons_source=reasons_source,
        ringbuf=probe_ringbuf(roots, release, roots.live and is_root),
        kprobes=kprobes,
        fentry=fentry,
        bcc=bcc,
        headers=headers,
        headers_problem=headers_problem,
        offsets=offsets,
        offsets_problem=offsets_problem,
        hook=hook,
        bridge_hook=bridge_hook,
        bridge_loaded=bridge_loaded,
        btf_path=str(roots.btf),
        tp_btf=tp_btf,
        bpf_atomics=atomics,
        libbpf=probe_libbpf(),
        rdonly_cast=has_kfunc(btf, "bpf_rdonly_cast"),
        bridge_btf=bridge_btf,
        bridge_hook_bcc=bridge_hook_bcc,
        follow_loader=follow_loader,
        follow_loader_why=follow_loader_why,
        exporter_loader=exporter_loader,
        exporter_loader_why=exporter_loader_why,
    )


@functools.lru_cache(maxsize=None)
def _probe_cached(roots: ProbeRoots) -> Features:
    return _probe(roots)


def probe_features(roots: Optional[ProbeRoots] = None) -> Features:
    """Probe the machine (once per ProbeRoots per process; later calls return the same record)."""
    return _probe_cached(roots or ProbeRoots())


probe_features.cache_clear = _probe_cached.cache_clear  # type: ignore[attr-defined]


# -- verdicts -------------------------------------------------------------------------


def require(features: Features, loader: str = "bcc") -> None:
    """Raise EnvironmentProblem naming the first missing must-have and its fix.

    loader="libbpf" (follow's or the exporter's precompiled tp_btf object) needs neither bcc nor kernel headers:
    common on hypervisors, whose distro rarely ships headers for the running kernel."""
    if not features.is_root:
        raise EnvironmentProblem(f"not running as root: {ROOT_FIX}")
    if not features.btf.ok:
        raise EnvironmentProblem(
            f"this kernel has no BTF at {features.btf_path or '/sys/kernel/btf/vmlinux'}: "
            "tapttrace needs CONFIG_DEBUG_INFO_BTF=y"
        )
    if not features.tracefs.ok:
        raise EnvironmentProblem(f"tracefs is not mounted ({features.tracefs.detail}): run `{MOUNT_TRACEFS}`")
    if loader == "bcc" and not features.bcc.ok:
        raise EnvironmentProblem(f"bcc is not importable ({features.bcc.detail}): {BCC_FIX}")
    if loader == "bcc" and features.headers is None:
        raise EnvironmentProblem(features.headers_problem)
    if features.offsets is None:
        raise EnvironmentProblem(
            f"the kernel's BTF lacks a struct member tapttrace reads ({features.offsets_problem}): "
            "report this kernel version to tapttrace"
        )
    missing = [name for name in CORE_TRACEPOINTS if not features.tracepoints[name].present]
    if missing:
        raise EnvironmentProblem(
            f"this kernel lacks the tracepoint(s) {', '.join(missing)}: tapttrace needs CONFIG_TRACEPOINTS "
            "and a kernel of 4.17 or newer"
        )
    if features.hook == "raw_tracepoint" and features.kfree_skb_location_arg is None:
        raise EnvironmentProblem(
            "cannot tell kfree_skb's location argument from BTF: report this kernel version to tapttrace"
        )


def _tracepoint_line(tp: Tracepoint) -> DoctorLine:
    if not tp.present:
        return DoctorLine(f"tracepoint {tp.name}", False, "absent", required=tp.name in CORE_TRACEPOINTS)
    args = "raw args: " + (", ".join(a.type_name for a in tp.raw_args) if tp.raw_args is not None else "not in BTF")
    fields = ", ".join(f.name for f in tp.fields if not f.name.startswith("common_")) or "no format file"
    return DoctorLine(f"tracepoint {tp.name}", True, f"fields: {fields}; {args}",
                      required=tp.name in CORE_TRACEPOINTS)


def _objects_detail() -> str:
    from .bpfbuild import build_info

    return build_info().removeprefix("BPF objects: ").removeprefix("BPF objects ")


def doctor_lines(features: Features, plan: Optional[Mapping[str, str]] = None) -> list[DoctorLine]:
    """What the kernel offers and what tapttrace will use, one line per item."""
    f = features
    needs_bcc = "bcc" in (f.follow_loader, f.exporter_loader)
    lines = [
        DoctorLine("kernel", True, f.kernel_release),
        DoctorLine("root", f.is_root, "running as root" if f.is_root else "not root", ROOT_FIX, True),
        DoctorLine("BTF", f.btf.ok, f.btf.detail, "use a kernel built with CONFIG_DEBUG_INFO_BTF=y", True),
        DoctorLine("tracefs", f.tracefs.ok, f.tracefs.detail, MOUNT_TRACEFS, True),
        # libbpf with the CO-RE objects needs neither bcc nor kernel headers; a loader falling
        # back to bcc (it compiles at start) needs both.
        DoctorLine("libbpf", f.libbpf.ok, f.libbpf.detail, "apt-get install libbpf1",
                   "libbpf" in (f.follow_loader, f.exporter_loader)),
        DoctorLine("BPF objects", True, _objects_detail()),
        DoctorLine("bcc", f.bcc.ok, f.bcc.detail, BCC_FIX, needs_bcc),
        DoctorLine(
            "kernel headers",
            f.headers is not None,
            f.headers.describe() if f.headers else f.headers_problem,
            "" if f.headers else f"apt-get install linux-headers-{f.kernel_release} (or linux-headers-amd64)",
            needs_bcc,
        ),
    ]
    if f.headers is not None and not f.headers.matches_running:
        lines.append(DoctorLine(
            "headers vs kernel", True,
            f"headers are for {f.headers.release}, the kernel is {f.kernel_release}: fine for tapttrace, "
            "whose BPF code takes every struct offset from the running kernel's BTF",
        ))
    lines += [_tracepoint_line(f.tracepoints[name]) for name in TRACEPOINTS]
    reason = (f"yes, raw tracepoint arg {f.kfree_skb_reason_arg}" if f.kfree_skb_reason_arg is not None
              else "yes (format file only)" if f.kfree_skb_has_reason else "no: drops will have no reason")
    lines.append(DoctorLine("kfree_skb drop reason", f.kfree_skb_has_reason, reason,
                            "" if f.kfree_skb_has_reason else "drop reasons need Linux 5.17 or newer"))
    location = (f"yes, raw tracepoint arg {f.consume_skb_location_arg}" if f.consume_skb_location_arg is not None
                else "yes (format file only)" if f.consume_skb_has_location else "no")
    lines.append(DoctorLine("consume_skb location", f.consume_skb_has_location, location,
                            "" if f.consume_skb_has_location else "consume_skb's location needs Linux 6.3 or newer"))
    lines.append(DoctorLine(
        "drop reason names", bool(f.drop_reasons),
        f"{len(f.drop_reasons)} names from {f.drop_reasons_source}" if f.drop_reasons else "none known",
    ))
    lines.append(DoctorLine("ring buffer", f.ringbuf.ok, f.ringbuf.detail,
                            "" if f.ringbuf.ok else "BPF ring buffers need Linux 5.8 or newer", True))
    lines.append(DoctorLine("kprobes", f.kprobes.ok, f.kprobes.detail))
    lines.append(DoctorLine("fentry", f.fentry.ok, f.fentry.detail))
    if f.offsets is not None:
        o = f.offsets
        detail = (f"sk_buff head={o.skb_head} data={o.skb_data} len={o.skb_len} mac_header={o.skb_mac_header} "
                  f"network_header={o.skb_network_header} dev={o.skb_dev}; net_device ifindex={o.netdev_ifindex} "
                  f"name={o.netdev_name} nd_net={o.netdev_nd_net}; possible_net_t.net={o.possible_net_net}; "
                  f"net.ns.inum={o.net_ns_inum}")
        lines.append(DoctorLine("struct offsets", True, detail, required=True))
    else:
        lines.append(DoctorLine("struct offsets", False, f.offsets_problem, "needs a kernel with BTF", True))
    hooks = {"raw_tracepoint": "raw tracepoints", "tracepoint": "classic tracepoints", "none": "nothing usable"}
    lines.append(DoctorLine("hooks", f.hook != "none", f"tapttrace will use {hooks[f.hook]}", required=True))
    bridge = {"fentry": "fentry on bridge functions", "kprobe": "kprobes on bridge functions",
              "none": "none: the bridge's own decisions (FDB lookups, floods, port refusals, its egress MTU check, "
                      "the tap's transmit) are not hops; tracepoints still are, and diagnose works from them"}
    where = {"vmlinux": "; br_flood is in vmlinux", "module": "; br_flood is in the bridge module's BTF",
             "": ("; the bridge module has no BTF of its own (module BTF came in 5.11)" if f.bridge_loaded
                  else "; the bridge module is not loaded yet (hooked when follow starts, if loaded by then)")}
    bcc_note = (f"; with bcc: {bridge[f.bridge_hook_bcc]} (bcc's fentry finds vmlinux functions only)"
                if f.bridge_hook_bcc != f.bridge_hook else "")
    lines.append(DoctorLine("bridge-internal hooks", f.bridge_hook != "none",
                            bridge[f.bridge_hook] + where.get(f.bridge_btf, "") + bcc_note))
    if f.bridge_hook != "none" and plan:
        # The bridge's own decisions as follow's hops (libbpf): which functions, through what
        # (bridge_plan(f), given by the caller: doctor_lines itself reads no file).
        by_kind: dict[str, list[str]] = {}
        for func, kind in plan.items():
            by_kind.setdefault(kind, []).append(func)
        said = [f"{kind}: {', '.join(funcs)}" for kind, funcs in by_kind.items() if kind != "none"]
        unhooked = [func for func in by_kind.get("none", []) if func not in BTF_ONLY_FUNCS]
        if unhooked:
            said.append(f"not loaded now, so not hooked (nothing goes through them): {', '.join(unhooked)}")
        if plan.get("nft_do_chain") == "none":
            said.append("no netfilter verdict hop (nft_do_chain: nf_tables not loaded, or without BTF of its own "
                        "before 5.11): a netfilter drop is still named where it happens, not its table and chain")
        lines.append(DoctorLine("bridge decision hops", bool(said) and any(k != "none" for k in by_kind),
                                "; ".join(said) + ("; bcc gets none of them (libbpf only)" if said else "")))
    lines.append(DoctorLine("tp_btf", f.tp_btf.ok, f.tp_btf.detail))
    lost = "" if f.bpf_atomics.ok else (
        ": journeys are stitched in user space only (every hop is its own ring-buffer record), follow "
        "behind the traffic loses events (counted) instead of counting journeys by path, and the "
        "exporter's tap table is a hash map")
    lines.append(DoctorLine("BPF compare-and-swap", f.bpf_atomics.ok, f.bpf_atomics.detail + lost))
    loaders = {"libbpf": "libbpf, bpf/follow.c precompiled (tp_btf)", "bcc": "bcc, bpf/follow.c compiled at start"}
    lines.append(DoctorLine("follow loader", True, f"{loaders.get(f.follow_loader, f.follow_loader)}: "
                                                   f"{f.follow_loader_why}"))
    exporters = {"libbpf": "libbpf, bpf/exporter.c precompiled (tp_btf)",
                 "bcc": "bcc, bpf/exporter.c compiled at start"}
    lines.append(DoctorLine("exporter loader", True, f"{exporters.get(f.exporter_loader, f.exporter_loader)}: "
                                                     f"{f.exporter_loader_why}"))
    # A fix is advice for what is missing; on a line that is fine it would only be noise.
    return [line if not line.ok else dataclasses.replace(line, fix="") for line in lines]
