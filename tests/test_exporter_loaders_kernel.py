"""The exporter's libbpf path (bpf/exporter_btf.c, tracer/exporter/program_btf.py) on the real
kernel: every program passes the verifier, attaches and detaches, the process never maps bcc,
and it counts the lab's traffic exactly as the bcc path (bpf/exporter.c) does: both are loaded
side by side and see the same frames."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from tracer import libbpf_loader
from tracer.errors import KernelError
from tracer.exporter import program_btf
from tracer.exporter.collector import ExporterCollector
from tracer.exporter.program import ExporterProgram
from tracer.exporter.program_btf import FDB_PROGRAMS, PROGRAMS, LibbpfExporterProgram
from tracer.exporter.service import kernel_namer, machine_inventory
from tracer.features import EXPORTER_LOADER_ENV, probe_features
from tracer.lab import Lab, LabSpec

from test_exporter_common import scrape
from test_exporter_kernel import exporter_process, static_neighbour, watch
from test_follow_kernel import WAIT, our_programs, programs_gone

pytestmark = pytest.mark.kernel

ALL = set(PROGRAMS) | set(FDB_PROGRAMS.values())
FAMILIES = ("tapttrace_frames_total", "tapttrace_drops_total", "tapttrace_tap_frames_total",
            "tapttrace_tap_drops_total", "tapttrace_fdb_events_total")


def test_this_machine_chooses_libbpf_for_the_exporter():
    f = probe_features()
    assert f.tp_btf.ok, f.tp_btf.detail
    if os.environ.get(EXPORTER_LOADER_ENV, "auto") in ("", "auto", "libbpf"):
        assert f.exporter_loader == "libbpf", f.exporter_loader_why


def test_every_program_passes_the_verifier():
    with LibbpfExporterProgram(probe_features(), attach=False) as prog:
        assert prog.loaded_programs() == ALL
        assert prog.attached == 0 and not prog.notes


def test_programs_attach_and_detach_on_close():
    before = our_programs(os.getpid())
    with LibbpfExporterProgram(probe_features()) as prog:
        assert prog.attached == 6
        ours = our_programs(os.getpid()) - before
        assert len(ours) == 6
        assert prog.read().health == {"counter_map_full": 0, "frame_table_full": 0}
    assert our_programs(os.getpid()) == before
    assert programs_gone(ours)


def test_kernels_without_a_drop_reason_load():
    """.rodata rules out ctx[2] where kfree_skb has no reason argument (before 5.17)."""
    f = dataclasses.replace(probe_features(), kfree_skb_reason_arg=None)
    with LibbpfExporterProgram(f, attach=False) as prog:
        assert prog.loaded_programs() == ALL


def test_object_for_kernels_without_bpf_rdonly_cast_loads(tmp_path, monkeypatch):
    """Before 6.2 a clone's original skb->head is read with bpf_probe_read_kernel: that build must load too."""
    monkeypatch.setattr(libbpf_loader, "kernel_defines", lambda btf=None: [])
    obj = libbpf_loader.build_object(cache=tmp_path, source="exporter_btf.c")
    assert obj.parent == tmp_path and obj.name.startswith("exporter_btf-")
    with LibbpfExporterProgram(probe_features(), obj_path=obj, attach=False) as prog:
        assert prog.loaded_programs() == ALL


def test_without_bridge_tracepoints_the_fdb_programs_stay_out_with_a_note():
    """Bridge built as a module and not loaded: no bridge tracepoints, the frame counts go on."""
    f = probe_features()
    tps = {name: dataclasses.replace(tp, present=False) if name in FDB_PROGRAMS else tp
           for name, tp in f.tracepoints.items()}
    with LibbpfExporterProgram(dataclasses.replace(f, tracepoints=tps)) as prog:
        assert prog.attached == 4 and prog.loaded_programs() == set(PROGRAMS)
        assert len(prog.notes) == 2 and all("FDB" in n for n in prog.notes)


def test_an_error_after_attach_leaves_nothing_behind(monkeypatch):
    before = our_programs(os.getpid())

    def refuse(*_):
        raise KernelError("no maps for you")

    monkeypatch.setattr(program_btf, "_Map", refuse)
    with pytest.raises(KernelError, match="no maps for you"):
        LibbpfExporterProgram(probe_features())
    assert our_programs(os.getpid()) == before


def test_bad_object_is_one_clear_line(tmp_path):
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(KernelError) as e:
        LibbpfExporterProgram(probe_features(), obj_path=junk)
    assert "libbpf could not open" in e.value.message and "\n" not in e.value.message
    follow_obj = libbpf_loader.build_object(cache=tmp_path)  # another object: no exporter maps in it
    with pytest.raises(KernelError) as e:
        LibbpfExporterProgram(probe_features(), obj_path=follow_obj)
    assert "\n" not in e.value.message


def test_the_exporter_process_maps_no_bcc_and_detaches_on_sigterm():
    with exporter_process({**os.environ, EXPORTER_LOADER_ENV: "libbpf"}) as proc:
        assert len(our_programs(proc.pid)) == 6
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libbcc" not in maps and "libLLVM" not in maps and "libclang" not in maps


