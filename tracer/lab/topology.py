"""Throwaway test topologies: remote host ─ veth ─ bridge ─ tap ─ guest, in uniquely named namespaces.

    [remote ns]  eth0 198.51.100.1 ──veth── up0 ┐
    [hv ns]                        br0 198.51.100.254 ─ vnet0 (tap) ══ guest process 198.51.100.10

The guest is a Python stand-in reading the tap (tracer.lab.guest; LabSpec(guest="stub"), the
default) or a real Linux VM under qemu/TCG (LabSpec(guest="qemu"); tracer.lab.guest_image).

Used by the tests, `tapttrace demo` and the benchmarks. A Lab always tears down: on leaving its
`with` block (normally or by exception), on SIGTERM/SIGHUP when nobody else handles them, at
interpreter exit as a backstop. After a SIGKILL the guest exits by itself (its stdin pipe closes)
and the next Lab that starts removes the namespaces left behind.
"""
from __future__ import annotations

import atexit
import itertools
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

from ..errors import EnvironmentProblem, TapttraceError
from .guest import link_local

PREFIX = "ttlab"
RUN_NETNS = Path("/run/netns")
GUEST_START_TIMEOUT = 60.0  # a stand-in guest is a Python process: seconds to start under qemu TCG (the kernel matrix)
# A qemu guest boots in ~4-5 s under TCG on an idle machine; a loaded CI box can take several times that.
QEMU_BOOT_TIMEOUT = float(os.environ.get("TAPTTRACE_QEMU_BOOT_TIMEOUT", "90"))
LAB_TMP = Path(tempfile.gettempdir())
_serial = itertools.count()


def libvirt_tap_mac(guest_mac: str) -> str:
    """What libvirt gives a tap it creates: fe + the guest MAC's last five bytes."""
    return "fe" + guest_mac.lower()[2:]


def random_guest_mac() -> str:
    """A libvirt-style guest MAC: qemu's 52:54:00 prefix (locally administered) + three random bytes."""
    return "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


@dataclass(frozen=True)
class LabSpec:
    """How to build a Lab; the defaults make a healthy one."""

    tap_mac: str = "libvirt"  # "libvirt": fe:+guest MAC's last five bytes; "guest": the guest's own MAC
    attach_tap: bool = True  # add the tap to the bridge
    guest_answers_arp: bool = True
    guest_reads: bool = True  # False: the guest holds the tap open but never reads it
    guest_announces: bool = True  # a gratuitous ARP at guest start, as a booting VM sends
    ipv6: bool = False  # False: IPv6 off in the lab namespaces, so traces hold only what a test sent
    tap_mtu: Optional[int] = None
    # br_netfilter is built in here and on by default in every namespace; most hypervisors only
    # have it once Docker or a firewall loads it. Off unless a scenario asks for it.
    br_netfilter: bool = False
    guest: str = "stub"  # "stub": the Python stand-in; "qemu": a real Linux guest under qemu (TCG)

    def __post_init__(self) -> None:
        if self.tap_mac not in ("libvirt", "guest"):
            raise ValueError(f"tap_mac must be 'libvirt' or 'guest', not {self.tap_mac!r}")
        if self.guest not in ("stub", "qemu"):
            raise ValueError(f"guest must be 'stub' or 'qemu', not {self.guest!r}")


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int


# How long one probe waits for its reply by default: a deadline, never a measurement (a healthy
# guest answers in well under a millisecond; a busy CI machine or qemu TCG can take seconds).
# Callers that expect no answer pass a short timeout: nothing comes back, however long they wait.
PROBE_TIMEOUT = 10.0


def ping_argv(count: int, interval: float, timeout: float) -> list[str]:
    return ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(timeout)]


def ping_result(out: str, count: int) -> PingResult:
    """iputils ping's summary line; nothing sent back when it printed none (no route, say)."""
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
    return PingResult(int(m.group(1)), int(m.group(2))) if m else PingResult(count, 0)


