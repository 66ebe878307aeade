"""A directory of network devices across namespaces, keyed by (netns inode, ifindex).

Refreshed from netlink when an event names a device it doesn't know, or knows under another
name (the device was replaced), at most every `min_refresh_s`.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Callable, Optional

from .records import Device, DeviceKey

# Returns ({netns inode: name}, [Device, ...]) for the whole machine.
Loader = Callable[[], "tuple[dict[int, str], list[Device]]"]


class DeviceTable:
    def __init__(self, loader: Loader, min_refresh_s: float = 0.2):
        self._loader = loader
        self._min_refresh_s = min_refresh_s
        self._last_refresh = float("-inf")
        self._netns: dict[int, str] = {}
        self._devices: dict[DeviceKey, Device] = {}
        self.refreshes = 0
        self.refresh(force=True)

    @classmethod
    def static(cls, netns: dict[int, str], devices: Iterable[Device]) -> DeviceTable:
        """A table that never changes: for replaying recordings."""
        devs = list(devices)
        return cls(lambda: (netns, devs), min_refresh_s=float("inf"))

    def refresh(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._last_refresh < self._min_refresh_s:
            return False
        self._last_refresh = now
        netns, devices = self._loader()
        self._netns = dict(netns)
        self._devices = {d.key: d for d in devices}
        self.refreshes += 1
        return True

    def device(self, netns: int, ifindex: int, ifname: str) -> Optional[Device]:
        dev = self._devices.get(DeviceKey(netns, ifindex))
        if dev is None or (ifname and dev.name != ifname):
            if self.refresh():
                dev = self._devices.get(DeviceKey(netns, ifindex))
        if dev is not None and ifname and dev.name != ifname:
            return None  # gone and its index not yet reused by anything we can see
        return dev

    def ports(self, netns: int, bridge_ifindex: int) -> list[Device]:
        return sorted((d for d in self._devices.values() if d.netns == netns and d.master == bridge_ifindex),
                      key=lambda d: d.ifindex)

    def netns_name(self, netns: int) -> str:
        name = self._netns.get(netns)
        if name is None and self.refresh():
            name = self._netns.get(netns)
        return name or f"netns:{netns}"

    def all(self) -> list[Device]:
        return list(self._devices.values())

    @property
    def namespaces(self) -> dict[int, str]:
        return dict(self._netns)
