"""The bench's own high-rate topology: remote ns ↔ veth eth0/up0 ↔ br0 ↔ tap vnet0 ↔ C reader.

Everything lives in two namespaces named ttbench-<pid>-remote and ttbench-<pid>-hv; nothing is
created in the root namespace. Deleting the two namespaces removes every device, so teardown is
one step that can't half-fail. The lab (tracer/lab) is built for correctness scenarios; this one
is built for rate: a static FDB entry so every frame is a plain forward to the tap, IPv6 off so
no background chatter, a veth pair that discards at once next to the sender to measure the generator alone, and a
long tap queue so the reader's drain rate can be measured from a full queue.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field

GUEST_MAC = "52:54:00:b5:00:01"   # all bench traffic is for this MAC
TAP_MAC = "fe:54:00:b5:00:01"     # libvirt-style tap MAC (not the guest's: that would make it local)
REMOTE_MAC = "02:00:c6:33:64:01"  # the sender's eth0
OTHER_MAC = "52:54:00:b5:ff:ff"   # a MAC none of the traffic concerns
REMOTE_IP = "198.51.100.1/24"
TAP_QUEUE = 100_000               # vnet0 txqueuelen: the tun ring the reader drains


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True)


@dataclass
class Topology:
    prefix: str = field(default_factory=lambda: f"ttbench-{os.getpid()}-")
    up: bool = False

    @property
    def hv(self) -> str:
        return self.prefix + "hv"

    @property
    def remote(self) -> str:
        return self.prefix + "remote"

    def ns_cmd(self, ns: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *cmd]

    def create(self) -> Topology:
        hv, rm = self.hv, self.remote
        try:
            sh("ip", "netns", "add", hv)
            self.up = True
            sh("ip", "netns", "add", rm)
            for ns in (hv, rm):
                sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                   "net.ipv6.conf.default.disable_ipv6=1")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", rm, "link", "add", "eth0", "address", REMOTE_MAC, "type", "veth",
               "peer", "name", "up0", "netns", hv)
            # The generator's own ceiling is measured into gen0, whose peer sink0 throws each
            # frame away at once (not for sink0's MAC: dropped as OTHERHOST before IP).
            sh("ip", "-n", rm, "link", "add", "gen0", "type", "veth", "peer", "name", "sink0")
            sh("ip", "-n", rm, "addr", "add", REMOTE_IP, "dev", "eth0")
            sh("ip", "-n", hv, "link", "add", "br0", "type", "bridge", "stp_state", "0",
               "forward_delay", "0", "mcast_snooping", "0")
            sh("ip", "-n", hv, "link", "set", "up0", "master", "br0")
            sh("ip", "-n", hv, "tuntap", "add", "dev", "vnet0", "mode", "tap")
            sh("ip", "-n", hv, "link", "set", "vnet0", "address", TAP_MAC, "txqueuelen", str(TAP_QUEUE),
               "master", "br0")
            for ns, dev in ((rm, "eth0"), (rm, "gen0"), (rm, "sink0"), (hv, "up0"), (hv, "br0"), (hv, "vnet0")):
                sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("bridge", "-n", hv, "fdb", "add", GUEST_MAC, "dev", "vnet0", "master", "static")
            self.wait_forwarding(("up0",))  # vnet0 has no carrier until a reader holds it
        except BaseException:
            self.destroy()
            raise
        return self

    def wait_forwarding(self, ports: tuple[str, ...] = ("up0", "vnet0"), timeout: float = 10.0) -> None:
        """Ports drop everything (BRIDGE_INGRESS_STP_STATE) until they reach the forwarding state."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = sh("bridge", "-n", self.hv, "link", "show").stdout
            states = {line.split(":")[1].strip().split("@")[0]: "state forwarding" in line
                      for line in out.splitlines() if ":" in line}
            if all(states.get(p) for p in ports):
                return
            time.sleep(0.05)
        raise RuntimeError(f"bridge ports never reached forwarding: {out}")

    def tap_stats(self) -> dict[str, int]:
        """vnet0's counters: tx_packets are frames the reader took, tx_dropped the ones the queue refused."""
        out = sh("ip", "netns", "exec", self.hv, "cat", "/sys/class/net/vnet0/statistics/tx_packets",
                 "/sys/class/net/vnet0/statistics/tx_dropped").stdout.split()
        return {"tx_packets": int(out[0]), "tx_dropped": int(out[1])}

    def destroy(self) -> None:
        for ns in (self.remote, self.hv):
            sh("ip", "netns", "del", ns, check=False)
        self.up = False

    def __enter__(self) -> Topology:
        return self.create()

    def __exit__(self, *exc) -> None:
        self.destroy()


def leftovers(prefix: str = "ttbench-") -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def remove_stale(prefix: str = "ttbench-") -> list[str]:
    """Namespaces left by a bench that was SIGKILLed (its pid is gone): removed, and named."""
    gone = []
    for ns in leftovers(prefix):
        try:
            pid = int(ns[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            sh("ip", "netns", "del", ns, check=False)
            gone.append(ns)
    return gone
