"""The exporter's two loaders of its one source, bpf/exporter.c, on the real kernel: libbpf's
CO-RE object (tracer/exporter/program_btf.py) and bcc's build of the same file
(tracer/exporter/program.py). Every program passes the verifier, attaches and detaches under
both; the libbpf process never maps bcc; and both count the lab's traffic exactly alike: they are
loaded side by side, see the same frames, and their maps are read by the same code
(tracer/exporter/maps.py)."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable

import pytest
from test_exporter_common import scrape
from test_exporter_kernel import exporter_process, static_neighbour, watch
from test_follow_kernel import WAIT, our_programs, programs_gone

from tracer import libbpf_loader
from tracer.errors import KernelError
from tracer.exporter import maps
from tracer.exporter.collector import ExporterCollector
from tracer.exporter.program import DECISION_FUNCS, DECISIONS_LOST, ExporterProgram
from tracer.exporter.program_btf import FDB_PROGRAMS, PROGRAMS, LibbpfExporterProgram
from tracer.exporter.service import kernel_namer, machine_inventory
from tracer.features import EXPORTER_LOADER_ENV, probe_features
from tracer.lab import Lab, LabSpec

pytestmark = pytest.mark.kernel

ALL = set(PROGRAMS) | set(FDB_PROGRAMS.values())
FAMILIES = ("tapttrace_frames_total", "tapttrace_drops_total", "tapttrace_tap_frames_total",
            "tapttrace_tap_drops_total", "tapttrace_fdb_events_total")
LOADERS = {"libbpf": LibbpfExporterProgram, "bcc": ExporterProgram}
AGREE_S = 30.0  # how long the two loaders' counts may take to agree (the machine is shared)


@pytest.fixture(scope="module")
def features():
    """The machine's features, with bcc's needs checked too: these tests run both loaders."""
    from tracer.features import require
    from tracer.runtime import machine_features

    f = machine_features()
    require(f)
    return f


def decision_programs(prog) -> set[str]:
    """The FDB decisions' programs the loader put in (fentry or kprobe; none under bcc)."""
    return {libbpf_loader.bridge_program(func, kind, "ttx")
            for func, kind in getattr(prog, "decision_hooks", {}).items() if kind != "none"}


def other_notes(prog) -> list[str]:
    """The loader's notes but the one saying the FDB decisions are not counted (this machine: no
    fentry, no kprobes; bcc: never), whose own tests are below and in test_exporter_kernel."""
    said = [n for n in prog.notes if n.startswith(DECISIONS_LOST)]
    assert len(said) == (1 if len(decision_programs(prog)) < len(DECISION_FUNCS) else 0), prog.notes
    return [n for n in prog.notes if not n.startswith(DECISIONS_LOST)]


def wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_this_machine_chooses_libbpf_for_the_exporter():
    f = probe_features()
    assert f.tp_btf.ok, f.tp_btf.detail
    if os.environ.get(EXPORTER_LOADER_ENV, "auto") in ("", "auto", "libbpf"):
        assert f.exporter_loader == "libbpf", f.exporter_loader_why


def test_every_program_passes_the_verifier():
    with LibbpfExporterProgram(probe_features(), attach=False) as prog:
        assert prog.loaded_programs() == ALL | decision_programs(prog)
        assert prog.attached == 0 and not other_notes(prog)


def test_kprobe_fdb_decision_programs_pass_the_verifier():
    """Kernels whose bridge module has no BTF (Debian 11's 5.10) count the FDB decisions through
    kprobes, reading through BPF_CORE_READ and the port's device at its fixed place: each program
    must load wherever the functions are (here the bridge is built in, so all three are planned
    when kprobes are said to be there; they can't attach here)."""
    f = dataclasses.replace(probe_features(), bridge_hook="kprobe")
    with LibbpfExporterProgram(f, attach=False) as prog:
        assert prog.decision_hooks == dict.fromkeys(DECISION_FUNCS, "kprobe"), prog.notes
        assert prog.loaded_programs() == ALL | {f"ttx_{func}_kprobe" for func in DECISION_FUNCS}
        assert not prog.notes


def test_fentry_fdb_decisions_load_or_are_refused_with_one_note():
    """fentry on the bridge's functions: loads where the kernel allows fentry; where it refuses
    (EPERM here) the object is loaded again without them, with one note naming all three."""
    f = dataclasses.replace(probe_features(), bridge_hook="fentry")
    with LibbpfExporterProgram(f, attach=False) as prog:
        if decision_programs(prog):
            # fentry where the function has BTF, its kprobe where not (5.10's bridge module): nothing lost
            assert set(prog.decision_hooks.values()) <= {"fentry", "kprobe"}, prog.decision_hooks
            assert prog.loaded_programs() == ALL | decision_programs(prog) and len(decision_programs(prog)) == 3
            assert not prog.notes
        else:
            assert prog.decision_hooks == dict.fromkeys(DECISION_FUNCS, "none")
            assert prog.loaded_programs() == ALL
            assert len(prog.notes) == 1 and "EPERM" in prog.notes[0], prog.notes
            assert all(func in prog.notes[0] for func in DECISION_FUNCS)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_programs_attach_and_detach_on_close(features, loader):
    before = our_programs(os.getpid())
    with LOADERS[loader](features) as prog:
        n = 6 + len(decision_programs(prog))  # the FDB decisions' too, where fentry or kprobes reach them
        assert prog.loader == loader and prog.attached == n and not other_notes(prog)
        ours = our_programs(os.getpid()) - before
        assert len(ours) == n
        assert prog.read().health == {"counter_map_full": 0, "frame_table_full": 0}
    assert our_programs(os.getpid()) == before
    assert programs_gone(ours)


