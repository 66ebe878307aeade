"""Kernel address → "function+0xoff" from /proc/kallsyms, for drop and consume locations."""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

PROC_KALLSYMS = "/proc/kallsyms"

# Only code symbols: locations are return addresses, and data symbols interleaved
# with text (t/T) would otherwise shadow the function they fall in.
_TEXT_TYPES = frozenset("tTwW")


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
    """Sorted kernel text symbols; the file is read on first use, not at construction."""

    def __init__(self, path: Union[str, Path] = PROC_KALLSYMS):
        self.path = Path(path)
        self._addresses: Optional[list[int]] = None
        self._names: list[str] = []  # "name" or "name\t[module]", parallel to _addresses
        self._by_name: Optional[dict[str, int]] = None
        self._all_zero = False

    @classmethod
    def load(cls, path: Union[str, Path] = PROC_KALLSYMS) -> "Kallsyms":
        """A lazily loaded table of the symbols in `path`."""
        return cls(path)

    def _ensure(self) -> list[int]:
        if self._addresses is None:
            self._parse(self.path.read_text())
        assert self._addresses is not None
        return self._addresses

    def _parse(self, text: str) -> None:
        rows: list[tuple[int, str]] = []
        append = rows.append
        for line in text.splitlines():
            # "ffffffff81e94f20 T name" or "ffffffffc0a01000 t name\t[module]"
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[1] in _TEXT_TYPES:
                append((int(parts[0], 16), parts[2]))
        # Module symbols follow vmlinux in load order, not address order.
        rows.sort()
        self._addresses = [address for address, _ in rows]
        self._names = [name for _, name in rows]
        # Without CAP_SYSLOG (or with kptr_restrict=2) every address reads as 0.
        self._all_zero = bool(rows) and rows[-1][0] == 0

    def _symbol(self, i: int) -> Symbol:
        name, _, module = self._names[i].partition("\t")
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
        if self._all_zero or address == 0:
            return None
        i = bisect.bisect_right(addresses, address) - 1
        if i < 0:
            return None
        return self._symbol(i), address - addresses[i]

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
            for i, entry in enumerate(self._names):
                by_name.setdefault(entry.partition("\t")[0], addresses[i])
            self._by_name = by_name
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.address_of(name) is not None
