"""A lab with a real libvirtd: the original report's two interface types, on real qemu guests.

    [remote ns]  eth0 203.0.113.1 ──veth── tv<pid>x<n>u ┐
    [root ns]              bridge tv<pid>x<n>b 203.0.113.254 ─ vnetN   (type='bridge': libvirt's tap)
                                                            └ tv<pid>x<n>t<k> (type='ethernet',
                                                               managed='no': a tap made by hand)

libvirt's qemu driver only puts taps in the root namespace, so this lab's bridge, uplink and
hand-made taps live there, with names that carry the creating process's pid (the next lab removes
what a killed one left). The guests are transient domains (gone once destroyed) booting the lab's
guest image (tracer.lab.guest_image) under TCG. The daemons are used where they already run;
otherwise the lab starts virtlogd and libvirtd and stops exactly those.
"""
from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from xml.sax.saxutils import quoteattr

from .guest_image import READY_MARKER, ensure_guest_image, guest_cmdline
from .topology import (
    PROBE_TIMEOUT,
    GuestFailed,
    LabCommandFailed,
    PingResult,
    _track,
    libvirt_tap_mac,
    pid_alive,
    probe_by_probe,
    random_guest_mac,
)
from .topology import remove_stale as remove_stale_namespaces

URI = "qemu:///system"
DOMAIN_PREFIX = "ttlv"
DEVICE_PREFIX = "tv"  # + pid + "x" + serial + role (15 characters at most)
NETNS_PREFIX = "ttlv"
RUN_NETNS = Path("/run/netns")
BOOT_TIMEOUT = 90.0  # TCG boots in ~5 s alone; two guests and a busy test suite on 2 cores take longer
DAEMON_TIMEOUT = 15.0
_serial = itertools.count()
_DEVICE_RE = re.compile(rf"^{DEVICE_PREFIX}(\d+)x\d+[but]\d*$")
_NAME_RE = re.compile(rf"^{DOMAIN_PREFIX}-(\d+)-")


def _libvirt():
    import libvirt  # Debian's python3-libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise LabCommandFailed(p.returncode, list(argv), p.stdout, p.stderr)
    return p


def libvirt_answers(uri: str = URI) -> bool:
    libvirt = _libvirt()
    try:
        libvirt.openReadOnly(uri).close()
        return True
    except libvirt.libvirtError:
        return False


# -- daemons ---------------------------------------------------------------------------------------


class KvmGroupAccess:
    """/dev/kvm readable and writable by group kvm while the lab runs, as Debian's udev rules make it.

    libvirt checks whether its qemu user can open /dev/kvm; when /dev/kvm exists but is root's
    alone (as on these machines), every domain start finds the cached qemu capabilities stale and
    probes qemu again, a dozen times: 48 s per `virsh create` here instead of 0.7 s. The guests
    still run under TCG (domain type='qemu'); the mode is put back on close."""

    PATH = Path("/dev/kvm")

    def __init__(self) -> None:
        self._saved: Optional[tuple[int, int]] = None

    def open(self) -> None:
        try:
            st = self.PATH.stat()
        except FileNotFoundError:
            return
        import grp

        try:
            kvm_gid = grp.getgrnam("kvm").gr_gid
        except KeyError:
            return
        if st.st_gid == kvm_gid and st.st_mode & 0o060 == 0o060:
            return
        self._saved = (st.st_mode & 0o7777, st.st_gid)
        os.chown(self.PATH, -1, kvm_gid)
        os.chmod(self.PATH, (st.st_mode & 0o7777) | 0o060)

    def close(self) -> None:
        if self._saved is not None:
            mode, gid = self._saved
            self._saved = None
            os.chown(self.PATH, -1, gid)
            os.chmod(self.PATH, mode)