def test_kernels_without_a_drop_reason_load(features):
    """TT_CFG rules out ctx[2] where kfree_skb has no reason argument (before 5.17): .rodata under
    libbpf, a -D constant under bcc, whose raw tracepoint would not attach with a third argument read."""
    f = dataclasses.replace(features, kfree_skb_reason_arg=None)
    with LibbpfExporterProgram(f, attach=False) as prog:
        assert prog.loaded_programs() == ALL
    with ExporterProgram(f) as prog:
        assert prog.attached == 6


def test_object_loads_where_the_kernel_has_no_bpf_rdonly_cast():
    """Before 6.2 a clone's original skb->head is read with bpf_probe_read_kernel: the same object,
    told so in .rodata, must load with its weak bpf_rdonly_cast call left to the verifier's dead-code pass."""
    with LibbpfExporterProgram(dataclasses.replace(probe_features(), rdonly_cast=False), attach=False) as prog:
        assert prog.loaded_programs() == ALL | decision_programs(prog)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_without_bridge_tracepoints_the_fdb_programs_stay_out_with_a_note(features, loader):
    """Bridge built as a module and not loaded: no bridge tracepoints, the frame counts go on
    (libbpf turns the two programs' autoload off; bcc builds without them)."""
    tps = {name: dataclasses.replace(tp, present=False) if name in FDB_PROGRAMS else tp
           for name, tp in features.tracepoints.items()}
    with LOADERS[loader](dataclasses.replace(features, tracepoints=tps)) as prog:
        assert prog.attached == 4 + len(decision_programs(prog))
        notes = other_notes(prog)
        assert len(notes) == 2 and all("FDB" in n for n in notes)
        if loader == "libbpf":
            assert prog.loaded_programs() == set(PROGRAMS) | decision_programs(prog)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_an_error_after_attach_leaves_nothing_behind(features, loader, monkeypatch):
    before = our_programs(os.getpid())

    def refuse(*_):
        raise KernelError("no maps for you")

    monkeypatch.setattr(maps, "_Map", refuse)
    with pytest.raises(KernelError, match="no maps for you"):
        LOADERS[loader](features)
    assert our_programs(os.getpid()) == before


def test_maps_of_another_layout_are_refused_in_one_line(features, monkeypatch):
    """Both loaders hand their maps to the same check (maps.layout_errors) against exporter.h's mirrors."""
    monkeypatch.setitem(maps.MAP_LAYOUT, "devs", (maps.DevKey, maps.DevKey, False))
    for cls in LOADERS.values():
        before = our_programs(os.getpid())
        with pytest.raises(KernelError) as e:
            cls(features)
        assert "disagree on map layouts: devs value 16 != 8" in e.value.message and "\n" not in e.value.message
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
        mapped = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libbcc" not in mapped and "libLLVM" not in mapped and "libclang" not in mapped


def test_the_exporter_process_on_bcc_serves_and_detaches_on_sigterm():
    """TAPTTRACE_EXPORTER_LOADER=bcc end to end: the same source compiled by bcc, served, detached."""
    with exporter_process({**os.environ, EXPORTER_LOADER_ENV: "bcc"}) as proc:
        assert len(our_programs(proc.pid)) == 6
        assert "libbcc" in Path(f"/proc/{proc.pid}/maps").read_text()


# -- both loaders on the same frames ----------------------------------------------------------


@pytest.fixture(scope="module")
def both(features):
    """(bcc collector, libbpf collector), both attached at once."""
    with ExporterProgram(features) as bcc_prog, LibbpfExporterProgram(features) as libbpf_prog:
        yield tuple(ExporterCollector(p, kernel_namer(features), machine_inventory) for p in (bcc_prog, libbpf_prog))


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


@pytest.mark.parametrize("loader", ["bcc", "libbpf"])
def test_forwarded_and_delivered_frames_are_counted_in_arrays_not_hashes(both, loader):
    """The point of the device indices (bpf/exporter.c), under either loader: a frame forwarded or
    delivered to a tap, the ARP floods and the host's replies make no per-CPU hash entry; the
    counts come back through read() under the same keys. (Every count below is made before the
    ping that caused it has its reply.)"""
    collector = both[["bcc", "libbpf"].index(loader)]
    with Lab(LabSpec()) as lab:
        watch(collector, lab)  # the module's collectors may still count an earlier lab's namespace only
        assert lab.ping_guest_from_remote(count=3).received == 3
        assert lab.ping_guest_from_host(count=2).received == 2  # every reply back: counted before
        inode = os.stat(f"/run/netns/{lab.hv_ns}").st_ino
        prog = collector.program
        counts = prog.read()
        in_hashes = [k for name in ("verdicts", "taps") for k in prog._sum(name) if k[0] == inode]
        verdicts = {k[4] for k in counts.verdicts if k[0] == inode}
        events = {k[2] for k in counts.taps if k[0] == inode}
    assert prog.loader == loader and in_hashes == []
    assert {maps.V_FORWARDED, maps.V_DELIVERED} <= verdicts
    assert {maps.TAP_QUEUED, maps.TAP_DELIVERED} <= events
