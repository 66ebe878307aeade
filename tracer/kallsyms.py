"""Kernel address → "function+0xoff" from /proc/kallsyms, for drop and consume locations."""
from __future__ import annotations

import bisect
import re
import sys
import threading
from array import array
from dataclasses import dataclass
from itertools import accumulate, compress, islice
from pathlib import Path
from typing import Optional, Union

PROC_KALLSYMS = "/proc/kallsyms"

# Only code symbols: locations are return addresses, and data symbols interleaved
# with text (t/T) would otherwise shadow the function they fall in. "ffffffff81e94f20 T name" or
# "ffffffffc0a01000 t name\t[module]".
_TEXT_TYPES = frozenset(b"tTwW")
_HEX16 = re.compile(rb"[0-9a-fA-F]{16}")
_NAME_AT = 19  # the name's offset in its line


_PIECE = 1 << 18


def _text_lines(data: bytes, start: int, end: int, addresses: array, begins: array) -> None:
    """Append the address (hex as read: big-endian) and the line's start of every text line in
    data[start:end] ("ffffffff81e94f20 T name": the type in column 17). The lines are split in C
    and the addresses read by one bytes.fromhex: ≈ 2× faster than a regex match a line, and the
    first journey follow writes waits for this table (its hops' locations)."""
    lines = data[start:end].split(b"\n")
    text = [len(line) > _NAME_AT and line[17] in _TEXT_TYPES and line[16] == 32 for line in lines]
    at = array("L", compress(accumulate((len(line) + 1 for line in lines), initial=start), text))
    try:
        hex_text = b"".join([line[:16] for line in compress(lines, text)]).decode()
        addresses.frombytes(bytes.fromhex(hex_text))
    except ValueError:  # not 16 hex digits where the address goes: keep the lines that have them
        at = array("L", (a for a in at if _HEX16.fullmatch(data, a, a + 16)))
        addresses.frombytes(bytes.fromhex(b"".join([data[a:a + 16] for a in at]).decode()))
    begins.extend(at)


@dataclass(frozen=True)
class Symbol:
    """One kallsyms line."""

    address: int
    name: str
    module: str = ""  # "" for vmlinux, else the module in [brackets]

    def at(self, offset: int) -> str:
        """How an address `offset` bytes into this symbol reads."""
        text = self.name if offset == 0 else f"{self.name}+{offset:#x}"
        return f"{text} [{self.module}]" if self.module else text


class Kallsyms:
    """Sorted kernel text symbols; the file is read on first use, not at construction.

    The table is the file's bytes as read, with two arrays beside them: each text symbol's address
    and where its name starts in the bytes, sorted by address. A name is decoded when looked up:
    a list of 120 k Python strings and tuples cost follow ≈ 37 MB of its resident memory, these
    ≈ 6 MB (bench/FINDINGS.md)."""

    def __init__(self, path: Union[str, Path] = PROC_KALLSYMS):
        self.path = Path(path)
        self._addresses: Optional[array] = None  # sorted
        self._begins = array("L")  # where each address's line begins in _data, parallel to _addresses
        self._data = b""
        self._by_name: Optional[dict[str, int]] = None
        self._all_zero = False
        self._lock = threading.Lock()
        self._preload: Optional[threading.Thread] = None

    @classmethod
    def load(cls, path: Union[str, Path] = PROC_KALLSYMS) -> Kallsyms:
        """A lazily loaded table of the symbols in `path`."""
        return cls(path)

    def preload(self) -> Kallsyms:
        """Read the file now, in a background thread: follow's first journey needs the table
        while the ring buffer fills, and reading /proc/kallsyms takes ≈ 0.2 s. A failure shows
        at first use, as without it."""
        self._preload = threading.Thread(target=self._try_ensure, name="kallsyms", daemon=True)
        self._preload.start()
        return self

    def _try_ensure(self) -> None:
        try:
            self._ensure()
        except OSError:
            pass  # raised again by the first use

    def _ensure(self) -> array:
        if self._addresses is None:
            with self._lock:
                if self._addresses is None:
                    self._parse(self.path.read_bytes())
        assert self._addresses is not None
        return self._addresses

    def _parse(self, data: bytes) -> None:
        addresses, begins = array("Q"), array("L")
        at = 0
        while at < len(data):  # in pieces of whole lines (_PIECE bytes): a bytes object a line, a piece at a time
            end = data.find(b"\n", at + _PIECE)
            end = len(data) if end < 0 else end + 1
            _text_lines(data, at, end, addresses, begins)
            at = end
        if sys.byteorder == "little":
            addresses.byteswap()  # the hex reads big-endian
        self._data = data
        # Without CAP_SYSLOG (or with kptr_restrict=2) every address reads as 0.
        self._all_zero = bool(addresses) and max(addresses) == 0
        if all(a <= b for a, b in zip(addresses, islice(addresses, 1, None))):
            self._addresses, self._begins = addresses, begins  # vmlinux alone: already in order
            return
        # Module symbols follow vmlinux in load order, not address order; equal addresses keep the
        # file's order (sorted() is stable).
        order = sorted(range(len(addresses)), key=addresses.__getitem__)
        self._begins = array("L", (begins[i] for i in order))
        self._addresses = array("Q", (addresses[i] for i in order))

    def _entry(self, i: int) -> str:
        """Line i's "name" or "name\t[module]"."""
        start = self._begins[i] + _NAME_AT
        end = self._data.find(b"\n", start)
        return self._data[start:end if end >= 0 else len(self._data)].decode(errors="replace")

    def _symbol(self, i: int) -> Symbol:
        name, _, module = self._entry(i).partition("\t")
        return Symbol(self._ensure()[i], name, module.strip("[]"))

    @property
    def restricted(self) -> bool:
        """True when the kernel hid the addresses (all zero): symbolizing is impossible."""
        self._ensure()
        return self._all_zero

    def __len__(self) -> int:
        return len(self._ensure())

    def lookup(self, address: int) -> Optional[tuple[Symbol, int]]:
        """The symbol containing `address` and the offset into it, or None."""
        addresses = self._ensure()
        if self._all_zero or address == 0 or address >= 1 << 64:
            return None
        i = bisect.bisect_right(addresses, address) - 1
        if i < 0:
            return None
        symbol = self._symbol(i)
        return symbol, address - symbol.address

    def symbolize(self, address: int) -> str:
        """"func+0x1a", "func" at offset 0, "func+0x8 [mod]" in a module; hex when unknown."""
        hit = self.lookup(address)
        if hit is None:
            return f"{address:#x}"
        return hit[0].at(hit[1])

    def address_of(self, name: str) -> Optional[int]:
        """Address of text symbol `name` (the first one listed), or None."""
        if self._by_name is None:
            addresses = self._ensure()
            by_name: dict[str, int] = {}
            for i in range(len(addresses)):
                symbol = self._entry(i).partition("\t")[0]
                if symbol not in by_name:
                    by_name[symbol] = addresses[i]
            self._by_name = by_name
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.address_of(name) is not None
