"""follow on the real kernel: real BPF programs, bridges, taps and namespaces built by the lab."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import jsonschema
import pytest

from tracer.errors import READY_PREFIX
from tracer.features import probe_features
from tracer.lab import Lab, LabSpec

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "journey.schema.json").read_text())
# One validator for every journey: jsonschema.validate() checks the schema itself again on every
# call (45 ms a journey here, 2.8 ms with the schema checked once).
jsonschema.validators.validator_for(SCHEMA).check_schema(SCHEMA)
JOURNEY = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)


def tapttrace(*args: str) -> list[str]:
    return [sys.executable, "-m", "tracer", *args]


# Deadlines for waits on a condition: upper bounds, never measurements (Python starts slowly under
# qemu TCG, the kernel matrix; a shared CI machine can stall a process for seconds).
WAIT = 120


def read_lines(pipe, lines: list[str]) -> threading.Thread:
    """Collect a pipe's lines into `lines` from a background thread (ends at EOF)."""
    t = threading.Thread(target=lambda: lines.extend(pipe), daemon=True)
    t.start()
    return t


def wait_ready(proc: subprocess.Popen, err: list[str], what: str) -> None:
    """Until follow or diagnose (--json) says on stderr that every hook is attached (errors.say_ready):
    frames sent from then on are all seen. Holding a program is not enough: they are loaded together
    and attached one by one, fentry ones slowly under qemu TCG (the kernel matrix)."""
    deadline = time.monotonic() + WAIT
    while not any(line.startswith(READY_PREFIX) for line in list(err)):
        if proc.poll() is not None:
            time.sleep(0.2)  # what it said on its way out
            raise AssertionError(f"{what} exited ({proc.returncode}) before it was attached: {''.join(err)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never said it was attached: {''.join(err)}")
        time.sleep(0.05)


