"""VMs coming and going on the soak's bridge: one created and the oldest destroyed every interval.

A "VM" is a network namespace ts<pid>-vm<k> (the guest) and a port of br0 in the hv namespace:
  - odd k: a veth pair, ts<pid>v<k> on the bridge and eth0 in the VM's namespace; the guest
    sends a trickle of frames to the remote (forwarded out of up0);
  - even k: a tap ts<pid>t<k> on the bridge, held and read by a reader process (as qemu holds
    a VM's tap); the remote sends it a trickle of frames (delivered to the tap).
Both make counter series that outlive the device, so the exporter has to prune them. IPv6 is off
in every namespace: nothing floods the bridge, so the soak's exact counts on vnet0/vnet1 only
ever see the traffic they are sent.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.topology import REMOTE_MAC

TRICKLE_FPS = 20   # frames/s each VM's stream carries: enough to make series, nothing to the rate


def _sh(*cmd: str) -> None:
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")


def vm_mac(k: int, tap: bool) -> str:
    """A guest MAC per VM; its tap gets fe: + the same five bytes (as libvirt does)."""
    b = [0x54, 0x00, 0xc6, (k >> 8) & 0xff, k & 0xff]
    return ":".join(f"{x:02x}" for x in [0xfe if tap else 0x52] + b)


@dataclass
class Vm:
    k: int
    netns: str
    dev: str
    tap: bool
    procs: list[subprocess.Popen] = field(default_factory=list)


@dataclass
class Churn:
    """Runs in its own thread until stop is set; destroy_all() on every exit path."""

    pid_tag: str           # "ts<pid>"
    hv: str                # the namespace of br0
    remote: str            # the namespace of the uplink's far end
    sender: Path
    reader: Path
    workdir: Path
    interval: float = 1.0
    keep: int = 10
    log: Callable[[str], None] = print
    alive: deque = field(default_factory=deque)
    created: int = 0
    destroyed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    late: int = 0          # ticks that started more than one interval behind schedule
    create_s: list[float] = field(default_factory=list)
    _k: int = 0

    def names(self, k: int, tap: bool) -> tuple[str, str]:
        dev = f"{self.pid_tag}{'t' if tap else 'v'}{k}"
        if len(dev) > 15:  # IFNAMSIZ - 1
            dev = f"{self.pid_tag}{'t' if tap else 'v'}{k % 10 ** (15 - len(self.pid_tag) - 1)}"
        return f"{self.pid_tag}-vm{k}", dev

    def create(self) -> Vm:
        self._k += 1
        k = self._k
        tap = k % 2 == 0
        netns, dev = self.names(k, tap)
        vm = Vm(k, netns, dev, tap)
        self.alive.append(vm)  # before the first command: destroy() cleans up a half-made VM too
        _sh("ip", "netns", "add", netns)
        _sh("ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1")
        life = f"{min(600.0, self.interval * (self.keep + 5) + 60):.0f}"  # the sender's own bound
        if tap:
            mac = vm_mac(k, tap=False)
            _sh("ip", "-n", self.hv, "tuntap", "add", "dev", dev, "mode", "tap")
            _sh("ip", "-n", self.hv, "link", "set", dev, "address", vm_mac(k, tap=True), "master", "br0", "up")
            _sh("bridge", "-n", self.hv, "fdb", "add", mac, "dev", dev, "master", "static")
            vm.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", self.hv, str(self.reader), dev, str(self.workdir / f"{dev}.counters"), "7200"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            vm.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", self.remote, str(self.sender), "eth0", mac, REMOTE_MAC, str(TRICKLE_FPS),
                 "1000000", life], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        else:
            mac = vm_mac(k, tap=False)
            _sh("ip", "-n", self.hv, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _sh("ip", "-n", netns, "link", "set", "eth0", "address", mac, "up")
            _sh("ip", "-n", self.hv, "link", "set", dev, "master", "br0", "up")
            vm.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", netns, str(self.sender), "eth0", REMOTE_MAC, mac, str(TRICKLE_FPS),
                 "1000000", life], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return vm

    def destroy(self, vm: Vm) -> None:
        for p in vm.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in vm.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        subprocess.run(["ip", "-n", self.hv, "link", "del", vm.dev], capture_output=True)
        subprocess.run(["ip", "netns", "del", vm.netns], capture_output=True)
        (self.workdir / f"{vm.dev}.counters").unlink(missing_ok=True)

    def tick(self) -> None:
        t0 = time.monotonic()
        try:
            self.create()
            self.created += 1
            self.create_s.append(time.monotonic() - t0)
        except Exception as err:  # noqa: BLE001 - a failed VM is a soak finding, said in one line
            self.failed += 1
            self.errors.append(f"churn: creating a VM failed: {err}")
        while len(self.alive) > self.keep:
            vm = self.alive.popleft()
            self.destroy(vm)
            self.destroyed += 1

    def run(self, stop: threading.Event) -> None:
        start = time.monotonic()
        n = 0
        while not stop.is_set():
            self.tick()
            n += 1
            due = start + n * self.interval
            now = time.monotonic()
            if now > due + self.interval:
                # Behind by more than a tick (the machine is busy): count it and catch up, never burst.
                self.late += 1
                start, n = now, 0
                continue
            stop.wait(max(0.0, due - now))

    def destroy_all(self) -> None:
        while self.alive:
            self.destroy(self.alive.popleft())
            self.destroyed += 1

    def summary(self) -> dict:
        cs = sorted(self.create_s)
        return {"created": self.created, "destroyed": self.destroyed, "failed": self.failed, "late_ticks": self.late,
                "interval_s": self.interval, "keep": self.keep,
                "create_s_median": cs[len(cs) // 2] if cs else None, "create_s_max": cs[-1] if cs else None}


def leftover_names(pid_tag: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(pid_tag + "-")]


def remove_stale() -> list[str]:
    """Namespaces ts<pid>-… of a soak that was SIGKILLed (its pid gone): removed, and named."""
    gone = []
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith("ts") or "-" not in name:
            continue
        tag = name.split("-", 1)[0][2:]
        if tag.isdigit() and int(tag) != os.getpid() and not os.path.exists(f"/proc/{tag}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            gone.append(name)
    return gone
