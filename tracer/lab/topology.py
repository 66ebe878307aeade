"""Throwaway test topologies: remote host ─ veth ─ bridge ─ tap ─ guest, in uniquely named namespaces.

    [remote ns]  eth0 198.51.100.1 ──veth── up0 ┐
    [hv ns]                        br0 198.51.100.254 ─ vnet0 (tap) ══ guest process 198.51.100.10

Used by the tests, `tapttrace demo` and the benchmarks. A Lab always tears down: on leaving its
`with` block (normally or by exception), at interpreter exit as a backstop, and namespaces
left behind by a process that died (SIGKILL) are removed by the next Lab that starts.
"""
from __future__ import annotations

import atexit
import itertools
import os
import random
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PREFIX = "ttlab"
RUN_NETNS = Path("/run/netns")
_serial = itertools.count()


def libvirt_tap_mac(guest_mac: str) -> str:
    """What libvirt gives a tap it creates: fe + the guest MAC's last five bytes."""
    return "fe" + guest_mac.lower()[2:]


def random_guest_mac() -> str:
    return "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


@dataclass(frozen=True)
class LabSpec:
    tap_mac: str = "libvirt"  # "libvirt": fe:+guest MAC's last five bytes; "guest": the guest's own MAC
    attach_tap: bool = True  # add the tap to the bridge
    guest_answers_arp: bool = True
    ipv6: bool = False
    tap_mtu: Optional[int] = None
    # br_netfilter is built in here and on by default in every namespace; most hypervisors only
    # have it once Docker or a firewall loads it. Off unless a scenario asks for it.
    br_netfilter: bool = False


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces a dead process of ours left behind (names carry the creator's pid)."""
    removed = []
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-")
    for entry in RUN_NETNS.iterdir() if RUN_NETNS.is_dir() else []:
        m = pattern.match(entry.name)
        if m and not pid_alive(int(m.group(1))):
            subprocess.run(["ip", "netns", "del", entry.name], capture_output=True)
            removed.append(entry.name)
    return removed


class Lab:
    """The topology above; use as a context manager."""

    bridge = "br0"
    uplink = "up0"
    tap = "vnet0"
    remote_dev = "eth0"
    remote_ip = "198.51.100.1"
    host_ip = "198.51.100.254"
    guest_ip = "198.51.100.10"
    uplink_mac = "02:00:00:00:01:01"

    def __init__(self, spec: LabSpec = LabSpec(), prefix: str = PREFIX):
        self.spec = spec
        tag = f"{prefix}-{os.getpid()}-{next(_serial)}"
        self.prefix = prefix
        self.remote_ns = f"{tag}-remote"
        self.hv_ns = f"{tag}-hv"
        self.guest_mac = random_guest_mac()
        self.tap_mac = self.guest_mac if spec.tap_mac == "guest" else libvirt_tap_mac(self.guest_mac)
        self.guest: Optional[subprocess.Popen] = None
        self._closed = False

    # -- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> "Lab":
        remove_stale(self.prefix)
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        sh = self._ip
        for ns in (self.remote_ns, self.hv_ns):
            sh("netns", "add", ns)
            self.run(ns, "ip", "link", "set", "lo", "up")
            if not self.spec.ipv6:
                # No IPv6 autoconf/DAD/MLD chatter: traces show exactly what the test sends.
                for scope in ("all", "default"):
                    self.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1")
        sh("link", "add", self.remote_dev, "netns", self.remote_ns, "type", "veth",
           "peer", "name", self.uplink, "netns", self.hv_ns)
        hv = ("-n", self.hv_ns)
        # A NIC-like uplink MAC, lower than any 52:54:00/fe:54:00 tap: the bridge takes the lowest
        # port MAC, so br0's address is the same on every run, as on a real host with a NIC.
        sh(*hv, "link", "set", self.uplink, "address", self.uplink_mac)
        sh(*hv, "link", "add", self.bridge, "type", "bridge")
        self.set_br_netfilter(self.spec.br_netfilter)
        sh(*hv, "link", "set", self.uplink, "master", self.bridge)
        sh(*hv, "tuntap", "add", "dev", self.tap, "mode", "tap")
        sh(*hv, "link", "set", self.tap, "address", self.tap_mac)
        if self.spec.tap_mtu:
            sh(*hv, "link", "set", self.tap, "mtu", str(self.spec.tap_mtu))
        if self.spec.attach_tap:
            sh(*hv, "link", "set", self.tap, "master", self.bridge)
        for dev in (self.bridge, self.uplink, self.tap):
            sh(*hv, "link", "set", dev, "up")
        sh(*hv, "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        sh("-n", self.remote_ns, "link", "set", self.remote_dev, "up")
        sh("-n", self.remote_ns, "addr", "add", f"{self.remote_ip}/24", "dev", self.remote_dev)
        self.start_guest()

    def start_guest(self) -> None:
        argv = ["ip", "netns", "exec", self.hv_ns, sys.executable, "-m", "tracer.lab.guest",
                "--tap", self.tap, "--mac", self.guest_mac, "--ip", self.guest_ip]
        if not self.spec.guest_answers_arp:
            argv.append("--no-arp")
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.guest = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      start_new_session=True)
        line = self.guest.stdout.readline() if self.guest.stdout else ""
        if line.strip() != "ready":
            err = self.guest.stderr.read() if self.guest.stderr else ""
            raise RuntimeError(f"lab guest did not start: {line!r} {err.strip()}")

    def stop_guest(self) -> None:
        g, self.guest = self.guest, None
        if g is None or g.poll() is not None:
            return
        try:
            os.killpg(g.pid, signal.SIGCONT)  # a paused guest can't act on SIGTERM
            os.killpg(g.pid, signal.SIGTERM)
            g.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(g.pid, signal.SIGKILL)
            g.wait(timeout=3)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Idempotent: the guest first (it pins the namespace), then the namespaces and all in them."""
        if self._closed:
            return
        self._closed = True
        self.stop_guest()
        for ns in (self.hv_ns, self.remote_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        atexit.unregister(self.close)

    # -- actions ----------------------------------------------------------------------------

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def run(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], check=check, capture_output=True, text=True)

    def ping(self, from_ns: str, dst: str, count: int = 3, interval: float = 0.2, timeout: float = 1.0,
             size: Optional[int] = None) -> PingResult:
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(timeout)]
        if size is not None:
            argv += ["-s", str(size), "-M", "dont"]
        out = self.run(from_ns, *argv, dst, check=False).stdout
        m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
        return PingResult(int(m.group(1)), int(m.group(2))) if m else PingResult(count, 0)

    def ping_guest_from_remote(self, **kw) -> PingResult:
        return self.ping(self.remote_ns, self.guest_ip, **kw)

    def ping_guest_from_host(self, **kw) -> PingResult:
        return self.ping(self.hv_ns, self.guest_ip, **kw)

    def set_tap_mac(self, mac: str) -> None:
        self._ip("-n", self.hv_ns, "link", "set", "dev", self.tap, "address", mac)
        self.tap_mac = mac

    def set_br_netfilter(self, on: bool) -> None:
        """bridge-nf-call-ip(6)tables in the hypervisor namespace (when br_netfilter is there)."""
        if Path("/proc/sys/net/bridge").is_dir():
            for family in ("iptables", "ip6tables", "arptables"):
                self.run(self.hv_ns, "sysctl", "-qw", f"net.bridge.bridge-nf-call-{family}={int(on)}")

    def pause_guest(self) -> None:
        if self.guest:
            os.killpg(self.guest.pid, signal.SIGSTOP)

    def resume_guest(self) -> None:
        if self.guest:
            os.killpg(self.guest.pid, signal.SIGCONT)

    def netns_inode(self, ns: str) -> int:
        return os.stat(RUN_NETNS / ns).st_ino