class Follow:
    """`tapttrace follow --json` running in the background while the test makes traffic.

    Its window ends on a condition, never on a clock: stop(until=...) waits (up to WAIT) until the
    journeys follow has written satisfy `until`, then signals. follow writes a journey once it has
    ended (every copy freed, or idle for a second), so what `until` names is over in the kernel and
    follow has read it; the signal then only ends the window."""

    def __init__(self, *args: str, command: Optional[list[str]] = None, cwd: Path = ROOT):
        """command: how to run tapttrace (this checkout's by default; an installed one: test_install_kernel)."""
        self.proc = subprocess.Popen([*(command or tapttrace()), "follow", "--json", *args], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._out: list[str] = []
        self._err: list[str] = []
        # stderr is read from the start (it says when follow is attached); stdout from the first
        # wait for journeys (until then the pipe fills, which tests of a writer blocked on a full
        # pipe rely on).
        self._readers: list[threading.Thread] = [read_lines(self.proc.stderr, self._err)]
        self._out_reader: Optional[threading.Thread] = None
        try:
            wait_ready(self.proc, self._err, "follow")
            self.programs = our_programs(self.proc.pid)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    def _read_in_background(self) -> None:
        if self._out_reader is None:
            self._out_reader = read_lines(self.proc.stdout, self._out)
            self._readers.append(self._out_reader)

    def journeys(self) -> list[dict]:
        """The journeys follow has written so far (once waiting has begun)."""
        lines = (json.loads(line) for line in list(self._out) if line.strip())
        return [x for x in lines if x.get("schema") == "tapttrace.journey/1"]

    def wait_for(self, cond: Callable[[list[dict]], bool], what: str) -> None:
        self._read_in_background()
        deadline = time.monotonic() + WAIT
        while not cond(self.journeys()):
            if self.proc.poll() is not None:
                raise AssertionError(f"follow exited while waiting for {what}: {''.join(self._err)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting {WAIT} s for {what}; follow wrote: "
                                     f"{[(j['summary'], j['verdict']) for j in self.journeys()]}")
            time.sleep(0.05)

    def stop(self, sig: Optional[int] = signal.SIGTERM, *, until: Optional[Callable[[list[dict]], bool]] = None,
             what: str = "the traffic's journeys") -> tuple[list[dict], dict, str]:
        """until: what must have been written before the window ends (see the class).
        sig=None: the caller has signalled it already."""
        if until is not None:
            self.wait_for(until, what)
        if sig is not None:
            self.proc.send_signal(sig)
        try:
            self._read_in_background()
            self.proc.wait(timeout=WAIT)
            for t in self._readers:
                t.join(WAIT)
            out, err = "".join(self._out), "".join(self._err)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.returncode == 0, err
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        journeys = [x for x in lines if x.get("schema") == "tapttrace.journey/1"]
        (summary,) = [x for x in lines if x.get("schema") == "tapttrace.summary/1"]
        for j in journeys:
            JOURNEY.validate(j)
        return journeys, summary, err


def run_window(argv: list[str], traffic=None, *, timeout: float = 90, cwd: Path = ROOT) -> tuple[int, str, str]:
    """Run a tapttrace command that watches a window (diagnose) and let the window end on a
    condition, never on a clock: traffic() runs once the command holds a BPF link per hook, and
    SIGINT ends the window when traffic() has returned (the caller's traffic must be done by then:
    a ping whose replies came back). Without traffic, the command's own --duration ends it."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_lines: list[str] = []
    err_lines: list[str] = []
    readers = [read_lines(proc.stdout, out_lines), read_lines(proc.stderr, err_lines)]
    try:
        if traffic is not None:
            try:
                wait_ready(proc, err_lines, str(argv[3:5]))
            except AssertionError:
                if proc.poll() is None:
                    raise
            if proc.poll() is None:
                traffic()
                proc.send_signal(signal.SIGINT)
        proc.wait(timeout=timeout)
        for t in readers:
            t.join(timeout)
        out, err = "".join(out_lines), "".join(err_lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def our_programs(pid: int) -> set[int]:
    """IDs of the BPF programs a process holds open (from /proc/PID/fdinfo)."""
    ids = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for entry in fdinfo.iterdir() if fdinfo.exists() else []:
        try:
            text = entry.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def loaded_programs() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out)}


def follow_pair(args: tuple, monkeypatch, first: dict[str, str], second: dict[str, str]) -> tuple[Follow, Follow]:
    """Two follows of the same traffic, started one after the other with these environments
    (loader, trips); the first is killed if the second can't start."""
    for name, value in first.items():
        monkeypatch.setenv(name, value)
    one = Follow(*args)
    for name, value in second.items():
        monkeypatch.setenv(name, value)
    try:
        return one, Follow(*args)
    except BaseException:
        one.proc.kill()
        raise


def hops_by_copy(journey: dict) -> tuple:
    """A journey's hops (event, device, copy) copy by copy, for comparing two follows that watched
    the same traffic: each stamps its own times, so two copies' hops within a microsecond on two
    CPUs (ping's raw-socket clone consumed as the original is dropped) may interleave one way in
    one follow and the other way in the other."""
    return tuple((h["event"], h["dev"], h["copy"]) for h in sorted(journey["hops"], key=lambda h: h["copy"]))


def programs_gone(ids: set[int], timeout: float = WAIT) -> bool:
    """Programs are freed after an RCU grace period, a moment after the last fd closes."""
    deadline = time.monotonic() + timeout
    while ids & loaded_programs():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def echoes(journeys: list[dict]) -> list[dict]:
    return [j for j in journeys if j["summary"].startswith("ICMP echo ") and j["toward_guest"]]


def requests(journeys: list[dict]) -> list[dict]:
    """Echo requests (ICMP or ICMPv6) toward the guest, from anywhere."""
    return [j for j in journeys if j["summary"].startswith(("ICMP echo ", "ICMPv6 echo ")) and j["toward_guest"]
            and " reply " not in j["summary"]]


def replies_from(mac: str, journeys: list[dict]) -> list[dict]:
    return [j for j in journeys if j["summary"].startswith(("ICMP echo reply", "ICMPv6 echo reply"))
            and j["src_mac"] == mac]


def pings_done(mac: str, sent: int, answered: int) -> Callable[[list[dict]], bool]:
    """A follow's window may end once it has written the journeys of `sent` echo requests toward
    the guest and of `answered` replies from it (mac)."""
    return lambda js: len(requests(js)) >= sent and len(replies_from(mac, js)) >= answered


def neighbour_state(lab: Lab, ns: str, dev: str, ip: str) -> str:
    out = lab.run(ns, "ip", "-j", "neigh", "show", "dev", dev, "to", ip).stdout
    entries = json.loads(out or "[]")
    return ",".join(entries[0].get("state", [])) if entries else ""


def tx_packets(lab: Lab, ns: str, dev: str) -> int:
    return json.loads(lab.run(ns, "ip", "-j", "-s", "link", "show", "dev", dev).stdout)[0]["stats64"]["tx"]["packets"]


def wait_until(cond, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting {WAIT} s for {what}")
        time.sleep(0.05)


def from_uplink(lab: Lab, journeys: list[dict]) -> list[dict]:
    return [j for j in echoes(journeys) if any(h["dev"] == lab.uplink for h in j["hops"])]


def arp_requests(lab: Lab, journeys: list[dict]) -> list[dict]:
    return [j for j in journeys if j["summary"] == f"ARP who-has {lab.guest_ip} tell {lab.remote_ip}"]


# Hops from inside the bridge and the tap (fentry or kprobes: every stock kernel, not this
# machine's 6.18): between the tracepoints' hops, so sequences of those are compared without them.
BRIDGE_EVENTS = ("to-port", "flood-port", "to-host", "egress", "tap-xmit")


def tracepoint_hops(j: dict) -> list[dict]:
    return [h for h in j["hops"] if h["event"] not in BRIDGE_EVENTS]


def bridge_hops_here() -> bool:
    """Does follow get the bridge's own hops on this kernel (libbpf, fentry or kprobes)?"""
    f = probe_features()
    return f.follow_loader == "libbpf" and f.bridge_hook != "none"


def test_healthy_guest_frames_are_delivered_to_the_tap():
    with Lab(LabSpec()) as lab:
        f = Follow(lab.guest_mac, "--netns", lab.hv_ns, "--ip", lab.guest_ip)
        ping = lab.ping_guest_from_remote(count=3)
        journeys, summary, _ = f.stop(until=pings_done(lab.guest_mac, 3, 3))
    assert ping.received == 3
    reqs = echoes(journeys)
    assert len(reqs) == 3
    inside = bridge_hops_here()
    for j in reqs:
        assert j["verdict"] == "delivered"
        assert [(h["event"], h["dev"]) for h in tracepoint_hops(j)][-3:] == [
            ("received", lab.uplink), ("sent", lab.tap), ("read", lab.tap)]
        assert j["hops"][-1]["reader"]  # the process holding the tap is named
        if inside:  # the bridge's own hops: its FDB names the tap, the frame fits the tap's MTU
            assert j["fdb"] == lab.tap, j
            events = [(h["event"], h["dev"]) for h in j["hops"]]
            # (5.10's bridge module has no BTF: there the to-port hop can't name its port)
            assert {("to-port", lab.tap), ("to-port", "")} & set(events), events
            assert ("egress", lab.tap) in events and ("tap-xmit", lab.tap) in events, events
            hop = {h["event"]: h for h in j["hops"] if h["dev"] == lab.tap}
            assert hop["egress"]["detail"] == "fits MTU 1500" and not hop["egress"]["fault"], hop
            if Path("/sys/kernel/btf/tun").is_file():  # tun_net_xmit's facts need tun's BTF (not 5.10)
                assert hop["tap-xmit"]["detail"].startswith("room in its queue of"), hop
    replies = [j for j in journeys if j["summary"].startswith("ICMP echo reply") and j["src_mac"] == lab.guest_mac]
    assert len(replies) == 3 and all(j["verdict"] == "forwarded" for j in replies)
    assert summary["lost_events"] == 0


def test_bcc_loader_delivers_the_same_journeys(monkeypatch):
    """The loader chain's fallback (bcc compiling bpf/follow.c at start) works on this kernel too:
    with a bridge built as a module, its br_flood hop is a kprobe (bcc's fentry finds only vmlinux)."""
    monkeypatch.setenv("TAPTTRACE_FOLLOW_LOADER", "bcc")
    with Lab(LabSpec()) as lab:
        f = Follow(lab.guest_mac, "--netns", lab.hv_ns, "--ip", lab.guest_ip)
        ping = lab.ping_guest_from_remote(count=3)
        journeys, summary, err = f.stop(until=pings_done(lab.guest_mac, 3, 3))
    assert ping.received == 3 and summary["lost_events"] == 0
    reqs = echoes(journeys)
    assert len(reqs) == 3 and all(j["verdict"] == "delivered" for j in reqs), [j["verdict"] for j in reqs]
    assert all([(h["event"], h["dev"]) for h in j["hops"]][-3:] == [
        ("received", lab.uplink), ("sent", lab.tap), ("read", lab.tap)] for j in reqs)
    assert "Traceback" not in err


def assert_dropped_by_the_host_stack(drop: dict) -> None:
    """A frame for the guest that the host's IP stack refused: its reason where the kernel gives
    drop reasons (5.17+), else the function that freed it (ip_rcv_core: not for this host;
    ip_error: no route, forwarding off), as the terminal's "dropped at …" says."""
    from tracer.features import probe_features

    if probe_features().kfree_skb_has_reason:
        assert drop["reason"] in ("OTHERHOST", "IP_INADDRERRORS"), drop
    else:
        assert drop["reason"] == "" and drop["location"].split("+")[0] in ("ip_rcv_core", "ip_error"), drop


def test_tap_carrying_the_guest_mac_sends_frames_to_the_host_stack_never_the_tap():
    with Lab(LabSpec(tap_mac="guest")) as lab:
        f = Follow(lab.guest_mac, "--netns", lab.hv_ns, "--ip", lab.guest_ip)
        remote = lab.ping_guest_from_remote(count=3, timeout=0.3)  # dropped on br0: no answer will come
        host = lab.ping_guest_from_host(count=2)
        journeys, _, _ = f.stop(until=lambda js: len(from_uplink(lab, js)) >= 3 and len(requests(js)) >= 5)
    assert remote.received == 0 and host.received == 2
    from_remote = from_uplink(lab, journeys)
    assert len(from_remote) == 3
    inside = bridge_hops_here()
    for j in from_remote:
        assert j["verdict"] == "dropped"
        assert [h["event"] for h in j["hops"]][-2:] == ["passed-up", "dropped"]
        if inside:  # the bridge's own hops: its FDB holds the guest's MAC as the tap's own address
            assert (j["fdb"], j["fdb_local"]) == ("local", lab.tap), j
            assert "to-host" in [h["event"] for h in j["hops"]]
        assert_dropped_by_the_host_stack(j["drop"])
        assert j["drop"]["location"].startswith(("ip_rcv_core", "ip_error"))
        assert not any(h["dev"] == lab.tap for h in j["hops"])
        assert j["note"] == f"never reached {lab.tap}"


def test_guest_that_never_answers_arp_leaves_its_arp_requests_behind():
    with Lab(LabSpec(guest_answers_arp=False)) as lab:
        f = Follow(lab.guest_mac, "--netns", lab.hv_ns, "--ip", lab.guest_ip)
        sent_before = tx_packets(lab, lab.remote_ns, lab.remote_dev)
        ping = lab.ping_guest_from_remote(count=1, timeout=0.3)
        # The kernel asks again after ping has given up (mcast_solicit, a second apart) until it
        # declares the address unreachable: then it has sent its last ARP request, and the remote
        # (IPv6 off, no IGMP) sent nothing else: follow must have written that many.
        wait_until(lambda: "FAILED" in neighbour_state(lab, lab.remote_ns, lab.remote_dev, lab.guest_ip),
                   "the remote to give up resolving the guest")
        asked = tx_packets(lab, lab.remote_ns, lab.remote_dev) - sent_before
        journeys, _, _ = f.stop(until=lambda js: len(arp_requests(lab, js)) >= asked, what=f"{asked} ARP requests")
    assert ping.received == 0
    arps = arp_requests(lab, journeys)
    assert len(arps) == asked
    assert arps, [j["summary"] for j in journeys]
    for j in arps:
        assert j["toward_guest"] and j["dst_mac"] == "ff:ff:ff:ff:ff:ff"
        assert any(c["outcome"] == "delivered" and c["dev"] == lab.tap for c in j["copies"])


def test_learned_address_pulls_in_arp_requests_without_ip_flag():
    with Lab(LabSpec()) as lab:
        f = Follow(lab.guest_mac, "--netns", lab.hv_ns)
        lab.ping_guest_from_remote(count=1)  # the guest's ARP reply teaches its address
        lab.run(lab.remote_ns, "ip", "neigh", "flush", "dev", lab.remote_dev)
        lab.ping_guest_from_remote(count=1)
        journeys, summary, _ = f.stop(until=lambda js: pings_done(lab.guest_mac, 2, 2)(js) and arp_requests(lab, js))
    assert lab.guest_ip in summary["learned_ips"]
    assert any(j["summary"].startswith(f"ARP who-has {lab.guest_ip}") for j in journeys)


def test_the_kernel_learns_the_guests_address_without_waiting_for_user_space(monkeypatch):
    """libbpf loader: the guest's own frame puts its address into the kernel's watch list at once.
    follow's process is stopped (SIGSTOP) in between, so only the kernel can have learned it."""
    monkeypatch.setenv("TAPTTRACE_FOLLOW_LOADER", "libbpf")
    with Lab(LabSpec()) as lab:
        f = Follow(lab.guest_mac, "--netns", lab.hv_ns)
        f.proc.send_signal(signal.SIGSTOP)
        try:
            lab.ping_guest_from_remote(count=1)  # the guest's ARP reply carries its address
            lab.run(lab.remote_ns, "ip", "neigh", "flush", "dev", lab.remote_dev)
            lab.ping_guest_from_remote(count=1)  # a broadcast ARP request for that address
        finally:
            f.proc.send_signal(signal.SIGCONT)
        journeys, summary, _ = f.stop(until=lambda js: pings_done(lab.guest_mac, 2, 2)(js) and arp_requests(lab, js))
    assert lab.guest_ip in summary["learned_ips"]
    asks = [j for j in journeys if j["summary"].startswith(f"ARP who-has {lab.guest_ip}")]
    assert len(asks) == 1  # the second one: the first came before anyone knew the address


def test_veth_crossing_between_namespaces_is_one_journey():
    with Lab(LabSpec()) as lab:
        f = Follow(lab.guest_mac, "--netns", lab.hv_ns, "--ip", lab.guest_ip)
        lab.ping_guest_from_remote(count=2)
        journeys, _, _ = f.stop(until=pings_done(lab.guest_mac, 2, 2))
    for j in echoes(journeys):
        namespaces = [h["netns"] for h in j["hops"]]
        assert namespaces[0] == lab.remote_ns and lab.hv_ns in namespaces
    assert len(echoes(journeys)) == 2  # not four


def test_pcap_is_readable_by_tcpdump(tmp_path):
    pcap = tmp_path / "frames.pcap"
    with Lab(LabSpec()) as lab:
        f = Follow(lab.guest_mac, "--netns", lab.hv_ns, "--ip", lab.guest_ip, "--pcap", str(pcap))
        lab.ping_guest_from_remote(count=2)
        journeys, _, _ = f.stop(until=pings_done(lab.guest_mac, 2, 2))
    out = subprocess.run(["tcpdump", "-nn", "-e", "-r", str(pcap)], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == len(journeys)
    assert sum(f"{lab.remote_ip} > {lab.guest_ip}: ICMP echo request" in line for line in lines) == 2


@pytest.mark.parametrize("how", ["count", "duration", "sigint", "sigterm", "error"])
def test_no_program_remains_after_any_ending(how):
    with Lab(LabSpec()) as lab:
        args = tapttrace("follow", "--json", lab.guest_mac, "--ip", lab.guest_ip)
        if how == "count":
            args += ["--count", "1"]
        elif how == "duration":
            args += ["--duration", "1.5"]
        elif how == "error":
            args += ["--pcap", "/nonexistent-dir/x.pcap"]
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err_lines: list[str] = []
        readers = [read_lines(proc.stderr, err_lines)]
        if how != "error":
            wait_ready(proc, err_lines, "follow")
            seen = our_programs(proc.pid)
            assert seen, "follow never attached"
            lab.ping_guest_from_remote(count=2)
            if how in ("sigint", "sigterm"):
                proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
        try:
            out = proc.stdout.read()  # until follow ends (by its count, duration, signal or error)
            proc.wait(timeout=WAIT)
            for t in readers:
                t.join(WAIT)
            err = "".join(err_lines)
        finally:
            if proc.poll() is None:
                proc.kill()
        if how == "error":
            assert proc.returncode != 0 and err.count("\n") == 1 and err.startswith("tapttrace: ")
        else:
            assert proc.returncode == 0, err
            assert '"tapttrace.summary/1"' in out
            assert not seen & loaded_programs()


@pytest.mark.parametrize("args, needle", [
    (["follow", "52:54:00:zz:00:01"], "is not a MAC address"),
    (["follow", "52:54:00:00:00:01", "--ip", "198.51.100.300"], "is not an IPv4 or IPv6 address"),
    (["follow", "52:54:00:00:00:01", "--count", "0"], "--count"),
])
def test_bad_input_is_one_clear_line(args, needle):
    p = subprocess.run(tapttrace(*args), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert needle in p.stderr and p.stderr.count("\n") == 1


def test_not_root_is_refused_with_the_fix():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *tapttrace(
        "follow", "52:54:00:00:00:01")], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert p.returncode == 3 and "root" in p.stderr and p.stderr.count("\n") == 1


def test_unknown_namespace_is_one_clear_line():
    p = subprocess.run(tapttrace("follow", "52:54:00:00:00:01", "--netns", "tt-no-such-ns"), cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown network namespace" in p.stderr and p.stderr.count("\n") == 1


def test_no_btf_names_the_kernel_option(tmp_path):
    p = subprocess.run(tapttrace("follow", "52:54:00:00:00:01"), cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env={**os.environ, "TAPTTRACE_SYSFS": str(tmp_path)})
    assert p.returncode == 3 and p.stderr.count("\n") == 1
    assert "no BTF" in p.stderr and "CONFIG_DEBUG_INFO_BTF" in p.stderr


def test_no_tracefs_names_the_mount_command(tmp_path):
    (tmp_path / "kernel" / "btf").mkdir(parents=True)
    (tmp_path / "kernel" / "btf" / "vmlinux").symlink_to("/sys/kernel/btf/vmlinux")
    p = subprocess.run(tapttrace("follow", "52:54:00:00:00:01"), cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env={**os.environ, "TAPTTRACE_SYSFS": str(tmp_path)})
    assert p.returncode == 3 and p.stderr.count("\n") == 1
    assert "tracefs" in p.stderr and "mount -t tracefs" in p.stderr


def _doctor_line(item: str, env: dict[str, str]) -> dict:
    p = subprocess.run(tapttrace("doctor", "--json"), cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, **env})
    assert p.returncode == 0, p.stderr
    (line,) = [x for x in json.loads(p.stdout) if x["item"] == item]
    return line


def test_doctor_loads_both_programs_through_the_chain():
    """doctor proves the chain on this kernel: each program it reports was loaded (verifier
    included) by the loader features chose, then closed."""
    line = _doctor_line("follow program", {})
    assert line["ok"], line
    assert line["detail"] == "bpf/follow.c loaded by libbpf: the verifier accepted it"
    line = _doctor_line("exporter program", {})
    assert line["ok"], line
    assert line["detail"] == "bpf/exporter.c loaded by libbpf: the verifier accepted it"


def test_doctor_says_why_libbpf_failed_and_that_bcc_took_over(tmp_path):
    """An object libbpf can't load (here: a damaged cache file under the object's own name) →
    doctor names libbpf's error and the fallback taken; bcc loads the same source."""
    from tracer.libbpf_loader import object_path

    damaged = object_path(cache=tmp_path)
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_bytes(b"not an ELF object\n")
    line = _doctor_line("follow program", {"TAPTTRACE_BPF_CACHE": str(tmp_path)})
    assert line["ok"], line
    assert "libbpf could not load bpf/follow.c" in line["detail"] and "not a proper ELF object" in line["detail"]
    assert line["detail"].endswith("bcc loaded it")
