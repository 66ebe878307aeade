"""follow's libbpf path (bpf/follow.c, tracer/libbpf_loader.py) on the real kernel: it loads,
attaches and detaches, fails in one clear line, and follows the lab's traffic exactly as the bcc
path does (both run side by side on the same frames)."""
from __future__ import annotations

import dataclasses
import os

import pytest
from test_follow_kernel import Follow, follow_pair, hops_by_copy, our_programs, pings_done, programs_gone

from tracer import bpfbuild, libbpf_loader
from tracer.errors import EnvironmentProblem, KernelError
from tracer.features import FOLLOW_LOADER_ENV, probe_features
from tracer.lab import Lab, LabSpec
from tracer.libbpf_loader import LibbpfFollowProgram, build_object

pytestmark = pytest.mark.kernel

MAC = "52:54:00:00:00:01"


def test_this_machine_chooses_libbpf():
    f = probe_features()
    assert f.tp_btf.ok, f.tp_btf.detail
    if os.environ.get(FOLLOW_LOADER_ENV, "auto") in ("", "auto", "libbpf"):  # whatever the bridge hook
        assert f.follow_loader == "libbpf", f.follow_loader_why


def test_br_flood_programs_are_off_unless_chosen():
    with LibbpfFollowProgram(dataclasses.replace(probe_features(), bridge_hook="none"), MAC, 8) as prog:
        assert prog.attached == 4 and prog.bridge_hook == "none" and not prog.notes
        assert prog.loaded_programs() == set(libbpf_loader.PROGRAMS)


def hooked_programs(prog: LibbpfFollowProgram) -> set[str]:
    """The programs the loader chose for the bridge's and the tap's functions (features.plan_bridge_hooks)."""
    return {name for func, kind in prog.hooks.items() if kind != "none"
            for name in libbpf_loader.bridge_programs(func, kind)}


def test_kprobe_bridge_hops_pass_the_verifier():
    """Production kernels with kprobes get the bridge's own decisions as hops (br_flood, br_forward,
    maybe_deliver, br_pass_frame_up, the egress, tun_net_xmit); here kprobes can't attach, but each
    kprobe program (reads through BPF_CORE_READ) must load, so the path is proven before it meets
    such a kernel. Every function this kernel has is planned (bridge, br_netfilter and tun are
    built in here)."""
    f = dataclasses.replace(probe_features(), bridge_hook="kprobe")
    with LibbpfFollowProgram(f, MAC, 8, attach=False) as prog:
        assert prog.bridge_hook == "kprobe", prog.notes
        assert prog.hooks["br_forward"] == "kprobe" and prog.hooks["maybe_deliver"] == "kprobe", prog.hooks
        assert prog.loaded_programs() == {*libbpf_loader.PROGRAMS, *hooked_programs(prog)}
        assert "tt_br_flood_kprobe" in prog.loaded_programs()
        assert prog.attached == 0


def test_fentry_br_flood_loads_or_is_refused_with_eperm():
    """fentry on br_flood: loads where the kernel allows fentry; here (and where it is refused)
    the object is loaded again without it, with a note, rather than failing."""
    f = dataclasses.replace(probe_features(), bridge_hook="fentry")
    with LibbpfFollowProgram(f, MAC, 8, attach=False) as prog:
        if prog.bridge_hook == "fentry":
            assert prog.loaded_programs() == {*libbpf_loader.PROGRAMS, *hooked_programs(prog)}
        else:
            assert prog.bridge_hook == "none" and len(prog.notes) == 1 and "EPERM" in prog.notes[0], prog.notes
            assert prog.loaded_programs() == set(libbpf_loader.PROGRAMS)


def test_a_br_flood_hook_that_will_not_attach_is_a_note_not_a_failure():
    """kprobe chosen where it can't attach (no kprobes here; elsewhere bridge a module not loaded):
    follow goes on with the tracepoint hops and says what it gave up."""
    before = our_programs(os.getpid())
    f = dataclasses.replace(probe_features(), bridge_hook="kprobe")
    with LibbpfFollowProgram(f, MAC, 8) as prog:
        if prog.bridge_hook == "none":
            assert prog.attached == 4 and "br_flood" in prog.notes[0]
        else:
            assert prog.attached == 4 + len(hooked_programs(prog))
    assert our_programs(os.getpid()) == before


def test_programs_load_attach_and_detach_on_close():
    before = our_programs(os.getpid())
    with LibbpfFollowProgram(probe_features(), MAC, 8) as prog:
        assert prog.attached == 4 + len(hooked_programs(prog))
        ours = our_programs(os.getpid()) - before
        assert len(ours) == prog.attached
        prog.watch_ips(["198.51.100.7", "2001:db8::7"])
        assert prog.lost() == 0
        assert prog.poll_batch(10) == []  # nothing concerns this MAC
    assert our_programs(os.getpid()) == before
    assert programs_gone(ours)