# -- both loaders on the same frames ----------------------------------------------------------


@pytest.fixture(scope="module")
def both():
    """(bcc collector, libbpf collector), both attached at once."""
    from tracer.features import require
    from tracer.runtime import machine_features

    f = machine_features()
    require(f)  # bcc's needs too: this module runs both
    with ExporterProgram(f) as bcc_prog, LibbpfExporterProgram(f) as libbpf_prog:
        yield tuple(ExporterCollector(p, kernel_namer(f), machine_inventory) for p in (bcc_prog, libbpf_prog))


def _ours(samples: dict, netns: str) -> dict:
    return {k: v for k, v in samples.items() if k[0] in FAMILIES and dict(k[1]).get("netns") == netns}


def _delta(before: dict, after: dict) -> dict:
    out = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in out.items() if v}


def _healthy(lab: Lab) -> None:
    lab.ping_guest_from_remote(count=3)  # with ARP: flooded requests, learned MACs
    lab.ping_guest_from_host(count=2)


def _netfilter_drop(lab: Lab) -> None:
    lab.ping_guest_from_remote(count=3, timeout=0.2)


def _guest_not_reading(lab: Lab) -> None:
    lab.pause_guest()
    lab.ping(lab.remote_ns, lab.guest_ip, count=10, interval=0.01, timeout=0.1, burst=True)


def _prepare_netfilter(lab: Lab) -> None:
    static_neighbour(lab)
    lab.set_br_netfilter(True)
    lab.run(lab.hv_ns, "iptables", "-A", "FORWARD", "-p", "icmp", "-j", "DROP")


def _prepare_full_ring(lab: Lab) -> None:
    static_neighbour(lab)
    lab.run(lab.hv_ns, "ip", "link", "set", "vnet0", "txqueuelen", "4")


SCENARIOS = {
    "healthy": (LabSpec(), lambda lab: None, _healthy, "tapttrace_fdb_events_total"),
    "netfilter-drop": (LabSpec(), _prepare_netfilter, _netfilter_drop, "tapttrace_drops_total"),
    "tap-with-guest-mac": (LabSpec(tap_mac="guest"), static_neighbour, _netfilter_drop, "tapttrace_tap_frames_total"),
    "guest-not-reading": (LabSpec(), _prepare_full_ring, _guest_not_reading, "tapttrace_tap_drops_total"),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_bcc_and_libbpf_count_the_same(both, scenario):
    spec, prepare, traffic, must_see = SCENARIOS[scenario]
    with Lab(spec) as lab:
        prepare(lab)
        for c in both:
            watch(c, lab)
        before = [scrape(c) for c in both]
        traffic(lab)
        netns = lab.hv_ns

        def deltas() -> tuple[dict, dict]:
            after = [scrape(c) for c in both]
            return tuple(_delta(_ours(b, netns), _ours(a, netns)) for b, a in zip(before, after))

        # Both programs count each event as it happens, and the traffic's last frames may still be
        # on their way (the last replies' consume_skb): compare once both show what the scenario
        # must make and agree (up to WAIT), never after a fixed pause.
        deadline = time.monotonic() + WAIT
        while True:
            with_bcc, with_libbpf = deltas()
            seen = any(k[0] == must_see for k in with_bcc) and any(k[0] == "tapttrace_frames_total" for k in with_bcc)
            if (seen and with_libbpf == with_bcc) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        inode = os.stat(f"/run/netns/{netns}").st_ino
    assert any(k[0] == "tapttrace_frames_total" for k in with_bcc)
    assert any(k[0] == must_see for k in with_bcc), sorted(with_bcc)
    assert with_libbpf == with_bcc
    # The lab is gone: after the grace refreshes neither kernel keeps a series of it.
    for _ in range(both[0].grace + 2):
        for c in both:
            c.refresh()
    for c in both:
        counts = c.program.read()
        left = [k for family in (counts.verdicts, counts.drops, counts.taps, counts.fdb) for k in family
                if k[0] == inode]
        assert left == [] and c.decode_errors == 0


def test_libbpf_counts_forwarded_and_delivered_frames_in_arrays_not_hashes(both):
    """The point of the device indices (bpf/exporter_btf.c): a frame forwarded or delivered to a
    tap, the ARP floods and the host's replies make no per-CPU hash entry; the counts come back
    through read() under the same keys."""
    libbpf = both[1]
    with Lab(LabSpec()) as lab:
        watch(libbpf, lab)
        lab.ping_guest_from_remote(count=3)
        lab.ping_guest_from_host(count=2)  # every reply came back: the frames were counted before
        inode = os.stat(f"/run/netns/{lab.hv_ns}").st_ino
        prog = libbpf.program
        counts = prog.read()
        in_hashes = [k for name in ("verdicts", "taps") for k in prog._sum(name) if k[0] == inode]
        verdicts = {k[4] for k in counts.verdicts if k[0] == inode}
        events = {k[2] for k in counts.taps if k[0] == inode}
    assert in_hashes == []
    assert {program_btf.V_FORWARDED, program_btf.V_DELIVERED} <= verdicts
    assert {program_btf.TAP_QUEUED, program_btf.TAP_DELIVERED} <= events
