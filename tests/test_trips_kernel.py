"""Journeys stitched in the kernel (bpf/follow.c's trips, tracer/trips.py) on the real kernel.

Two `tapttrace follow` processes watch the same lab traffic side by side: one with trips (the
default), one with every hop sent as its own event (TAPTTRACE_FOLLOW_TRIPS=off). They must write
the same journeys, in the cases trips are made for and in those they must step aside for: flood
clones, a packet socket cloning frames on the tap (tcpdump), frames stuck in the queue of a guest
that stopped reading.
"""
from __future__ import annotations

import json
import select
import signal
import subprocess
import time

import pytest
from test_follow_kernel import WAIT, Follow, follow_pair, hops_by_copy, pings_done, programs_gone  # noqa: E402  # noqa: E402

from tracer.features import FOLLOW_LOADER_ENV
from tracer.lab import Lab, LabSpec
from tracer.libbpf_loader import TRIPS_ENV

pytestmark = pytest.mark.kernel


def _side_by_side(lab: Lab, monkeypatch) -> tuple[Follow, Follow]:
    args = (lab.guest_mac, "--netns", lab.hv_ns, "--ip", lab.guest_ip)
    events, trips = follow_pair(args, monkeypatch, {FOLLOW_LOADER_ENV: "libbpf", TRIPS_ENV: "off"}, {TRIPS_ENV: "on"})
    return trips, events


def _words(journeys: list[dict]) -> list[tuple]:
    return sorted((j["summary"], j["verdict"], hops_by_copy(j),
                   tuple(sorted((c["outcome"], c["dev"]) for c in j["copies"])), j["toward_guest"], j["note"],
                   (j.get("drop") or {}).get("reason"), tuple((j.get("flood") or {}).get("ports", [])))
                  for j in journeys)


def _compare(trips: Follow, events: Follow, until, what: str) -> tuple[list[dict], dict, dict]:
    """Once both have written what `until` names (the traffic is over in the kernel and both read
    it), stop both: they saw the same events."""
    for follow in (trips, events):
        follow.wait_for(until, what)
    for follow in (trips, events):
        follow.proc.send_signal(signal.SIGTERM)
    with_trips, trip_summary, _ = trips.stop(sig=None)
    with_events, event_summary, _ = events.stop(sig=None)
    assert trip_summary["lost_events"] == event_summary["lost_events"] == 0
    assert event_summary["kernel_stitched"] == 0
    assert _words(with_trips) == _words(with_events)
    assert trip_summary["events"] == event_summary["events"]
    assert trip_summary["verdicts"] == event_summary["verdicts"]
    return with_trips, trip_summary, event_summary


# Frames as a wire brings them: built by hand and sent through an AF_PACKET socket in the remote
# namespace (a local stack's frames are often clones: ping's are, and stay events).
SEND_FRAMES = """
import socket, sys
dev, dst, src, count = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
for i in range(count):
    s.send(dst + src + bytes.fromhex("88b5") + i.to_bytes(4, "big") * 12)  # local experimental ethertype
"""
WIRE_MAC = "02:00:00:00:7e:01"


def wire(journeys: list[dict]) -> list[dict]:
    return [j for j in journeys if j["src_mac"] == WIRE_MAC]


def queued(journeys: list[dict]) -> list[dict]:
    return [j for j in journeys if j["verdict"] == "queued"]


def replies(lab: Lab, journeys: list[dict]) -> list[dict]:
    return [j for j in journeys if j["summary"].startswith("ICMP echo reply") and j["src_mac"] == lab.guest_mac]


def send_frames(lab: Lab, count: int) -> None:
    lab.run(lab.remote_ns, "python3", "-c", SEND_FRAMES, lab.remote_dev, lab.guest_mac.replace(":", ""),
            WIRE_MAC.replace(":", ""), str(count))


def test_frames_are_stitched_in_the_kernel_and_read_as_the_events_do(monkeypatch):
    with Lab(LabSpec()) as lab:
        trips, events = _side_by_side(lab, monkeypatch)
        send_frames(lab, 50)
        lab.ping_guest_from_remote(count=2)
        lab.ping_guest_from_host(count=2)
        journeys, summary, _ = _compare(
            trips, events, lambda js: len(wire(js)) >= 50 and pings_done(lab.guest_mac, 4, 4)(js),
            "50 frames from the wire and 4 pings")
    assert len(wire(journeys)) == 50 and all(j["verdict"] == "delivered" for j in wire(journeys))
    echoes = [j for j in journeys if j["summary"].startswith("ICMP echo ") and "reply" not in j["summary"]]
    assert len(echoes) == 4 and all(j["verdict"] == "delivered" for j in echoes)
    # The wire's frames and the host's echo requests come whole from the kernel once the guest
    # has read them (a frame it leaves in the tap's queue for long is swept out and stitched from
    # its events: how many depends on the load); the remote's broadcast ARP was flooded (cloned)
    # and went as events, like ping's own (cloned) frames.
    assert summary["kernel_stitched"] > 0
    assert any(j["verdict"] == "flooded" for j in journeys)