def test_kernels_without_drop_reason_or_consume_location_still_load():
    """.rodata says which ctx[] indexes exist; the others must be ruled out before the verifier looks."""
    f = dataclasses.replace(probe_features(), kfree_skb_reason_arg=None, consume_skb_location_arg=None)
    with LibbpfFollowProgram(f, MAC, 8) as prog:
        assert prog.attached == 4 + len(hooked_programs(prog))


def test_an_error_after_load_leaves_nothing_behind(monkeypatch):
    before = our_programs(os.getpid())

    def refuse(*_):
        raise OSError("no mmap for you")

    monkeypatch.setattr(libbpf_loader, "RingBuffer", refuse)
    with pytest.raises(KernelError, match="could not map the ring buffer"):
        LibbpfFollowProgram(probe_features(), MAC, 8)
    assert our_programs(os.getpid()) == before


def test_bad_object_and_bad_ring_size_are_one_clear_line(tmp_path):
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(KernelError) as e:
        LibbpfFollowProgram(probe_features(), MAC, 8, obj_path=junk)
    assert "libbpf could not open" in e.value.message and "\n" not in e.value.message
    with pytest.raises(KernelError) as e:
        LibbpfFollowProgram(probe_features(), MAC, 8, obj_path=tmp_path / "missing.o")
    assert "ENOENT" in e.value.message
    with pytest.raises(KernelError) as e:
        LibbpfFollowProgram(probe_features(), MAC, 3)  # not a power of 2
    assert "\n" not in e.value.message


def test_build_without_clang_names_the_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(bpfbuild, "CLANGS", ("tt-no-such-clang",))
    with pytest.raises(EnvironmentProblem, match="apt-get install clang-14"):
        build_object(cache=tmp_path)


def test_object_is_built_once_into_the_cache_not_the_repo(tmp_path):
    obj = build_object(cache=tmp_path)
    assert obj.parent == tmp_path and obj.is_file()
    mtime = obj.stat().st_mtime_ns
    assert build_object(cache=tmp_path) == obj and obj.stat().st_mtime_ns == mtime
    assert not list(bpfbuild.BPF_DIR.glob("*.o"))
    with LibbpfFollowProgram(probe_features(), MAC, 8, obj_path=obj) as prog:
        assert prog.attached == 4 + len(hooked_programs(prog))


def _journeys(follow: Follow, until) -> list[tuple]:
    journeys, summary, _ = follow.stop(until=until)
    assert summary["lost_events"] == 0
    return sorted((j["summary"], j["verdict"], hops_by_copy(j),
                   (j.get("drop") or {}).get("reason"), (j.get("drop") or {}).get("location", "").split("+")[0])
                  for j in journeys)


@pytest.mark.parametrize("spec", [LabSpec(), LabSpec(tap_mac="guest"), LabSpec(ipv6=True)],
                         ids=["healthy", "tap-with-guest-mac", "ipv6"])
def test_bcc_and_libbpf_follow_the_same_journeys(spec, monkeypatch):
    with Lab(spec) as lab:
        args = (lab.guest_mac, "--netns", lab.hv_ns, "--ip", lab.guest_ip)
        with_bcc, with_libbpf = follow_pair(args, monkeypatch, {FOLLOW_LOADER_ENV: "bcc"},
                                            {FOLLOW_LOADER_ENV: "libbpf"})
        assert not with_bcc.programs & with_libbpf.programs
        answered = spec.tap_mac != "guest"  # a tap with the guest's MAC: the remote's requests end on br0
        lab.ping_guest_from_remote(count=3, **({} if answered else {"timeout": 0.3}))
        lab.ping_guest_from_host(count=2)
        if spec.ipv6:  # neighbour solicitations for the guest's address
            lab.ping6_guest_from_remote(count=2)
        sent = 5 + 2 * spec.ipv6
        done = pings_done(lab.guest_mac, sent, sent if answered else 2)
        bcc_journeys, libbpf_journeys = _journeys(with_bcc, done), _journeys(with_libbpf, done)
    assert len(bcc_journeys) >= 5
    assert libbpf_journeys == bcc_journeys
    if spec.tap_mac == "guest":
        assert any(j[1] == "dropped" and j[3] for j in libbpf_journeys)  # drop reasons came through


def test_object_loads_where_the_kernel_has_no_bpf_rdonly_cast():
    """Before 6.2 the Ethernet header is read with bpf_probe_read_kernel: the same object, told so
    in .rodata, must load with its weak bpf_rdonly_cast call left to the verifier's dead-code pass."""
    with LibbpfFollowProgram(dataclasses.replace(probe_features(), rdonly_cast=False), MAC, 8) as prog:
        assert prog.attached == 4 + len(hooked_programs(prog))