def probe_by_probe(run, count: int, interval: float, timeout: float) -> PingResult:
    """`count` probes, each its own `ping -c 1 -W timeout` (run(argv) -> its stdout): each waits for
    its own reply up to `timeout` and ends the moment it comes (or when the kernel reports the
    address unreachable). One `ping -c N` is a timed window instead: once its last probe is out
    it waits max(2 × slowest reply so far, interval) and counts what has not come back by then as
    lost (iputils' schedule_exit), so on a busy machine a healthy guest loses the odd reply.
    `interval` paces the probes; every probe is a new ping process (its own ICMP id, seq 1)."""
    sent = received = 0
    for i in range(count):
        if i and interval:
            time.sleep(interval)  # pacing between probes, not a wait for anything
        r = ping_result(run(ping_argv(1, 0.2, timeout)), 1)
        sent, received = sent + r.sent, received + r.received
    return PingResult(sent, received)


class GuestFailed(TapttraceError):
    """The lab's guest did not come up; one line for `tapttrace demo` (exit 1: the demo did not work)."""


class LabCommandFailed(subprocess.CalledProcessError):
    """A command of the lab failed; unlike its base class, says what the command printed."""

    def __str__(self) -> str:
        return f"{' '.join(self.cmd)}: exit {self.returncode}: {(self.stderr or self.stdout or '').strip()}"


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
    for entry in sorted(RUN_NETNS.iterdir()) if RUN_NETNS.is_dir() else []:
        m = pattern.match(entry.name)
        if m and not pid_alive(int(m.group(1))):
            # A guest the dead lab had paused can't see its stdin close; it would pin the namespace.
            pids = subprocess.run(["ip", "netns", "pids", entry.name], capture_output=True, text=True).stdout
            for pid in pids.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", entry.name], capture_output=True)
            removed.append(entry.name)
    for entry in sorted(LAB_TMP.glob(f"{prefix}-*")):  # a qemu guest's console log and qemu's output
        m = pattern.match(entry.name)
        if m and entry.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
    return removed


# -- teardown on fatal signals ------------------------------------------------------------------
# SIGTERM/SIGHUP kill a Python process without atexit handlers or `finally` blocks. While a Lab is
# open and the program has no handler of its own, ours tears the open labs down and then dies of
# the same signal, so the exit status still says what killed it.

class _OpenLab(Protocol):
    """What the handler needs of an open lab (a Lab or a lab.libvirt.LibvirtLab)."""

    def close(self) -> None: ...


_open_labs: set[_OpenLab] = set()
_open_lock = threading.Lock()
_FATAL = (signal.SIGTERM, signal.SIGHUP)