class LibvirtDaemons:
    """virtlogd and libvirtd, started only if not already answering; stops exactly what it started."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.kvm = KvmGroupAccess()
        self._tmp: Optional[str] = None

    def open(self) -> None:
        self.kvm.open()
        if libvirt_answers():
            return
        self._tmp = tempfile.mkdtemp(prefix="tapttrace-libvirtd-")
        if not _socket_answers("/run/libvirt/virtlogd-sock"):
            self._start("virtlogd")
        self._start("libvirtd")
        deadline = time.monotonic() + DAEMON_TIMEOUT
        while not libvirt_answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd did not answer on {URI} within {DAEMON_TIMEOUT:g} s "
                                   "(see /var/log/libvirt/libvirtd.log)")
            time.sleep(0.1)

    def _start(self, daemon: str) -> None:
        assert self._tmp is not None
        pidfile = os.path.join(self._tmp, f"{daemon}.pid")
        _run(daemon, "-d", "-p", pidfile)
        deadline = time.monotonic() + DAEMON_TIMEOUT
        while not os.path.exists(pidfile) or not Path(pidfile).read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{daemon} wrote no pid file")
            time.sleep(0.05)
        self.started.append((daemon, int(Path(pidfile).read_text().strip())))

    def close(self) -> None:
        for _daemon, pid in reversed(self.started):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + DAEMON_TIMEOUT
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        self.started.clear()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.kvm.close()


def _running(pid: int) -> bool:
    """Alive and not a zombie (a daemon's exit is reaped by whoever adopted it, maybe late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _socket_answers(path: str) -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


# -- the lab ---------------------------------------------------------------------------------------


@dataclass
class LabDomain:
    """One transient domain of the lab."""

    name: str
    mac: str
    ip: str
    iface_type: str  # bridge | ethernet
    tap: str  # the tap qemu uses (vnetN, or the hand-made one)
    console: Path
    xml: str

    def qemu_pid(self) -> int:
        """The qemu process libvirt started (libvirt names it after the domain: -name guest=NAME)."""
        p = _run("pgrep", "-f", f"guest={self.name},", check=False)
        return int(p.stdout.split()[0]) if p.stdout.split() else 0


def remove_stale() -> list[str]:
    """Domains, root-namespace devices and namespaces that a killed lab's process left behind."""
    removed = []
    if libvirt_answers():
        libvirt = _libvirt()
        conn = libvirt.open(URI)
        try:
            for dom in conn.listAllDomains(0):
                m = _NAME_RE.match(dom.name())
                if m and not pid_alive(int(m.group(1))):
                    try:
                        dom.destroy()
                        removed.append(dom.name())
                    except libvirt.libvirtError:
                        pass
        finally:
            conn.close()
    for dev in sorted(os.listdir("/sys/class/net")):
        m = _DEVICE_RE.match(dev)
        if m and not pid_alive(int(m.group(1))):
            _run("ip", "link", "del", dev, check=False)
            removed.append(dev)
    return removed + remove_stale_namespaces(NETNS_PREFIX)  # and the remote namespaces, as the Lab's


class LibvirtLab:
    """A bridge in the root namespace with a remote host on a veth, and libvirt domains on it."""

    remote_ip = "203.0.113.1"
    host_ip = "203.0.113.254"
    remote_dev = "eth0"

    def __init__(self) -> None:
        while True:
            serial = next(_serial)
            self.tag = f"{DEVICE_PREFIX}{os.getpid()}x{serial}"
            self.remote_ns = f"{NETNS_PREFIX}-{os.getpid()}-{serial}-remote"
            if not Path("/sys/class/net", self.tag + "b").exists() and not (RUN_NETNS / self.remote_ns).exists():
                break
        self.bridge = self.tag + "b"
        self.uplink = self.tag + "u"
        self.domain_prefix = f"{DOMAIN_PREFIX}-{os.getpid()}-{serial}"
        self.domains: list[LabDomain] = []
        self._taps: list[str] = []
        self._next_ip = itertools.count(10)
        self._stack = ExitStack()
        self._closed = False
        self.tmp: Optional[Path] = None

    # -- life cycle ----------------------------------------------------------------------------

    def __enter__(self) -> LibvirtLab:
        atexit.register(self.close)
        _track(self, True)
        try:
            daemons = LibvirtDaemons()
            self._stack.callback(daemons.close)
            daemons.open()
            remove_stale()
            self.image = ensure_guest_image()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        # libvirt's qemu user reads the console log's directory; the lab removes it on close.
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.domain_prefix}-"))
        os.chmod(self.tmp, 0o755)
        _run("ip", "netns", "add", self.remote_ns)
        _run("ip", "-n", self.remote_ns, "link", "set", "lo", "up")
        _run("ip", "netns", "exec", self.remote_ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
             "net.ipv6.conf.default.disable_ipv6=1")
        _run("ip", "link", "add", self.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _run("ip", "link", "add", self.uplink, "type", "veth", "peer", "name", self.remote_dev,
             "netns", self.remote_ns)
        # No IPv6 chatter from the lab's root-namespace devices: traces hold what the tests send.
        for dev in (self.bridge, self.uplink):
            _run("sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
        _run("ip", "link", "set", self.uplink, "master", self.bridge)
        _run("ip", "link", "set", self.uplink, "up")
        _run("ip", "link", "set", self.bridge, "up")
        _run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        _run("ip", "-n", self.remote_ns, "link", "set", self.remote_dev, "up")
        _run("ip", "-n", self.remote_ns, "addr", "add", f"{self.remote_ip}/24", "dev", self.remote_dev)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.domains and libvirt_answers():
                libvirt = _libvirt()
                conn = libvirt.open(URI)
                try:
                    for d in self.domains:
                        try:
                            conn.lookupByName(d.name).destroy()
                        except libvirt.libvirtError:
                            pass  # already gone
                finally:
                    conn.close()
            for dev in self._taps + [self.uplink, self.bridge]:
                if Path("/sys/class/net", dev).exists():
                    _run("ip", "link", "del", dev, check=False)
            _run("ip", "netns", "del", self.remote_ns, check=False)
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self._stack.close()
            _track(self, False)
            atexit.unregister(self.close)

    # -- domains -------------------------------------------------------------------------------

    def add_domain(self, kind: str, iface: str, tap_mac: str = "libvirt", wait: bool = True) -> LabDomain:
        """Start a transient domain named <prefix>-<kind> with one NIC.

        iface='bridge': libvirt creates the tap (vnetN, fe: + the guest MAC) and adds it to the
        bridge. iface='ethernet': the lab creates a tap first (with the guest's own MAC when
        tap_mac='guest', as in the original report), adds it to the bridge, and the domain uses it
        as it is (<target dev=… managed='no'/>). Returns once the guest has configured its address
        (wait=False: at once; call wait_ready, e.g. after starting the other guests)."""
        if iface not in ("bridge", "ethernet"):
            raise ValueError(f"iface must be 'bridge' or 'ethernet', not {iface!r}")
        libvirt = _libvirt()
        name = f"{self.domain_prefix}-{kind}"
        mac = random_guest_mac()
        ip = f"203.0.113.{next(self._next_ip)}"
        assert self.tmp is not None
        console = self.tmp / f"{kind}.console.log"
        if iface == "ethernet":
            tap = f"{self.tag}t{len(self._taps)}"
            _run("ip", "tuntap", "add", "dev", tap, "mode", "tap")
            self._taps.append(tap)
            _run("ip", "link", "set", tap, "address", mac if tap_mac == "guest" else libvirt_tap_mac(mac))
            _run("sysctl", "-qw", f"net.ipv6.conf.{tap}.disable_ipv6=1")
            _run("ip", "link", "set", tap, "master", self.bridge)
            _run("ip", "link", "set", tap, "up")
            nic = (f"<interface type='ethernet'><mac address='{mac}'/><target dev={quoteattr(tap)} managed='no'/>"
                   "<model type='virtio'/></interface>")
        else:
            tap = ""
            nic = (f"<interface type='bridge'><mac address='{mac}'/><source bridge={quoteattr(self.bridge)}/>"
                   "<model type='virtio'/></interface>")
        xml = f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{self.image.kernel}</kernel>
    <initrd>{self.image.initrd}</initrd>
    <cmdline>{guest_cmdline(f"{ip}/24")}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {nic}
    <serial type='file'><source path={quoteattr(str(console))}/></serial>
  </devices>
</domain>"""
        conn = libvirt.open(URI)
        try:
            dom = conn.createXML(xml, 0)
            domain = LabDomain(name, mac, ip, iface, tap, console, xml)
            self.domains.append(domain)
            if not tap:
                live = dom.XMLDesc(0)
                m = re.search(r"<target dev='([^']+)'", live)
                domain.tap = m.group(1) if m else ""
        finally:
            conn.close()
        if iface == "bridge" and domain.tap:
            _run("sysctl", "-qw", f"net.ipv6.conf.{domain.tap}.disable_ipv6=1", check=False)
        if wait:
            self.wait_ready(domain)
        return domain

    def wait_ready(self, d: LabDomain) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            text = d.console.read_text(errors="replace") if d.console.exists() else ""
            if READY_MARKER in text:
                return
            time.sleep(0.2)
        tail = " | ".join((d.console.read_text(errors="replace") if d.console.exists() else "").splitlines()[-15:])
        raise GuestFailed(f"domain {d.name} did not boot within {BOOT_TIMEOUT:g} s; console: {tail}")

    # -- traffic -------------------------------------------------------------------------------

    def ping(self, from_remote: bool, dst: str, count: int = 3, interval: float = 0.2,
             timeout: float = PROBE_TIMEOUT) -> PingResult:
        """Probe by probe, as Lab.ping: `received` is exact when it returns."""
        where = ["ip", "netns", "exec", self.remote_ns] if from_remote else []
        return probe_by_probe(lambda argv: _run(*where, *argv, dst, check=False).stdout, count, interval, timeout)

    def ping_from_remote(self, d: LabDomain, **kw) -> PingResult:
        return self.ping(True, d.ip, **kw)

    def ping_from_host(self, d: LabDomain, **kw) -> PingResult:
        return self.ping(False, d.ip, **kw)