def test_a_packet_socket_on_the_tap_clones_frames_and_trips_step_aside(monkeypatch):
    with Lab(LabSpec()) as lab:
        trips, events = _side_by_side(lab, monkeypatch)
        sniffer = subprocess.Popen(["ip", "netns", "exec", lab.hv_ns, "tcpdump", "-i", "vnet0", "-nn", "-c", "1000",
                                    "-w", "/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            # tcpdump says "listening on vnet0" once its packet socket is open and bound
            ready = select.select([sniffer.stderr], [], [], WAIT)[0] and "listening on" in sniffer.stderr.readline()
            assert ready, "tcpdump did not start listening"
            lab.ping_guest_from_remote(count=4)
            journeys, summary, _ = _compare(trips, events, pings_done(lab.guest_mac, 4, 4), "4 pings")
        finally:
            sniffer.terminate()
            sniffer.wait(WAIT)
            sniffer.stderr.close()
    echoes = [j for j in journeys if j["summary"].startswith("ICMP echo ") and "reply" not in j["summary"]]
    assert len(echoes) == 4 and all(j["verdict"] == "delivered" for j in echoes)


def test_frames_stuck_in_a_stopped_guests_queue_show_as_queued_then_late(monkeypatch):
    """Trips the kernel holds for frames that sit in the tap are swept out to user space, so the
    journeys still end as "queued" after the stitcher's idle time, as with events."""
    with Lab(LabSpec()) as lab:
        lab.ping_guest_from_remote(count=1)  # ARP settled before the guest stops
        trips, events = _side_by_side(lab, monkeypatch)
        lab.pause_guest()
        try:
            lab.ping_guest_from_remote(count=3, timeout=0.3)
            for follow in (trips, events):  # reported once the stitcher's idle time has passed
                follow.wait_for(lambda js: len(queued(js)) >= 3, "3 journeys reported as queued")
        finally:
            lab.resume_guest()
        # The guest now reads the three and answers each: its replies' journeys are written after
        # its reads (the late events) were taken.
        journeys, summary, event_summary = _compare(
            trips, events, lambda js: len(queued(js)) >= 3 and len(replies(lab, js)) >= 3,
            "the woken guest's 3 replies")
    assert len(queued(journeys)) == 3
    assert summary["late_events"] == event_summary["late_events"] == 3  # read once the guest woke up


def test_stopped_in_the_middle_of_a_burst_every_line_written_is_whole():
    """SIGTERM while follow writes thousands of lines into a pipe: CPython's buffered writer lost
    the rest of a large write that the signal cut short (strace showed it); follow now writes
    every byte itself."""
    with Lab(LabSpec()) as lab:
        for _ in range(3):
            follow = Follow(lab.guest_mac, "--netns", lab.hv_ns, "--ip", lab.guest_ip)
            send_frames(lab, 3000)
            # While the journeys are being written: the first is in the pipe, which nobody reads
            # yet, so follow soon blocks writing the rest (a pipe holds 64 KiB).
            assert select.select([follow.proc.stdout], [], [], WAIT)[0], "follow wrote nothing"
            follow.proc.send_signal(signal.SIGTERM)
            out, err = follow.proc.communicate(timeout=WAIT)
            assert follow.proc.returncode == 0, err
            lines = [json.loads(line) for line in out.splitlines()]  # each one whole
            summary = lines[-1]
            assert summary["schema"] == "tapttrace.summary/1"
            written = [x for x in lines if x["schema"] == "tapttrace.journey/1"]
            assert len(written) == summary["journeys"] > 0  # how many were written before the signal is the load's
            assert len({j["id"] for j in written}) == len(written)


def test_two_sigterms_in_a_row_still_detach_and_exit():
    """The second signal used to deadlock the first one's handler (tests/test_signals.py)."""
    with Lab(LabSpec()) as lab:
        for _ in range(3):
            follow = Follow(lab.guest_mac, "--netns", lab.hv_ns, "--ip", lab.guest_ip)
            send_frames(lab, 2000)
            follow.proc.send_signal(signal.SIGTERM)
            follow.proc.send_signal(signal.SIGTERM)
            out, err = follow.proc.communicate(timeout=WAIT)
            assert follow.proc.returncode == 0, err
            summary = json.loads(out.splitlines()[-1])
            assert summary["stopped_by"] == "signal"
            assert programs_gone(follow.programs)


# A MAC that only test_every_frame_is_accounted_for_when_follow_is_behind's frames concern: the
# bridge sends it to the tap by a static FDB entry, and the guest reads every frame on its tap.
COUNTED_MAC = "02:00:00:00:7e:99"
COUNTED_FRAMES = 12_000  # over twice what half of follow's 4 MiB ring holds as trips (≈ 4 800)
BURST = 200  # frames sent before waiting for the guest to have read them (no tap queue overflow)


def _tap_read(lab: Lab) -> int:
    """Frames the guest has read from its tap (tun counts tx_packets as it copies one to the reader)."""
    return int(lab.hv("cat", f"/sys/class/net/{lab.tap}/statistics/tx_packets").stdout)


def test_every_frame_is_accounted_for_when_follow_is_behind():
    """Follow can't show every journey at any rate; its summary must still account for every frame.
    The collector is stopped (SIGSTOP) while 12 000 frames cross the bridge to the guest, so the ring
    fills whatever the machine's speed: with trips the kernel shows what fits in half the ring and
    counts every other whole journey by its path; the summary says every frame's verdict, and every
    journey written is whole. Without BPF atomics (5.10: no trips) the loss is counted instead."""
    from tracer.runtime import machine_features

    trips_on = machine_features().bpf_atomics.ok
    with Lab(LabSpec()) as lab:
        lab.hv("bridge", "fdb", "add", COUNTED_MAC, "dev", lab.tap, "master", "static")
        lab.ping_guest_from_remote(count=1)  # the guest answers (a ping's reply is the reads' marker below)
        # Its window ends on its own once the collector runs again: every frame is in the kernel's
        # hands before then (SIGCONT comes after the guest read them all), and a window's end, unlike
        # a signal's, gives follow all the time it needs for its backlog.
        follow = Follow(COUNTED_MAC, "--netns", lab.hv_ns, "--duration", "10")
        follow.proc.send_signal(signal.SIGSTOP)
        try:
            start = _tap_read(lab)
            for sent in range(BURST, COUNTED_FRAMES + 1, BURST):
                lab.run(lab.remote_ns, "python3", "-c", SEND_FRAMES, lab.remote_dev,
                        COUNTED_MAC.replace(":", ""), WIRE_MAC.replace(":", ""), str(BURST))
                deadline = time.monotonic() + WAIT
                while _tap_read(lab) - start < sent:
                    assert time.monotonic() < deadline, f"the guest read {_tap_read(lab) - start} of {sent} frames"
                    time.sleep(0.01)
            # The guest reads its tap in order: once it has answered a ping sent after the frames, it
            # has read (and the kernel freed) every one of them.
            assert lab.ping_guest_from_remote(count=1).received == 1
            dropped = int(lab.hv("cat", f"/sys/class/net/{lab.tap}/statistics/tx_dropped").stdout)
        finally:
            follow.proc.send_signal(signal.SIGCONT)
        journeys, summary, err = follow.stop(sig=None)
    assert dropped == 0
    assert summary["stopped_by"] == "duration"
    if trips_on:
        # whole: every one from the remote's eth0 to the guest's read of vnet0, the same hops (the
        # bridge's own among them where fentry reaches them)
        paths = {tuple((h["event"], h["dev"]) for h in j["hops"]) for j in journeys}
        assert len(paths) == 1 and all(j["verdict"] == "delivered" for j in journeys), paths
        (path,) = paths
        assert path[0][1] == "eth0" and path[-1] == ("read", "vnet0"), path
        assert summary["frames"] == COUNTED_FRAMES
        assert summary["frame_verdicts"] == {"delivered": COUNTED_FRAMES}
        assert summary["counted_in_kernel"] == COUNTED_FRAMES - len(journeys) > 0
        assert summary["journeys"] == len(journeys) > 0
        assert summary["lost_events"] == 0
        assert "the kernel counts the rest by path" in err
    else:
        assert summary["counted_in_kernel"] == 0
        assert summary["lost_events"] > 0 and len(journeys) < COUNTED_FRAMES
