"""The exporter's counts on the real kernel, against lab scenarios with a known number of frames
of each fate. Remote pings go to a guest whose MAC the remote knows statically, so the only frames
on the lab's bridge are N echo requests and (when the guest answers) N echo replies."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Optional

import pytest
from test_exporter_common import exporter, scrape, total
from test_follow_kernel import ROOT, WAIT, Follow, our_programs, pings_done

from tracer.exporter.collector import Filters
from tracer.lab import Lab, LabSpec

pytestmark = pytest.mark.kernel
N = 5
K = 3  # frames of each kind sent by hand


@pytest.fixture(scope="module")
def features():
    from tracer.features import require
    from tracer.runtime import machine_features

    f = machine_features()
    require(f, f.exporter_loader)
    return f


@pytest.fixture(scope="module")
def collector(features):
    with exporter(features) as c:
        yield c


def static_neighbour(lab: Lab) -> None:
    """No ARP: the remote knows the guest's MAC, so every frame is an echo request or reply."""
    lab.run(lab.remote_ns, "ip", "neigh", "replace", lab.guest_ip, "lladdr", lab.guest_mac, "dev",
            lab.remote_dev, "nud", "permanent")


def watch(collector, lab: Lab) -> None:
    """Count only the lab's namespace: other runs on a shared machine (a benchmark's hundreds of
    taps) must neither fill the kernel's maps nor the series cap before the lab's frames come."""
    collector.filters = Filters(netns=frozenset({lab.hv_ns}))
    collector.refresh()


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def scrape_once(collector, counted) -> dict:
    """A scrape once counted(scrape) holds (up to WAIT): ping returns once its probes are out and
    their answers are in, but a frame it sent may still be on its way through the bridge (a
    softirq's backlog) when nothing answers it. The counts are then asserted exactly."""
    deadline = time.monotonic() + WAIT
    while True:
        samples = scrape(collector)
        if counted(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_delivered_and_forwarded_pings_are_counted_exactly(collector):
    with Lab(LabSpec()) as lab:
        static_neighbour(lab)
        watch(collector, lab)
        before = scrape(collector)
        assert lab.ping_guest_from_remote(count=N).received == N
        after = scrape(collector)
        ns = {"netns": lab.hv_ns, "bridge": "br0"}
        assert delta(before, after, "tapttrace_frames_total", **ns, in_port="up0", out_port="vnet0",
                     verdict="delivered") == N
        assert delta(before, after, "tapttrace_frames_total", **ns, in_port="vnet0", out_port="up0",
                     verdict="forwarded") == N
        assert delta(before, after, "tapttrace_frames_total", **ns, in_port="up0") == N
        assert delta(before, after, "tapttrace_frames_total", **ns, in_port="vnet0") == N
        # The host itself may announce something through br0 meanwhile (flooded to vnet0 too).
        from_host = delta(before, after, "tapttrace_frames_total", **ns, in_port="br0")
        tap = {"netns": lab.hv_ns, "tap": "vnet0"}
        assert delta(before, after, "tapttrace_tap_frames_total", **tap, event="queued") == N + from_host
        assert delta(before, after, "tapttrace_tap_frames_total", **tap, event="delivered") == N + from_host
        # The bridge learned MACs as the traffic began.
        assert total(after, "tapttrace_fdb_events_total", netns=lab.hv_ns, bridge="br0", event="learned") >= 1


def send_frames(lab: Lab, dst_mac: str, count: int) -> None:
    """`count` frames from the remote to dst_mac, of an experimental EtherType (0x88b5: nothing
    answers them, nothing else is sent), through a packet socket."""
    send_88b5(lab, lab.remote_ns, lab.remote_dev, dst_mac, count)


def send_88b5(lab: Lab, ns: str, dev: str, dst_mac: str, count: int) -> None:
    """`count` frames of EtherType 0x88b5 to dst_mac out of dev in ns, through a packet socket."""
    code = ("import socket, sys\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
            "s.bind((sys.argv[1], 0))\n"
            "frame = bytes.fromhex(sys.argv[2]) + s.getsockname()[4] + bytes.fromhex('88b5') + bytes(46)\n"
            "for _ in range(int(sys.argv[3])):\n"
            "    s.send(frame)\n")
    lab.run(ns, sys.executable, "-c", code, dev, dst_mac.replace(":", ""), str(count))


DECISIONS = "tapttrace_fdb_decisions_total"
BROADCAST, MULTICAST, UNKNOWN = "ff:ff:ff:ff:ff:ff", "01:00:5e:7f:00:01", "02:00:00:00:99:99"


def test_fdb_decisions_are_counted_once_where_the_bridge_makes_them(features, capfd):
    """tapttrace_fdb_decisions_total, counted at br_forward, br_flood and br_pass_frame_up where
    fentry or kprobes reach them: N pings each way are N forwards to the port the FDB names;
    broadcast, multicast and unknown-unicast frames are floods of that pkt_type, whose host copy
    (br_pass_frame_up after br_flood) is no local decision; a tap carrying the guest's MAC makes
    the guest's frames local. Where the kernel allows neither (this machine) the family stays
    empty and the exporter says so once."""
    capfd.readouterr()
    with exporter(features) as collector:
        said = [line for line in capfd.readouterr().err.splitlines() if "no FDB decision counts" in line]
        hooks = getattr(collector.program, "decision_hooks", {})
        hooked = any(kind != "none" for kind in hooks.values())
        with Lab(LabSpec()) as lab:
            static_neighbour(lab)
            watch(collector, lab)
            before = scrape(collector)
            assert lab.ping_guest_from_remote(count=N).received == N
            for mac in (BROADCAST, MULTICAST, UNKNOWN):
                send_frames(lab, mac, K)
            ns = {"netns": lab.hv_ns, "bridge": "br0"}
            if not hooked:
                assert said[0].startswith("tapttrace: note: ") and len(said) == 1, said
                if features.bridge_hook == "none" and features.exporter_loader == "libbpf":
                    assert "this kernel allows neither fentry nor kprobes on the bridge's functions" in said[0]
                # Every frame got its verdict from the tracepoints (an unknown unicast flooded to the
                # tap alone reads "delivered" there: what the decisions tell apart); no decision counted.
                after = scrape_once(collector, lambda now: delta(before, now, "tapttrace_frames_total", **ns,
                                                                 in_port="up0") >= N + 3 * K)
                assert delta(before, after, "tapttrace_frames_total", **ns, in_port="up0") == N + 3 * K
                assert not [k for k in after if k[0] == DECISIONS]
                return
            assert said == [], said

            def d(now, **labels):
                return delta(before, now, DECISIONS, **ns, **labels)

            want = {(("in_port", "up0"), ("decision", "forward"), ("pkt_type", "unicast"), ("out_port", "vnet0")): N,
                    (("in_port", "vnet0"), ("decision", "forward"), ("pkt_type", "unicast"), ("out_port", "up0")): N,
                    (("in_port", "up0"), ("decision", "flood"), ("pkt_type", "broadcast"), ("out_port", "")): K,
                    (("in_port", "up0"), ("decision", "flood"), ("pkt_type", "multicast"), ("out_port", "")): K,
                    (("in_port", "up0"), ("decision", "flood"), ("pkt_type", "unicast"), ("out_port", "")): K}
            after = scrape_once(collector, lambda now: all(d(now, **dict(k)) >= v for k, v in want.items()))
            assert {k: d(after, **dict(k)) for k in want} == want, hooks
            # The host's copies of the floods (br_pass_frame_up after br_flood) are no local decision.
            assert d(after, in_port="up0", decision="local") == 0
            assert d(after, in_port="vnet0") == N  # the echo replies, nothing else
        with Lab(LabSpec(tap_mac="guest")) as lab:
            static_neighbour(lab)
            watch(collector, lab)
            before = scrape(collector)
            lab.ping_guest_from_remote(count=N, timeout=0.2)
            ns = {"netns": lab.hv_ns, "bridge": "br0"}
            after = scrape_once(collector, lambda now: d(now, in_port="up0", decision="local") >= N)
            assert d(after, in_port="up0", decision="local", pkt_type="unicast", out_port="br0") == N
            assert d(after, in_port="up0") == N  # nothing forwarded or flooded


def test_verdicts_agree_with_follow(collector):
    with Lab(LabSpec()) as lab:
        watch(collector, lab)
        follow = Follow(lab.guest_mac, "--ip", lab.guest_ip, "--netns", lab.hv_ns)
        before = scrape(collector)
        lab.ping_guest_from_remote(count=N)
        lab.ping_guest_from_host(count=2)
        journeys, _, _ = follow.stop(until=pings_done(lab.guest_mac, N + 2, N + 2))
        after = scrape(collector)
    seen = Counter(j["verdict"] for j in journeys if j.get("bridge") == "br0")
    counted = Counter({v: int(delta(before, after, "tapttrace_frames_total", netns=lab.hv_ns, verdict=v))
                       for v in ("forwarded", "flooded", "local", "dropped", "delivered")})
    assert +counted == +seen


def test_netfilter_drops_on_the_tap_are_counted_with_their_reason(collector):
    with Lab(LabSpec()) as lab:
        static_neighbour(lab)
        lab.set_br_netfilter(True)
        lab.run(lab.hv_ns, "iptables", "-A", "FORWARD", "-p", "icmp", "-j", "DROP")
        watch(collector, lab)
        before = scrape(collector)
        assert lab.ping_guest_from_remote(count=N, timeout=0.2).received == 0
        after = scrape_once(collector, lambda now: delta(before, now, "tapttrace_frames_total", netns=lab.hv_ns,
                                                         in_port="up0", verdict="dropped") >= N)
    assert delta(before, after, "tapttrace_drops_total", netns=lab.hv_ns, dev="vnet0", reason="NETFILTER_DROP") == N
    assert delta(before, after, "tapttrace_frames_total", netns=lab.hv_ns, in_port="up0", verdict="dropped") == N


def test_tap_carrying_the_guest_mac_counts_local_consumption(collector):
    with Lab(LabSpec(tap_mac="guest")) as lab:
        static_neighbour(lab)
        watch(collector, lab)
        before = scrape(collector)
        lab.ping_guest_from_remote(count=N, timeout=0.2)
        after = scrape_once(collector, lambda now: delta(before, now, "tapttrace_tap_frames_total", netns=lab.hv_ns,
                                                         tap="vnet0", event="local") >= N)
    assert delta(before, after, "tapttrace_frames_total", netns=lab.hv_ns, in_port="up0", out_port="br0",
                 verdict="local") == N
    assert delta(before, after, "tapttrace_tap_frames_total", netns=lab.hv_ns, tap="vnet0", event="local") == N
    # Nothing from the remote reached the tap; only what the host itself sent through br0 did.
    from_host = delta(before, after, "tapttrace_frames_total", netns=lab.hv_ns, in_port="br0")
    assert delta(before, after, "tapttrace_tap_frames_total", netns=lab.hv_ns, tap="vnet0", event="queued") == from_host


def test_guest_not_reading_shows_as_queue_full_drops(collector):
    with Lab(LabSpec()) as lab:
        static_neighbour(lab)
        lab.run(lab.hv_ns, "ip", "link", "set", "vnet0", "txqueuelen", "4")  # the tap's ring: 4 frames
        watch(collector, lab)
        lab.pause_guest()
        before = scrape(collector)
        lab.ping(lab.remote_ns, lab.guest_ip, count=10, interval=0.01, timeout=0.1, burst=True)
        tap = {"netns": lab.hv_ns, "tap": "vnet0"}
        paused = scrape_once(collector, lambda now: delta(before, now, "tapttrace_tap_frames_total", **tap,
                                                          event="queued") >= 10
                             and delta(before, now, "tapttrace_tap_drops_total", **tap, reason="FULL_RING") >= 6)
        assert delta(before, paused, "tapttrace_tap_frames_total", **tap, event="queued") == 10
        assert delta(before, paused, "tapttrace_tap_drops_total", **tap, reason="FULL_RING") == 6
        assert delta(before, paused, "tapttrace_frames_total", netns=lab.hv_ns, verdict="dropped") == 6
        assert delta(before, paused, "tapttrace_tap_frames_total", **tap, event="delivered") == 0


@contextmanager
def second_guest(lab: Lab):
    """vnet1, a second tap on br0 with its own stand-in guest (198.51.100.11, no announcement):
    floods then have two taps to copy to. The guest is stopped before the lab goes (it pins the
    namespace)."""
    mac = "52:54:00:00:0b:01"
    lab.hv("ip", "tuntap", "add", "dev", "vnet1", "mode", "tap")
    lab.hv("ip", "link", "set", "vnet1", "address", "fe:54:00:00:0b:01", "master", lab.bridge, "up")
    root = str(ROOT)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    g = subprocess.Popen(["ip", "netns", "exec", lab.hv_ns, sys.executable, "-m", "tracer.lab.guest", "--tap", "vnet1",
                          "--mac", mac, "--ip", "198.51.100.11", "--no-announce", "--exit-on-stdin-eof"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        assert g.stdout is not None and g.stdout.readline().strip() == "ready"
        yield mac
    finally:
        os.killpg(g.pid, signal.SIGKILL)
        g.communicate(timeout=10)


@contextmanager
def tcpdump_on(lab: Lab, dev: str):
    """tcpdump capturing on dev (both directions): a packet socket gets a copy of every frame the
    tap sends, freed on the tap as the frame is."""
    proc = subprocess.Popen(["ip", "netns", "exec", lab.hv_ns, "tcpdump", "-i", dev, "-w", "/dev/null", "-U"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and "listening on" in proc.stderr.readline()
        yield
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def send_frames_from_host(lab: Lab, dev: str, dst_mac: str, count: int) -> None:
    """`count` frames of EtherType 0x88b5 sent by the host straight out of dev (no bridge)."""
    send_88b5(lab, lab.hv_ns, dev, dst_mac, count)


@pytest.mark.skipif(not shutil.which("tcpdump") or not shutil.which("nft"), reason="needs tcpdump and nft")
def test_every_copy_on_a_tap_is_counted_once(collector):
    """The cases a frame's end on a tap must tell apart (bpf/exporter.c, tap_done): a frame's only
    copy bridged from a port while a packet socket (tcpdump) takes a copy of each; a flood's copies
    to two taps; a flood's copy dropped by netfilter after the bridge chose the tap, before it was
    queued there; frames the host sends on a tap itself. (Written for branch exporter-cost's
    design, where only copies carry no mark; it holds for main's too.)"""
    with Lab(LabSpec()) as lab, second_guest(lab):
        static_neighbour(lab)
        watch(collector, lab)
        ns = {"netns": lab.hv_ns, "bridge": "br0"}
        tap0, tap1 = {"netns": lab.hv_ns, "tap": "vnet0"}, {"netns": lab.hv_ns, "tap": "vnet1"}

        def tap(now, before, t, event):
            return delta(before, now, "tapttrace_tap_frames_total", **t, event=event)

        # Only copies, with tcpdump on the tap: each frame once, its copy for tcpdump never.
        before = scrape(collector)
        with tcpdump_on(lab, "vnet0"):
            assert lab.ping_guest_from_remote(count=N).received == N
        after = scrape_once(collector, lambda now: tap(now, before, tap0, "delivered") >= N)
        from_host = delta(before, after, "tapttrace_frames_total", **ns, in_port="br0")
        assert delta(before, after, "tapttrace_frames_total", **ns, in_port="up0", out_port="vnet0",
                     verdict="delivered") == N
        assert delta(before, after, "tapttrace_frames_total", **ns, in_port="up0") == N
        assert tap(after, before, tap0, "queued") == N + from_host
        assert tap(after, before, tap0, "delivered") == N + from_host

        # Floods to both taps (broadcast: the host's copy too; unknown unicast: the taps only).
        before = scrape(collector)
        send_frames(lab, BROADCAST, K)
        send_frames(lab, UNKNOWN, K)
        after = scrape_once(collector, lambda now: delta(before, now, "tapttrace_frames_total", **ns,
                                                         in_port="up0", verdict="flooded") >= 2 * K
                            and tap(now, before, tap1, "delivered") >= 2 * K
                            and tap(now, before, tap0, "delivered") >= 2 * K)
        from_host = delta(before, after, "tapttrace_frames_total", **ns, in_port="br0")
        assert delta(before, after, "tapttrace_frames_total", **ns, in_port="up0", verdict="flooded") == 2 * K
        assert delta(before, after, "tapttrace_frames_total", **ns, in_port="up0") == 2 * K
        for t in (tap0, tap1):
            assert tap(after, before, t, "queued") == 2 * K + from_host
            assert tap(after, before, t, "delivered") == 2 * K + from_host

        # A flood's copy for vnet1 dropped in the bridge's forward hook (skb->dev is vnet1 then).
        lab.hv("nft", "add table bridge hx_filter; add chain bridge hx_filter forward "
               "{ type filter hook forward priority 0; }; "
               "add rule bridge hx_filter forward oifname vnet1 ether type 0x88b5 drop")
        before = scrape(collector)
        send_frames(lab, BROADCAST, K)
        after = scrape_once(collector, lambda now: delta(before, now, "tapttrace_frames_total", **ns,
                                                         in_port="up0", verdict="flooded") >= K
                            and tap(now, before, tap0, "delivered") >= K
                            and delta(before, now, "tapttrace_drops_total", netns=lab.hv_ns, dev="vnet1") >= K)
        from_host = delta(before, after, "tapttrace_frames_total", **ns, in_port="br0")
        assert delta(before, after, "tapttrace_frames_total", **ns, in_port="up0", verdict="flooded") == K
        assert delta(before, after, "tapttrace_frames_total", **ns, in_port="up0") == K
        assert delta(before, after, "tapttrace_drops_total", netns=lab.hv_ns, dev="vnet1") == K
        assert tap(after, before, tap1, "queued") == from_host
        assert delta(before, after, "tapttrace_tap_drops_total", **tap1) == 0
        assert tap(after, before, tap0, "delivered") == K + from_host
        lab.hv("nft", "delete table bridge hx_filter")

        # The host sending on vnet0 itself: the tap's counts, no frame through the bridge.
        before = scrape(collector)
        send_frames_from_host(lab, "vnet0", lab.guest_mac, K)
        after = scrape_once(collector, lambda now: tap(now, before, tap0, "delivered") >= K)
        from_host = delta(before, after, "tapttrace_frames_total", **ns, in_port="br0")
        assert tap(after, before, tap0, "queued") == K + from_host
        assert tap(after, before, tap0, "delivered") == K + from_host
        assert delta(before, after, "tapttrace_frames_total", **ns) == from_host


def test_a_frame_segmented_for_the_tap_is_one_delivery(collector):
    """A GSO frame (UDP_SEGMENT: one skb of 3 datagrams from the remote) bridged to a tap that took
    no offloads is cut into 3 segments on its way into the tap: one frame, one verdict, counted
    when the bridge's skb ends (at segmentation); the segments the guest reads are not frames of
    their own."""
    with Lab(LabSpec()) as lab:
        static_neighbour(lab)
        watch(collector, lab)
        before = scrape(collector)
        code = ("import socket, sys\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "s.setsockopt(17, 103, 1000)\n"  # SOL_UDP, UDP_SEGMENT: 1000-byte datagrams
                "s.sendto(bytes(3000), (sys.argv[1], 9))\n")
        for _ in range(K):
            lab.run(lab.remote_ns, sys.executable, "-c", code, lab.guest_ip)
        # The guest reads its tap in order: once it has answered a ping sent after the segments,
        # it has read them all.
        assert lab.ping_guest_from_remote(count=1).received == 1
        ns = {"netns": lab.hv_ns, "bridge": "br0"}
        tap = {"netns": lab.hv_ns, "tap": "vnet0"}
        after = scrape_once(collector, lambda now: delta(before, now, "tapttrace_frames_total", **ns,
                                                         in_port="vnet0") >= 1)
        from_host = delta(before, after, "tapttrace_frames_total", **ns, in_port="br0")
        assert delta(before, after, "tapttrace_frames_total", **ns, in_port="up0", out_port="vnet0",
                     verdict="delivered") == K + 1
        assert delta(before, after, "tapttrace_frames_total", **ns, in_port="up0") == K + 1
        assert delta(before, after, "tapttrace_tap_frames_total", **tap, event="queued") == K + 1 + from_host
        assert delta(before, after, "tapttrace_tap_frames_total", **tap, event="delivered") == K + 1 + from_host


def test_vms_coming_and_going_leave_no_series_behind(collector):
    gone = []
    for _ in range(3):
        with Lab(LabSpec()) as lab:
            static_neighbour(lab)
            watch(collector, lab)
            lab.ping_guest_from_remote(count=1)
            assert total(scrape(collector), "tapttrace_frames_total", netns=lab.hv_ns) == 2
            gone.append(lab.hv_ns)
        for _ in range(collector.grace + 2):
            collector.refresh()
    left = [k for k in scrape(collector) if any(dict(k[1]).get("netns") in gone for _ in [0])]
    assert left == []
    assert total(scrape(collector), "tapttrace_decode_errors_total") == 0


@contextmanager
def exporter_process(env: Optional[dict] = None):
    """`python -m tracer.exporter` serving on a free port: yields the process once it serves, then
    stops it with SIGTERM, which must exit 0 with its programs detached (killed on any failure)."""
    proc = subprocess.Popen([sys.executable, "-m", "tracer.exporter", "--listen", "127.0.0.1:0"], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        while line.startswith("tapttrace: note: "):  # what this kernel lacks (the FDB decisions here)
            line = proc.stderr.readline()
        assert "serving" in line, line + proc.stderr.read()
        yield proc
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "programs detached" in err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_sigterm_detaches_every_program():
    with exporter_process() as proc:
        assert len(our_programs(proc.pid)) >= 6



def test_a_refresh_still_reading_the_maps_when_the_exporter_stops_finishes_first(monkeypatch):
    """Found as a refresher-thread traceback at an exporter's SIGTERM under load: the program
    closed while a refresh was reading its maps (EBADF). The session now stops and joins the
    refresher before it closes the program. Here a refresh is held inside its map read while
    the session ends."""
    from tracer.exporter.service import ExporterConfig, exporter_session

    failures = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    reading = threading.Event()
    with exporter_session(ExporterConfig(refresh_seconds=0.01), serve=False) as session:
        read = session.program.read

        def slow_read():
            if threading.current_thread().name == "tapttrace-refresh":
                reading.set()
                time.sleep(0.3)
            return read()

        session.program.read = slow_read
        assert reading.wait(5)
    for t in threading.enumerate():
        if t.name == "tapttrace-refresh":
            t.join(5)  # (with the fix it has ended already)
    assert failures == []
    assert session.collector.refresh_errors == 0
