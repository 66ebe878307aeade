"""Compile and attach bpf/follow.c with bcc; hand its ring-buffer records over as raw bytes.

bcc is the loader chain's fallback (tracer/features.py): it compiles the same bpf/follow.c that
libbpf builds into a CO-RE object, with -DTT_BCC (bpf/loaders.h spells each hook, map and field
read for both). The ring buffer is read through its mmap by tracer/ringbuf.py (many records a
call, no ctypes callback per record); bcc only compiles, attaches and gives the map's fd.

The only module of the follow pipeline that imports bcc. Everything kernel-specific arrives
through the Features record as -D integer constants.
"""
from __future__ import annotations

import ctypes
from typing import Callable, Iterable

from .config import ip_key, mac_to_int
from .errors import EnvironmentProblem, KernelError, say_note
from .ringbuf import Record, RingBuffer

from .bpfbuild import BPF_DIR
FOLLOW_SOURCE = "follow.c"
# The kprobe variant of the br_flood hop in bpf/follow.c, attached by name (bcc attaches the
# tracepoint and KFUNC_PROBE programs itself as it loads them).
FLOOD_KPROBE = "tt_br_flood_kprobe"


def follow_cflags(features, mac: str, ringbuf_pages: int, learn: bool = False) -> list[str]:
    """Everything the BPF C needs to know, as integer defines (nothing user-supplied but the MAC
    as an int). TT_CFG_* are the fields libbpf sets in .rodata (struct tt_follow_config)."""
    reason = features.kfree_skb_reason_arg
    location = features.consume_skb_location_arg
    flags = [f"-I{BPF_DIR}", "-DTT_BCC", f"-DRINGBUF_PAGES={int(ringbuf_pages)}",
             f"-DTT_CFG_watch_mac={mac_to_int(mac):#x}ULL",
             f"-DTT_CFG_kfree_reason_arg={2 if reason == 2 else -1}",
             f"-DTT_CFG_consume_location_arg={1 if location == 1 else -1}",
             f"-DTT_CFG_learn={int(bool(learn))}"]
    flags += features.offsets.as_cflags()
    # bcc's fentry finds functions in vmlinux's BTF only: a bridge built as a module (every Debian
    # kernel) gets the kprobe (features.bridge_hook_bcc).
    hook = features.bridge_hook_bcc
    if hook == "fentry":
        flags.append("-DBRIDGE_HOOKS_FENTRY")
    elif hook == "kprobe":
        flags.append("-DBRIDGE_HOOKS_KPROBE")
    return flags


def _import_bcc():
    try:
        import bcc  # noqa: F401
    except ImportError:
        raise EnvironmentProblem(
            "bcc is not importable: install Debian's python3-bpfcc and run tapttrace from a venv made "
            "with --system-site-packages (scripts/setup.sh does both)") from None
    return bcc


class FollowProgram:
    """The loaded, attached follow program. Use as a context manager: leaving it detaches everything."""

    loader = "bcc"

    def __init__(self, features, mac: str, ringbuf_pages: int = 256, learn: bool = False):
        """learn=True: the kernel adds the guest's own addresses to the watched ones as soon as
        it sends from them (follow's address learning), as under libbpf."""
        bcc = _import_bcc()
        self._bpf = None
        features.headers.apply()
        cflags = follow_cflags(features, mac, ringbuf_pages, learn)
        try:
            # Raw tracepoint functions are attached by bcc as it loads them.
            self._bpf = bcc.BPF(src_file=str(BPF_DIR / FOLLOW_SOURCE).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception for compile and attach failures
            if self._bpf is not None:
                self._bpf.cleanup()
            raise KernelError(f"could not load bpf/follow.c: {exc}") from None
        self.notes: list[str] = []
        if features.bridge_hook_bcc == "kprobe":
            try:
                self._bpf.attach_kprobe(event=b"br_flood", fn_name=FLOOD_KPROBE.encode())
            except Exception as exc:  # the bridge module not loaded: br_flood is not there to probe
                note = f"no br_flood hop (kprobe: {exc}); the tracepoint hops are unaffected"
                self.notes.append(note)
                say_note(note)
        try:
            table = self._bpf["events"]
            self._ring = RingBuffer(table.map_fd, table.max_entries)
        except Exception as exc:
            self._bpf.cleanup()
            self._bpf = None
            raise KernelError(f"could not map the ring buffer of bpf/follow.c: {exc}") from None

    def poll_batch(self, timeout_ms: int) -> list:
        """The records now in the ring buffer (waiting up to timeout_ms when there are none),
        as memoryviews. Records of the wrong size go on too: events.decode refuses them and
        follow counts them as undecodable in its summary, rather than losing them here unseen."""
        return self._ring.poll_batch(timeout_ms)

    def read_up_to_ns(self) -> int:
        """Every record reserved before this moment has been read (RingBuffer.caught_up_ns)."""
        return self._ring.caught_up_ns if self._ring is not None else 0

    def poll(self, sink: Callable[[Record], None], timeout_ms: int) -> None:
        """Wait up to timeout_ms for events and hand each raw record to sink."""
        for raw in self._ring.poll(timeout_ms):
            sink(raw)

    def drain(self, sink: Callable[[Record], None]) -> None:
        while True:
            records = self._ring.read()
            if not records:
                return
            for raw in records:
                sink(raw)

    def lost(self) -> int:
        """Events the kernel had no ring-buffer room for, since load."""
        return sum(int(v) for v in self._bpf["lost"][0]) if self._bpf else 0

    def watch_ips(self, addrs: Iterable[str]) -> None:
        if self._bpf is None:
            raise RuntimeError("bpf/follow.c's program is closed: no addresses can be watched")
        table = self._bpf["watch_ips"]
        for addr in addrs:
            key = table.Key()
            ctypes.memmove(ctypes.byref(key), ip_key(addr), 16)
            table[key] = ctypes.c_uint8(1)

    def close(self) -> None:
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.close()  # the mappings hold the map: unmapped, bcc's cleanup frees it
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> "FollowProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
