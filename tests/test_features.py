"""Feature probes, kernel headers and verdicts on fixture trees, and once on the running kernel."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tracer.btf import Btf
from tracer.errors import EXIT_ENVIRONMENT, EnvironmentProblem
from tracer.features import (
    CORE_TRACEPOINTS,
    TRACEPOINTS,
    Availability,
    KernelOffsets,
    ProbeRoots,
    Tracepoint,
    doctor_lines,
    drop_reason_names,
    parse_format,
    parse_print_symbolic,
    probe_features,
    raw_arg_indexes,
    require,
)
from tracer.kheaders import find_headers

FIXTURES = Path(__file__).parent / "fixtures"
NEW, OLD = FIXTURES / "kernel-6.18", FIXTURES / "kernel-5.10"
DEBIAN, UBUNTU = FIXTURES / "headers" / "debian", FIXTURES / "headers" / "ubuntu"
KFREE_FORMAT = NEW / "sys/kernel/tracing/events/skb/kfree_skb/format"


def roots(tree: Path, tmp_path: Path, **kw) -> ProbeRoots:
    base = dict(sys=str(tree / "sys"), proc=str(tree / "proc"), modules=str(DEBIAN / "lib/modules"),
                usr_src=str(DEBIAN / "usr/src"), headers_cache=str(tmp_path / "cache"), run_cache="",
                release="6.18.0-test", euid=0, live=False)
    base.update(kw)
    return ProbeRoots(**base)


# -- format files and drop reasons --------------------------------------------------


def test_parse_format_of_kfree_skb():
    fields, fmt = parse_format(KFREE_FORMAT.read_text())
    by_name = {f.name: f for f in fields}
    assert [f.name for f in fields if not f.name.startswith("common_")] == [
        "skbaddr", "location", "rx_sk", "protocol", "reason"]
    assert (by_name["reason"].type, by_name["reason"].offset, by_name["reason"].size) == (
        "enum skb_drop_reason", 36, 4)
    assert by_name["common_pid"].signed and not by_name["location"].signed
    assert fmt.startswith('"skbaddr=%p')


def test_parse_format_keeps_array_types():
    text = (NEW / "sys/kernel/tracing/events/net/net_dev_queue/format").read_text()
    fields, _ = parse_format(text)
    name = next(f for f in fields if f.name == "name")
    assert name.type == "__data_loc char[]"


def test_print_symbolic_fallback_names():
    _, fmt = parse_format(KFREE_FORMAT.read_text())
    names = parse_print_symbolic(fmt, "reason")
    assert names[2] == "NOT_SPECIFIED" and names[3] == "NO_SOCKET"
    assert len(names) == 127
    assert parse_print_symbolic(fmt, "protocol") == {}


def test_drop_reason_names_prefer_btf_and_fall_back_to_the_format():
    fields, fmt = parse_format(KFREE_FORMAT.read_text())
    kfree = Tracepoint("skb:kfree_skb", True, fields, fmt)
    names, source = drop_reason_names(Btf.load(FIXTURES / "btf/new.btf"), kfree)
    assert source == "btf"
    assert names == {0: "NOT_DROPPED_YET", 1: "CONSUMED", 2: "NOT_SPECIFIED", 3: "NO_SOCKET", 4: "MAX"}
    names, source = drop_reason_names(None, kfree)
    assert (source, names[12]) == ("format", "NETFILTER_DROP")
    assert drop_reason_names(Btf.load(FIXTURES / "btf/old.btf"), Tracepoint("skb:kfree_skb", True)) == ({}, "")


def test_raw_arg_indexes_follow_the_kernel_version():
    new, old = Btf.load(FIXTURES / "btf/new.btf"), Btf.load(FIXTURES / "btf/old.btf")
    assert raw_arg_indexes(new.tracepoint_args("kfree_skb"), new.tracepoint_args("consume_skb")) == (1, 2, 1)
    assert raw_arg_indexes(old.tracepoint_args("kfree_skb"), old.tracepoint_args("consume_skb")) == (1, None, None)
    assert raw_arg_indexes(None, None) == (None, None, None)


# -- offsets --------------------------------------------------------------------------


def test_offsets_and_cflags_from_btf():
    offsets = KernelOffsets.from_btf(Btf.load(FIXTURES / "btf/new.btf"))
    assert offsets.as_cflags() == [
        "-DOFF_SKB_HEAD=40", "-DOFF_SKB_DATA=48", "-DOFF_SKB_LEN=24", "-DOFF_SKB_MAC_HEADER=32",
        "-DOFF_SKB_NETWORK_HEADER=34", "-DOFF_SKB_DEV=16", "-DOFF_NETDEV_IFINDEX=16", "-DOFF_NETDEV_NAME=0",
        "-DOFF_NETDEV_ND_NET=24", "-DOFF_PNET_NET=0", "-DOFF_NETDEV_NET=24", "-DOFF_NET_INUM=16"]


def test_offsets_without_net_namespaces_leave_the_netns_defines_out():
    offsets = KernelOffsets.from_btf(Btf.load(FIXTURES / "btf/old.btf"))
    assert offsets.possible_net_net is None and offsets.netdev_net is None
    assert offsets.net_ns_inum == 20  # ns at byte 8, inum 12 bytes into it
    flags = offsets.as_cflags()
    assert "-DOFF_NETDEV_ND_NET=24" in flags
    assert not any(f.startswith(("-DOFF_PNET_NET", "-DOFF_NETDEV_NET")) for f in flags)


# -- whole probes on fixture trees ------------------------------------------------------


def test_probe_on_a_6_18_like_tree(tmp_path):
    f = probe_features(roots(NEW, tmp_path))
    assert f.is_root and f.btf.ok and f.tracefs.ok
    assert f.tracefs_path == str(NEW / "sys/kernel/tracing") and not f.tracefs_mounted_now
    assert set(f.tracepoints) == set(TRACEPOINTS) and all(tp.present for tp in f.tracepoints.values())
    assert f.kfree_skb_has_reason and f.consume_skb_has_location
    assert (f.kfree_skb_location_arg, f.kfree_skb_reason_arg, f.consume_skb_location_arg) == (1, 2, 1)
    assert f.drop_reasons_source == "btf"
    assert f.drop_reason(2) == "NOT_SPECIFIED" and f.drop_reason(77) == "unknown:77"
    assert f.hook == "raw_tracepoint"
    assert not f.kprobes.ok and "CONFIG_KPROBES" in f.kprobes.detail
    assert not f.fentry.ok and "not probed" in f.fentry.detail
    assert f.bridge_hook == "none"
    assert f.ringbuf.ok and "not probed" in f.ringbuf.detail
    assert f.headers is not None and f.headers.release == "6.1.0-56-amd64" and not f.headers.matches_running
    assert f.headers_env == {"BCC_KERNEL_SOURCE": str(tmp_path / "cache" / "6.1.0-56-amd64")}
    assert f.offsets == KernelOffsets.from_btf(Btf.load(FIXTURES / "btf/new.btf"))
    assert probe_features(roots(NEW, tmp_path)) is f  # computed once


def test_probe_on_a_5_10_like_tree(tmp_path):
    f = probe_features(roots(OLD, tmp_path, release="5.10.0-30-amd64"))
    assert f.tracefs_path == str(OLD / "sys/kernel/debug/tracing")
    assert not any(f.tracepoints[name].present for name in TRACEPOINTS if name.startswith("bridge:"))
    assert all(f.tracepoints[name].present for name in CORE_TRACEPOINTS)
    assert not f.kfree_skb_has_reason and not f.consume_skb_has_location
    assert (f.kfree_skb_location_arg, f.kfree_skb_reason_arg, f.consume_skb_location_arg) == (1, None, None)
    assert (f.drop_reasons, f.drop_reasons_source) == ({}, "")
    # No btf_trace_ typedefs for the net: tracepoints, so raw tracepoint args are unknown.
    assert f.hook == "tracepoint"
    assert f.kprobes.ok and f.bridge_hook == "kprobe"
    assert f.headers is not None and f.headers.release == "5.10.0-30-amd64" and f.headers.matches_running
    assert f.offsets is not None and f.offsets.netdev_net is None


def test_probe_of_an_empty_machine(tmp_path):
    f = probe_features(roots(tmp_path / "nothing", tmp_path, modules=str(tmp_path), usr_src=str(tmp_path)))
    assert not f.btf.ok and not f.tracefs.ok and f.tracefs_path is None
    assert not any(tp.present for tp in f.tracepoints.values())
    assert f.offsets is None and f.hook == "none" and f.headers is None
    assert "apt-get install linux-headers-6.18.0-test" in f.headers_problem
    lines = doctor_lines(f)
    assert [line.item for line in lines if line.required and not line.ok][:3] == ["BTF", "tracefs", "kernel headers"]


# -- require() and doctor_lines() -------------------------------------------------------


def test_require_names_the_first_missing_thing_in_order(tmp_path):
    f = probe_features(roots(NEW, tmp_path))
    missing = [
        (dict(is_root=False), "CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON"),
        (dict(btf=Availability(False, "no BTF")), "CONFIG_DEBUG_INFO_BTF=y"),
        (dict(tracefs=Availability(False, "not mounted")), "mount -t tracefs nodev /sys/kernel/tracing"),
        (dict(bcc=Availability(False, "cannot import bcc")), "apt-get install python3-bpfcc"),
        (dict(headers=None, headers_problem="no kernel headers found: apt-get install linux-headers-x"),
         "linux-headers-x"),
    ]
    broken = f
    for change, _ in missing:
        broken = dataclasses.replace(broken, **change)
    # Fix them one by one, in reverse: each time the first still missing is the one named.
    for i, (_, words) in enumerate(missing):
        with pytest.raises(EnvironmentProblem) as exc:
            require(broken)
        assert words in exc.value.message and exc.value.exit_code == EXIT_ENVIRONMENT
        broken = dataclasses.replace(broken, **{k: getattr(f, k) for k in missing[i][0]})
    if f.bcc.ok:
        require(broken)


def test_follow_on_libbpf_needs_neither_bcc_nor_headers(tmp_path):
    f = dataclasses.replace(probe_features(roots(NEW, tmp_path)), bcc=Availability(False, "cannot import bcc"),
                            headers=None, headers_problem="no kernel headers found: apt-get install linux-headers-x")
    require(f, "libbpf")  # the precompiled tp_btf object: no compiler in the process, no headers
    with pytest.raises(EnvironmentProblem, match="python3-bpfcc"):
        require(f, "bcc")
    with pytest.raises(EnvironmentProblem, match="CONFIG_DEBUG_INFO_BTF"):
        require(dataclasses.replace(f, btf=Availability(False, "no BTF")), "libbpf")


def test_require_refuses_a_non_root_probe(tmp_path):
    with pytest.raises(EnvironmentProblem, match="run as root"):
        require(probe_features(roots(NEW, tmp_path, euid=1000)))


def test_doctor_lines_describe_the_choice(tmp_path):
    lines = {line.item: line for line in doctor_lines(probe_features(roots(NEW, tmp_path)))}
    assert lines["hooks"].ok and "raw tracepoints" in lines["hooks"].detail
    assert lines["kfree_skb drop reason"].detail == "yes, raw tracepoint arg 2"
    assert "6.1.0-56-amd64" in lines["kernel headers"].detail
    assert "headers vs kernel" in lines
    assert not lines["bridge-internal hooks"].ok
    assert "mac_header=32" in lines["struct offsets"].detail
    assert all(line.fix for line in lines.values() if line.required and not line.ok)


# -- kernel headers -------------------------------------------------------------------------


def test_debian_split_headers_are_merged(tmp_path):
    h = find_headers(str(DEBIAN / "lib/modules"), str(DEBIAN / "usr/src"), str(tmp_path), "6.18.0-test",
                     str(tmp_path / "no-kheaders"), "x86_64")
    tree = Path(h.path)
    assert (h.release, h.source, h.matches_running) == ("6.1.0-56-amd64", "merged", False)
    assert h.env == {"BCC_KERNEL_SOURCE": str(tree)}
    src, gen = DEBIAN / "usr/src/linux-headers-6.1.0-56-common", DEBIAN / "usr/src/linux-headers-6.1.0-56-amd64"
    assert (tree / "include/linux/kconfig.h").read_text() == "/* kconfig.h 6.1.0-56 */\n"
    assert (tree / "include/generated/autoconf.h").resolve() == (gen / "include/generated/autoconf.h").resolve()
    # Directories in both trees are merged; files in both come from the build (flavour) tree.
    assert not (tree / "arch/x86/include").is_symlink()
    assert (tree / "arch/x86/include/asm").resolve() == (src / "arch/x86/include/asm").resolve()
    assert (tree / "arch/x86/include/generated").resolve() == (gen / "arch/x86/include/generated").resolve()
    assert (tree / "Makefile").read_text().startswith("include ")
    # A second run reuses the tree; a stale stamp makes it rebuild.
    before = (tree / "include").stat().st_ino
    assert find_headers(str(DEBIAN / "lib/modules"), str(DEBIAN / "usr/src"), str(tmp_path), "6.18.0-test",
                        str(tmp_path / "no-kheaders"), "x86_64") == h
    assert (tree / "include").stat().st_ino == before
    (tree / ".tapttrace-headers.json").write_text("{}")
    find_headers(str(DEBIAN / "lib/modules"), str(DEBIAN / "usr/src"), str(tmp_path), "6.18.0-test",
                 str(tmp_path / "no-kheaders"), "x86_64")
    assert (tree / "include").stat().st_ino != before
    assert [p.name for p in tmp_path.iterdir()] == ["6.1.0-56-amd64"]  # no temporary trees left behind


def test_headers_found_without_lib_modules_links(tmp_path):
    h = find_headers(str(tmp_path / "empty"), str(DEBIAN / "usr/src"), str(tmp_path / "cache"), "6.18.0-test",
                     str(tmp_path / "no-kheaders"), "x86_64")
    assert (h.release, h.source) == ("6.1.0-56-amd64", "merged")


def test_running_kernel_headers_need_nothing(tmp_path):
    # Debian's split tree for the running kernel: bcc reads source/ and build/ by itself.
    h = find_headers(str(DEBIAN / "lib/modules"), str(DEBIAN / "usr/src"), str(tmp_path), "6.1.0-56-amd64",
                     str(tmp_path / "no-kheaders"))
    assert (h.source, h.env, h.matches_running) == ("running", {}, True)
    assert not list(tmp_path.iterdir())
    ubuntu = find_headers(str(UBUNTU / "lib/modules"), str(tmp_path), str(tmp_path), "6.8.0-40-generic",
                          str(tmp_path / "no-kheaders"))
    assert (ubuntu.source, ubuntu.env) == ("running", {})


def test_other_complete_headers_are_used_in_place(tmp_path):
    h = find_headers(str(UBUNTU / "lib/modules"), str(tmp_path), str(tmp_path), "6.9.0-1-generic",
                     str(tmp_path / "no-kheaders"), "x86_64")
    assert (h.release, h.source) == ("6.8.0-40-generic", "installed")
    assert h.env == {"BCC_KERNEL_SOURCE": str((UBUNTU / "usr/src/linux-headers-6.8.0-40-generic").resolve())}


def test_kheaders_archive_is_left_to_bcc(tmp_path):
    archive = tmp_path / "kheaders.tar.xz"
    archive.write_bytes(b"")
    h = find_headers(str(tmp_path), str(tmp_path), str(tmp_path / "cache"), "6.18.0-test", str(archive))
    assert (h.source, h.env, h.matches_running) == ("kheaders", {}, True)


def test_missing_headers_name_the_packages(tmp_path):
    with pytest.raises(EnvironmentProblem) as exc:
        find_headers(str(tmp_path), str(tmp_path), str(tmp_path / "cache"), "6.18.0-test",
                     str(tmp_path / "no-kheaders"))
    assert "apt-get install linux-headers-6.18.0-test" in exc.value.message
    assert "linux-headers-amd64" in exc.value.message


# -- the running kernel ---------------------------------------------------------------------


@pytest.mark.kernel
def test_running_kernel_features_build_a_loadable_program():
    f = probe_features()
    require(f)
    assert f is probe_features()
    btf = Btf.load()
    assert f.offsets == KernelOffsets.from_btf(btf)
    assert f.bridge_hook == ("fentry" if f.fentry.ok else "kprobe" if f.kprobes.ok else "none")
    assert f.ringbuf.ok
    assert all(f.tracepoints[name].present for name in CORE_TRACEPOINTS)
    assert os.environ.get("BCC_KERNEL_SOURCE") == f.headers_env.get("BCC_KERNEL_SOURCE")
    from bcc import BPF

    # Reading sk_buff through the probed offsets compiles and passes the verifier on this kernel.
    text = """
    RAW_TRACEPOINT_PROBE(netif_receive_skb) {
        u64 skb = ctx->args[0], dev = 0, net = 0;
        u32 inum = 0;
        bpf_probe_read_kernel(&dev, sizeof(dev), (void *)(skb + OFF_SKB_DEV));
        bpf_probe_read_kernel(&net, sizeof(net), (void *)(dev + OFF_NETDEV_NET));
        bpf_probe_read_kernel(&inum, sizeof(inum), (void *)(net + OFF_NET_INUM));
        return inum == 0;
    }
    """
    prog = BPF(text=text.encode(), cflags=f.offsets.as_cflags())
    prog.cleanup()
    lines = doctor_lines(f)
    assert all(line.ok for line in lines if line.required)


@pytest.mark.parametrize("fentry, kprobes, btf, loaded, hook", [
    (True, True, "module", True, "fentry"),  # Debian 12, 13: the bridge module's BTF
    (True, True, "vmlinux", True, "fentry"),  # bridge built in
    (True, True, "", True, "kprobe"),  # Debian 11's 5.10: a module without BTF (module BTF: 5.11)
    (True, True, "", False, "fentry"),  # not loaded yet: the loader falls back to the kprobe at start
    (False, True, "", True, "kprobe"),
    (True, False, "", True, "none"),
    (False, False, "module", True, "none"),  # this machine's 6.18: neither
])
def test_br_flood_is_hooked_by_what_can_reach_it(fentry, kprobes, btf, loaded, hook):
    from tracer.features import choose_bridge_hook

    assert choose_bridge_hook(fentry, kprobes, btf, loaded) == hook


KALLSYMS = """ffffffffc0a01000 t br_flood\t[bridge]
ffffffffc0a02000 T br_forward\t[bridge]
ffffffffc0a03000 t maybe_deliver\t[bridge]
ffffffffc0a03100 t maybe_deliver.cold\t[bridge]
ffffffffc0a04000 t br_pass_frame_up\t[bridge]
ffffffffc0a05000 T br_dev_queue_push_xmit\t[bridge]
ffffffffc0b01000 t tun_net_xmit\t[tun]
ffffffffc0c01000 t nft_do_chain\t[nf_tables]
ffffffff81e94f20 T netif_receive_skb
"""


@pytest.mark.parametrize("hook, module_btf, kprobes, want", [
    # Debian 12, 13: fentry through each module's BTF; br_netfilter not loaded: not hooked, nothing lost
    ("fentry", ("bridge", "tun", "nf_tables"), True,
     {"br_flood": "fentry", "tun_net_xmit": "fentry", "br_nf_dev_queue_xmit": "none", "nft_do_chain": "fentry"}),
    # a module without BTF of its own (5.10) gets kprobes for its functions, but nft_do_chain's hop
    # reads nf_tables' structs through BTF: none
    ("fentry", ("tun",), True, {"br_forward": "kprobe", "tun_net_xmit": "fentry", "nft_do_chain": "none"}),
    ("kprobe", (), True, {"br_forward": "kprobe", "nft_do_chain": "none"}),
    ("fentry", (), False, {"br_forward": "none", "maybe_deliver": "none"}),
    ("kprobe", (), True, {"maybe_deliver": "kprobe", "br_pass_frame_up": "kprobe", "br_nf_dev_queue_xmit": "none"}),
    ("none", ("bridge", "tun"), True, {"br_flood": "none", "tun_net_xmit": "none"}),  # this machine: neither
])
def test_each_bridge_function_is_hooked_by_what_can_reach_it_now(tmp_path, hook, module_btf, kprobes, want):
    from tracer.features import BRIDGE_FUNCS, plan_bridge_hooks

    (tmp_path / "kernel" / "btf").mkdir(parents=True)
    for module in module_btf:
        (tmp_path / "kernel" / "btf" / module).write_bytes(b"\x9f\xeb")
    plan = plan_bridge_hooks(hook, kprobes, KALLSYMS, str(tmp_path))
    assert set(plan) == set(BRIDGE_FUNCS)
    assert {k: plan[k] for k in want} == want
    # built into vmlinux (no [module]): fentry through vmlinux's BTF
    vmlinux = "ffffffff81000000 T br_forward\n"
    assert plan_bridge_hooks("fentry", False, vmlinux, str(tmp_path))["br_forward"] == "fentry"


def test_doctor_says_which_bridge_functions_follow_hooks_from_the_kernels_plan(tmp_path):
    """bridge_plan reads /proc/kallsyms (here a fake one) only when asked: doctor and follow's loader."""
    from tracer.features import bridge_plan

    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "kallsyms").write_text(KALLSYMS)
    (tmp_path / "kernel" / "btf").mkdir(parents=True)
    for module in ("bridge", "tun"):
        (tmp_path / "kernel" / "btf" / module).write_bytes(b"\x9f\xeb")
    empty = probe_features(roots(tmp_path / "nothing", tmp_path, modules=str(tmp_path), usr_src=str(tmp_path)))
    f = dataclasses.replace(empty, bridge_hook="fentry")
    plan = bridge_plan(f, ProbeRoots(proc=str(tmp_path / "proc"), sys=str(tmp_path)))
    assert plan["br_forward"] == "fentry" and plan["br_nf_dev_queue_xmit"] == "none"
    (line,) = [line for line in doctor_lines(f, plan) if line.item == "bridge decision hops"]
    assert line.ok and line.detail.startswith("fentry: br_flood, br_forward, maybe_deliver")
    assert "not loaded now, so not hooked (nothing goes through them): br_nf_dev_queue_xmit;" in line.detail
    # nf_tables without BTF here: said once, with what is lost
    assert "no netfilter verdict hop (nft_do_chain: nf_tables not loaded, or without BTF" in line.detail
    assert not [line for line in doctor_lines(f) if line.item == "bridge decision hops"]  # no plan, no line
