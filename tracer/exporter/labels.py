"""From kernel keys (netns inode, ifindex, reason number, address) to bounded label values.

Everything a label can hold comes from a bounded set: namespace and device names from netlink,
verdict/event words, the running kernel's drop reason names, kernel function names. Never a MAC,
an IP or a frame id. A device that vanished keeps the last name it was seen by (a stable
placeholder, "ifindex:N", when it was never seen), so decoding never fails.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..records import Device
from .maps import ROLE_BRIDGE, ROLE_PORT, ROLE_TAP, Role

OVERFLOW = "_overflow"  # every label of the one series that absorbs counts beyond the series cap


@dataclass(frozen=True)
class Inventory:
    """The machine's devices at one refresh, and what the exporter watches of them."""

    netns_names: dict[int, str]
    devices: dict[tuple[int, int], Device]
    vms: dict[tuple[int, str], str] = field(default_factory=dict)  # (tap netns, tap name) -> VM name

    @classmethod
    def build(cls, netns_names: dict[int, str], devices: Iterable[Device],
              vms: Optional[dict[tuple[int, str], str]] = None) -> Inventory:
        return cls(dict(netns_names), {(d.netns, d.ifindex): d for d in devices}, dict(vms or {}))

    def watched(self, netns: Optional[set[str]] = None, bridges: Optional[set[str]] = None) -> list[Device]:
        """Bridges, their ports and taps, narrowed to --netns/--bridge when given."""
        out = []
        for d in self.devices.values():
            if netns and self.netns_names.get(d.netns, "") not in netns:
                continue
            bridge = d.name if d.is_bridge else d.master_name if d.master is not None else None
            if not (d.is_bridge or d.master is not None or d.is_tap):
                continue
            if bridges and bridge not in bridges:
                continue
            out.append(d)
        return out


def roles(devices: Iterable[Device]) -> list[Role]:
    out = []
    for d in devices:
        role = (ROLE_BRIDGE if d.is_bridge else 0) | (ROLE_PORT if d.master is not None else 0) \
            | (ROLE_TAP if d.is_tap else 0)
        bridge = d.ifindex if d.is_bridge else (d.master or 0)
        if role:
            out.append(Role(d.netns, d.ifindex, role, bridge))
    return out


def vm_mac_key(mac: str) -> int:
    """The low 40 bits of a MAC: where a libvirt tap (fe:…) and its guest (52:…) agree."""
    return int(mac.replace(":", ""), 16) & ((1 << 40) - 1)


def vm_macs(taps: Iterable[Device]) -> dict[int, tuple[int, int]]:
    return {vm_mac_key(d.mac): (d.netns, d.ifindex) for d in taps if d.is_tap and d.mac}


class Namer:
    """Label values for kernel keys; remembers names of vanished devices and namespaces."""

    def __init__(self, reason: Callable[[int], str], symbol: Callable[[int], str]):
        self._reason = reason
        self._symbol = symbol
        self._symbols: dict[int, str] = {}
        self.inventory = Inventory({}, {})
        self._gone_dev: dict[tuple[int, int], str] = {}
        self._gone_ns: dict[int, str] = {}

    def update(self, inv: Inventory) -> None:
        old = self.inventory
        for key, d in old.devices.items():
            if key not in inv.devices:
                self._gone_dev[key] = d.name
        for ino, name in old.netns_names.items():
            if ino not in inv.netns_names:
                self._gone_ns[ino] = name
        for key in inv.devices:
            self._gone_dev.pop(key, None)
        for ino in inv.netns_names:
            self._gone_ns.pop(ino, None)
        self.inventory = inv

    def forget(self, dev_keys: Iterable[tuple[int, int]], netns: Iterable[int]) -> None:
        """Drop remembered names once their series are gone (keeps memory bounded)."""
        for k in dev_keys:
            self._gone_dev.pop(k, None)
        for n in netns:
            self._gone_ns.pop(n, None)

    def remember_only(self, dev_keys: Iterable[tuple[int, int]]) -> None:
        """Keep the names of vanished devices (and their namespaces) only for these keys: those
        that still have counts. A VM's devices that never counted anything (its namespace's lo,
        the guest end of its veth) were otherwise remembered for ever, one VM after another."""
        keep = set(dev_keys)
        self._gone_dev = {k: v for k, v in self._gone_dev.items() if k in keep}
        namespaces = {ns for ns, _ in keep}
        self._gone_ns = {k: v for k, v in self._gone_ns.items() if k in namespaces}

    def netns(self, ino: int) -> str:
        return self.inventory.netns_names.get(ino) or self._gone_ns.get(ino) or f"netns:{ino}"

    def dev(self, netns: int, ifindex: int) -> str:
        if ifindex == 0:
            return ""
        d = self.inventory.devices.get((netns, ifindex))
        return d.name if d else self._gone_dev.get((netns, ifindex), f"ifindex:{ifindex}")

    def vm(self, netns: int, ifindex: int) -> str:
        return self.inventory.vms.get((netns, self.dev(netns, ifindex)), "")

    def reason(self, value: int) -> str:
        return self._reason(value)

    def location(self, address: int) -> str:
        """The kernel function (no offset: bounded), cached per address."""
        if address not in self._symbols:
            text = self._symbol(address) if address else ""
            self._symbols[address] = text.split("+")[0].split(" ")[0] if text else "unknown"
        return self._symbols[address]
