"""features.choose_follow_loader and choose_exporter_loader: which program follow and the exporter
load, and the reason doctor shows."""
from __future__ import annotations

from pathlib import Path

import pytest

from tracer import libbpf_loader
from tracer.features import EXPORTER_LOADER_ENV, Availability, choose_exporter_loader, choose_follow_loader

OK = Availability(True, "loaded")
NO = Availability(False, "loading a tp_btf program on netif_receive_skb failed: EINVAL")


def test_forced_either_way_wins(tmp_path):
    assert choose_follow_loader(NO, tmp_path / "btf", "none", "raw_tracepoint", "libbpf")[0] == "libbpf"
    loader, why = choose_follow_loader(OK, tmp_path / "btf", "none", "raw_tracepoint", "bcc")
    assert loader == "bcc" and "forced" in why


def test_nonsense_falls_back_to_bcc_and_says_so(tmp_path):
    loader, why = choose_follow_loader(OK, tmp_path / "btf", "none", "raw_tracepoint", "llvm")
    assert loader == "bcc" and "'llvm'" in why


def test_no_tp_btf_means_bcc_with_the_probe_s_reason(tmp_path):
    loader, why = choose_follow_loader(NO, tmp_path / "btf", "none", "raw_tracepoint")
    assert loader == "bcc" and "EINVAL" in why


@pytest.mark.parametrize("bridge_hook", ["fentry", "kprobe"])
def test_a_bridge_hook_no_longer_keeps_bcc(tmp_path, monkeypatch, bridge_hook):
    """The libbpf object has the br_flood hop too (fentry and kprobe programs): libbpf either way."""
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"fake btf")
    monkeypatch.setattr(libbpf_loader, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(libbpf_loader, "build_tools", lambda *_: ("clang", "bpftool", ""))
    loader, why = choose_follow_loader(OK, btf, bridge_hook, "raw_tracepoint")
    assert loader == "libbpf" and f"br_flood hop through {bridge_hook}" in why
    assert choose_follow_loader(OK, btf, bridge_hook, "raw_tracepoint", "bcc")[0] == "bcc"  # still overridable
    assert choose_follow_loader(NO, btf, bridge_hook, "raw_tracepoint")[0] == "bcc"


def test_libbpf_when_the_object_is_built_or_buildable(tmp_path, monkeypatch):
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"fake btf")
    monkeypatch.setattr(libbpf_loader, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(libbpf_loader, "build_tools", lambda *_: ("clang", "bpftool", ""))
    loader, why = choose_follow_loader(OK, btf, "none", "raw_tracepoint")
    assert loader == "libbpf" and "first use" in why
    obj = libbpf_loader.object_path()
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b"")
    assert choose_follow_loader(OK, btf, "none", "raw_tracepoint") == \
        ("libbpf", f"tp_btf programs load and {obj} is built")


def test_nothing_to_build_with_means_bcc(tmp_path, monkeypatch):
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"fake btf")
    monkeypatch.setattr(libbpf_loader, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(libbpf_loader, "build_tools", lambda *_: (None, None, "no clang to build bpf/follow.c"))
    loader, why = choose_follow_loader(OK, Path(btf), "none", "raw_tracepoint")
    assert loader == "bcc" and "no clang" in why


# -- the exporter's loader: the same rules, its own object and variable ----------------------


def test_exporter_forced_or_nonsense(tmp_path):
    assert choose_exporter_loader(NO, tmp_path / "btf", "raw_tracepoint", "libbpf")[0] == "libbpf"
    loader, why = choose_exporter_loader(OK, tmp_path / "btf", "raw_tracepoint", "bcc")
    assert loader == "bcc" and why == f"forced by {EXPORTER_LOADER_ENV}=bcc"
    loader, why = choose_exporter_loader(OK, tmp_path / "btf", "raw_tracepoint", "llvm")
    assert loader == "bcc" and "'llvm'" in why and EXPORTER_LOADER_ENV in why


def test_exporter_without_tp_btf_or_core_tracepoints_in_btf_is_bcc(tmp_path):
    assert choose_exporter_loader(NO, tmp_path / "btf", "raw_tracepoint")[0] == "bcc"
    assert choose_exporter_loader(OK, tmp_path / "btf", "tracepoint")[0] == "bcc"


def test_exporter_object_is_its_own(tmp_path, monkeypatch):
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"fake btf")
    monkeypatch.setattr(libbpf_loader, "CACHE_DIR", tmp_path / "cache")
    asked = []
    monkeypatch.setattr(libbpf_loader, "build_tools", lambda *a: asked.append(a) or ("clang", "bpftool", ""))
    loader, why = choose_exporter_loader(OK, btf, "raw_tracepoint")
    assert loader == "libbpf" and "first use" in why and asked == [("exporter.c", btf)]
    obj = libbpf_loader.object_path(source="exporter.c")
    assert obj.name.startswith("exporter-") and obj != libbpf_loader.object_path()
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b"")
    assert choose_exporter_loader(OK, btf, "raw_tracepoint") == ("libbpf", f"tp_btf programs load and {obj} is built")
    # follow's object is not the exporter's: follow still has nothing built
    assert "first use" in choose_follow_loader(OK, btf, "none", "raw_tracepoint")[1]
    with pytest.raises(ValueError, match="no BPF object"):
        libbpf_loader.object_path(source="nope.c")