def _on_fatal_signal(signum: int, frame: object) -> None:
    for lab in list(_open_labs):
        lab.close()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _track(lab: _OpenLab, open_: bool) -> None:
    with _open_lock:
        (_open_labs.add if open_ else _open_labs.discard)(lab)
        last = not _open_labs
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still covers us
    for s in _FATAL:
        if open_ and signal.getsignal(s) is signal.SIG_DFL:
            signal.signal(s, _on_fatal_signal)
        elif not open_ and last and signal.getsignal(s) is _on_fatal_signal:
            signal.signal(s, signal.SIG_DFL)


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
        self.prefix = prefix
        self.remote_ns, self.hv_ns = self._free_names(prefix)
        self.guest_mac = random_guest_mac()
        # Link-local only: the lab hands out no global IPv6 addresses, and fe80:: never routes anywhere.
        self.guest_ip6 = link_local(self.guest_mac)
        self.tap_mac = self.guest_mac if spec.tap_mac == "guest" else libvirt_tap_mac(self.guest_mac)
        self.guest: Optional[subprocess.Popen] = None
        self.tmp: Optional[Path] = None  # qemu guest only: console.log and qemu.log
        # qemu's -name guest=: what tapttrace's exporter names the VM by when libvirt is absent.
        self.guest_name = self.hv_ns.removesuffix("-hv")

    @staticmethod
    def _free_names(prefix: str) -> tuple[str, str]:
        # pid + serial is unique among live processes; a reused pid may still find a dead
        # namespace of its predecessor's that remove_stale can't tell from ours, so skip those.
        while True:
            tag = f"{prefix}-{os.getpid()}-{next(_serial)}"
            names = (f"{tag}-remote", f"{tag}-hv")
            if not any((RUN_NETNS / n).exists() for n in names):
                return names

    # -- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        remove_stale(self.prefix)
        atexit.register(self.close)
        _track(self, True)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        for ns in (self.remote_ns, self.hv_ns):
            self._ip("netns", "add", ns)
            self._ip("-n", ns, "link", "set", "lo", "up")
            # No unsolicited IGMP reports for 224.0.0.x from br0's address: they are flooded to the
            # tap at random moments in the first seconds and made frame counts flaky.
            self.run(ns, "sysctl", "-qw", "net.ipv4.igmp_link_local_mcast_reports=0")
            if self.spec.ipv6:
                # DAD would hold every fe80:: address tentative for a second after link-up.
                self.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
            else:
                # No IPv6 autoconf/DAD/MLD chatter: traces show exactly what the test sends.
                self.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                         "net.ipv6.conf.default.disable_ipv6=1")
        self._ip("link", "add", self.remote_dev, "netns", self.remote_ns, "type", "veth",
                 "peer", "name", self.uplink, "netns", self.hv_ns)
        hv = ("-n", self.hv_ns)
        # A NIC-like uplink MAC, lower than any 52:54:00/fe:54:00 tap: the bridge takes the lowest
        # port MAC, so br0's address is the same on every run, as on a real host with a NIC.
        self._ip(*hv, "link", "set", self.uplink, "address", self.uplink_mac)
        self._ip(*hv, "link", "add", self.bridge, "type", "bridge")
        self.set_br_netfilter(self.spec.br_netfilter)
        self._ip(*hv, "link", "set", self.uplink, "master", self.bridge)
        # Persistent, made before the guest opens it: libvirt and hand-made setups both do this.
        self._ip(*hv, "tuntap", "add", "dev", self.tap, "mode", "tap")
        self._ip(*hv, "link", "set", self.tap, "address", self.tap_mac)
        if self.spec.tap_mtu:
            self._ip(*hv, "link", "set", self.tap, "mtu", str(self.spec.tap_mtu))
        if self.spec.attach_tap:
            self._ip(*hv, "link", "set", self.tap, "master", self.bridge)
        for dev in (self.bridge, self.uplink, self.tap):
            self._ip(*hv, "link", "set", dev, "up")
        self._ip(*hv, "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        self._ip("-n", self.remote_ns, "link", "set", self.remote_dev, "up")
        self._ip("-n", self.remote_ns, "addr", "add", f"{self.remote_ip}/24", "dev", self.remote_dev)
        self.start_guest()

    def start_guest(self) -> None:
        """Start the guest on the tap; returns once it holds the tap open (stub) or has booted
        and configured its address (qemu)."""
        if self.spec.guest == "qemu":
            self._start_qemu()
        else:
            self._start_stub()

    def _start_stub(self) -> None:
        argv = ["ip", "netns", "exec", self.hv_ns, sys.executable, "-m", "tracer.lab.guest",
                "--tap", self.tap, "--mac", self.guest_mac, "--ip", self.guest_ip, "--exit-on-stdin-eof"]
        argv += [flag for on, flag in ((not self.spec.guest_answers_arp, "--no-arp"),
                                       (not self.spec.guest_announces, "--no-announce"),
                                       (not self.spec.guest_reads, "--no-read"),
                                       (self.spec.ipv6, "--ipv6")) if on]
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        # Its own session: a terminal's Ctrl-C reaches the lab, which then stops the guest in order.
        # stdin is a pipe only we hold: when this process dies however it dies, the guest sees EOF.
        g = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, start_new_session=True)
        self.guest = g
        assert g.stdout is not None
        line = g.stdout.readline() if select.select([g.stdout], [], [], GUEST_START_TIMEOUT)[0] else ""
        if line.strip() != "ready":
            status = "no answer" if g.poll() is None else f"exit {g.returncode}"
            if g.poll() is None:
                os.killpg(g.pid, signal.SIGKILL)
                g.wait(timeout=3)
            err = g.stderr.read().strip() if g.stderr else ""
            self.stop_guest()
            raise GuestFailed(f"lab guest did not start ({status}): {line.strip()} {err}".strip())

    def _start_qemu(self) -> None:
        from .guest_image import READY_MARKER, ensure_guest_image, guest_cmdline

        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            raise EnvironmentProblem("the lab's qemu guest needs qemu-system-x86_64: apt-get install qemu-system-x86")
        image = ensure_guest_image()
        if self.tmp is None:
            self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.guest_name}-", dir=LAB_TMP))
        console, log = self.tmp / "console.log", self.tmp / "qemu.log"
        console.write_text("")
        cmdline = guest_cmdline(f"{self.guest_ip}/24", ipv6=self.spec.ipv6, arp=self.spec.guest_answers_arp,
                                announce=self.spec.guest_announces)
        # TCG, never KVM: nested KVM on the machines this runs on hangs at boot. qemu opens the
        # persistent tap by name inside the hypervisor namespace, as libvirt's ethernet type does.
        # setpriv --pdeathsig: if this process dies without tearing down, qemu dies with it.
        argv = ["ip", "netns", "exec", self.hv_ns, "setpriv", "--pdeathsig", "KILL", qemu,
                "-accel", "tcg", "-name", f"guest={self.guest_name}", "-nodefaults", "-no-user-config",
                "-display", "none", "-monitor", "none", "-no-reboot", "-m", "128",
                "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", cmdline,
                "-serial", f"file:{console}",
                "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={self.guest_mac}"]
        with open(log, "wb") as out:
            self.guest = g = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True)
        deadline = time.monotonic() + QEMU_BOOT_TIMEOUT
        while READY_MARKER not in (text := console.read_text(errors="replace")):
            if g.poll() is not None or time.monotonic() > deadline:
                status = (f"qemu exit {g.returncode}" if g.poll() is not None
                          else f"no {READY_MARKER} in {QEMU_BOOT_TIMEOUT:.0f} s")
                self.stop_guest()
                tail = " | ".join((text.strip().splitlines() or ["(console empty)"])[-8:])
                qemu_said = log.read_text(errors="replace").strip()
                raise GuestFailed(f"lab qemu guest did not boot ({status}); console: {tail}"
                                   + (f"; qemu: {qemu_said[-500:]}" if qemu_said else ""))
            time.sleep(0.05)
        if "TAPTTRACE-GUEST-FAILED" in text:
            self.stop_guest()
            raise GuestFailed(f"lab qemu guest failed: {text.strip().splitlines()[-1]}")
        if not self.spec.guest_reads:
            self.pause_guest()  # holds the tap, reads nothing: what --no-read does for the stub

    def console_log(self) -> str:
        """What the qemu guest printed on its serial console ('' for the stub)."""
        path = self.tmp / "console.log" if self.tmp else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def stop_guest(self) -> None:
        """Stop the guest (paused or not); the tap stays, with no one holding it."""
        g = self.guest
        if g is None:
            return
        if g.poll() is None:
            try:
                os.killpg(g.pid, signal.SIGCONT)  # a paused guest can't act on SIGTERM
                os.killpg(g.pid, signal.SIGTERM)
                try:
                    g.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    os.killpg(g.pid, signal.SIGKILL)
                    g.wait(timeout=3)
            except ProcessLookupError:
                g.wait(timeout=3)
        for pipe in (g.stdin, g.stdout, g.stderr):
            if pipe:
                pipe.close()
        self.guest = None

    def close(self) -> None:
        """Tear everything down; safe to call again, also after an interrupted close."""
        try:
            self.stop_guest()  # first: it pins the hypervisor namespace
        finally:
            for ns in (self.hv_ns, self.remote_ns):
                if (RUN_NETNS / ns).exists():
                    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None
            atexit.unregister(self.close)
            _track(self, False)

    # -- actions ----------------------------------------------------------------------------

    def _ip(self, *args: str) -> None:
        self._check(subprocess.run(["ip", *args], capture_output=True, text=True))

    @staticmethod
    def _check(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        if p.returncode:
            raise LabCommandFailed(p.returncode, p.args, p.stdout, p.stderr)
        return p

    def run(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside one of the lab's namespaces (output captured as text)."""
        p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
        return self._check(p) if check else p

    def hv(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command in the hypervisor namespace: lab.hv("bridge", "link", "set", ...)."""
        return self.run(self.hv_ns, *argv, check=check)

    def remote(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command in the remote host's namespace."""
        return self.run(self.remote_ns, *argv, check=check)

    def ping(self, from_ns: str, dst: str, count: int = 3, interval: float = 0.2, timeout: float = PROBE_TIMEOUT,
             size: Optional[int] = None, burst: bool = False) -> PingResult:
        """iputils ping; dst may be IPv4 or IPv6 (fe80::…%dev). Never raises on loss.

        Probe by probe (probe_by_probe): when it returns, every reply that came has been received,
        so `received` is exact. burst=True: one `ping -c count -i interval` for a rate (a flood
        into a guest that reads nothing); its `received` is only what came back within ping's
        own window, never a count to assert."""
        extra = ["-s", str(size), "-M", "dont"] if size is not None else []
        if burst:
            argv = ping_argv(count, interval, timeout) + extra
            return ping_result(self.run(from_ns, *argv, dst, check=False).stdout, count)
        return probe_by_probe(lambda argv: self.run(from_ns, *argv, *extra, dst, check=False).stdout,
                              count, interval, timeout)

    def ping_guest_from_remote(self, **kw) -> PingResult:
        return self.ping(self.remote_ns, self.guest_ip, **kw)

    def ping_guest_from_host(self, **kw) -> PingResult:
        return self.ping(self.hv_ns, self.guest_ip, **kw)

    def ping6_guest_from_remote(self, **kw) -> PingResult:
        """Needs LabSpec(ipv6=True): pings the guest's fe80:: address out of the remote's eth0."""
        return self.ping(self.remote_ns, f"{self.guest_ip6}%{self.remote_dev}", **kw)

    def ping6_guest_from_host(self, **kw) -> PingResult:
        """Needs LabSpec(ipv6=True): pings the guest's fe80:: address out of br0."""
        return self.ping(self.hv_ns, f"{self.guest_ip6}%{self.bridge}", **kw)

    def set_tap_mac(self, mac: str) -> None:
        self._ip("-n", self.hv_ns, "link", "set", "dev", self.tap, "address", mac)
        self.tap_mac = mac

    def set_br_netfilter(self, on: bool) -> None:
        """bridge-nf-call-ip(6)tables in the hypervisor namespace (when br_netfilter is there). On
        asks for br_netfilter: loaded here when it is a module (stock kernels), an error when absent."""
        if on and not Path("/proc/sys/net/bridge").is_dir():
            subprocess.run(["modprobe", "br_netfilter"], capture_output=True)
            if not Path("/proc/sys/net/bridge").is_dir():
                raise EnvironmentProblem("br_netfilter is needed and can't be loaded (modprobe br_netfilter)")
        if Path("/proc/sys/net/bridge").is_dir():
            for family in ("iptables", "ip6tables", "arptables"):
                self.run(self.hv_ns, "sysctl", "-qw", f"net.bridge.bridge-nf-call-{family}={int(on)}")

    def pause_guest(self) -> None:
        """SIGSTOP the guest: it holds the tap but reads nothing, like a hung VM."""
        if self.guest:
            os.killpg(self.guest.pid, signal.SIGSTOP)

    def resume_guest(self) -> None:
        if self.guest:
            os.killpg(self.guest.pid, signal.SIGCONT)

    def netns_inode(self, ns: str) -> int:
        """The namespace's inode, as BPF reads it from skb->dev->nd_net and /proc/PID/ns/net shows it."""
        return os.stat(RUN_NETNS / ns).st_ino