# -- the loader chain (features.open_with_fallback) ------------------------------------------------


def _chain(chosen="libbpf", why="tp_btf programs load", bcc_ok=True, headers=True, libbpf_error=None, **kw):
    from types import SimpleNamespace

    from tracer.errors import KernelError
    from tracer.features import Availability, open_with_fallback

    features = SimpleNamespace(bcc=Availability(bcc_ok, "bcc 0.26.0"), headers=object() if headers else None)
    said: list[str] = []

    def libbpf():
        if libbpf_error:
            raise KernelError(libbpf_error)
        return "libbpf program"

    result = open_with_fallback("bpf/follow.c", features, chosen, why,
                                {"libbpf": libbpf, "bcc": lambda: "bcc program"}, said.append, **kw)
    return result, said


def test_the_chain_takes_libbpf_first():
    assert _chain() == ("libbpf program", [])


def test_a_kernel_refusing_the_object_falls_back_to_bcc_with_the_verifier_s_words():
    program, said = _chain(libbpf_error="could not load bpf/follow.c: EACCES (verifier: tt_x: invalid access)")
    assert program == "bcc program"
    (note,) = said
    assert "invalid access" in note and "using bcc instead" in note
    assert "journeys are stitched in user space only" in note


def test_the_exporter_s_fallback_note_claims_no_loss():
    """bcc builds the exporter's one source into the same maps: only start time and memory differ."""
    _, (note,) = _chain(libbpf_error="could not load bpf/exporter.c: EACCES", lost="")
    assert note.endswith("using bcc instead (compiled at start: slower to start)")


@pytest.mark.parametrize("kw", [{"why": "forced by TAPTTRACE_FOLLOW_LOADER=libbpf"}, {"bcc_ok": False},
                                {"headers": False}])
def test_no_fallback_when_forced_or_bcc_cannot_run(kw):
    from tracer.errors import KernelError

    with pytest.raises(KernelError, match="EACCES"):
        _chain(libbpf_error="could not load bpf/follow.c: EACCES", **kw)


def test_verifier_error_is_the_verifier_s_own_words():
    from tracer.libbpf_loader import verifier_error

    log = """prog 'tt_netif_receive_skb': BPF program load failed: Permission denied
-- BEGIN PROG LOAD LOG --
reg type unsupported for arg#0 function tt_netif_receive_skb#54
0: R1=ctx(off=0,imm=0) R10=fp0
; h->hook = hook;
776: (6b) *(u16 *)(r9 +172) = r1
invalid access to map value, value_size=432 off=12412 size=2
R9 max value is outside of the allowed memory range
processed 1818 insns (limit 1000000) max_states_per_insn 7 total_states 116 peak_states 93 mark_read 13
-- END PROG LOAD LOG --"""
    assert verifier_error(log) == ("tt_netif_receive_skb: invalid access to map value, value_size=432 off=12412 "
                                   "size=2; R9 max value is outside of the allowed memory range")
    assert verifier_error("libbpf: failed to open") == ""


# -- doctor's load check (features.load_line) ----------------------------------------------------------


class _Program:
    def __init__(self, loader):
        self.loader = loader
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


def _load_line(libbpf_error=None, bcc_error=None, root=True):
    from types import SimpleNamespace

    from tracer.errors import KernelError
    from tracer.features import Availability, load_line, open_with_fallback

    features = SimpleNamespace(bcc=Availability(True, "bcc 0.26.0"), headers=object(), is_root=root)
    opened: list[_Program] = []

    def opener(loader, error):
        def open_():
            if error:
                raise KernelError(error)
            opened.append(_Program(loader))
            return opened[-1]
        return open_

    line = load_line("follow program", "bpf/follow.c", features,
                     lambda say: open_with_fallback("bpf/follow.c", features, "libbpf", "tp_btf programs load",
                                                    {"libbpf": opener("libbpf", libbpf_error),
                                                     "bcc": opener("bcc", bcc_error)}, say))
    assert all(p.closed for p in opened)  # doctor never leaves a program loaded
    return line


def test_doctor_says_the_program_loads():
    line = _load_line()
    assert line.ok and line.detail == "bpf/follow.c loaded by libbpf: the verifier accepted it"


def test_doctor_says_the_verifier_s_words_and_the_fallback_taken():
    line = _load_line(libbpf_error="could not load bpf/follow.c: EACCES (verifier: R9 max value is outside "
                                   "of the allowed memory range)")
    assert line.ok
    assert "R9 max value is outside of the allowed memory range" in line.detail
    assert line.detail.endswith("bcc loaded it")


def test_doctor_fails_the_line_when_no_loader_can_load_it():
    line = _load_line(libbpf_error="could not load bpf/follow.c: EACCES", bcc_error="could not load bpf/follow.c: x")
    assert not line.ok and line.required and "did not load" in line.detail


def test_doctor_does_not_load_without_root():
    line = _load_line(root=False)
    assert not line.ok and "needs root" in line.detail
