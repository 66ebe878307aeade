"""The kernel matrix's pure parts (no VM): package choice, what a kernel loses, the README table."""
from __future__ import annotations

import json
import re

from kernels import matrix
from kernels.support import NOT_RUN, lost_features


def test_each_kernel_takes_the_newest_package_of_its_series():
    names = ["linux-image-6.1.0-9-amd64-unsigned", "linux-image-6.1.0-57-amd64-unsigned",
             "linux-image-6.1.0-57-rt-amd64-unsigned", "linux-image-6.1.0-57-cloud-amd64-unsigned",
             "linux-image-6.12.117+deb13-amd64-unsigned", "linux-image-6.12.118+deb13-amd64-unsigned",
             "linux-image-5.10.0-46-amd64-unsigned"]
    found = {}
    for k in matrix.KERNELS:
        hits = [(tuple(int(x) for x in re.findall(r"\d+", m.group(1))), m.group(1))
                for m in (re.fullmatch(k.package, n) for n in names) if m]
        found[k.name] = max(hits)[1]
    assert found == {"5.10": "5.10.0-46-amd64", "6.1": "6.1.0-57-amd64", "6.12": "6.12.118+deb13-amd64"}


def test_a_kernel_without_tests_in_the_matrix_says_why():
    for k in matrix.KERNELS:
        assert k.tests or k.name in NOT_RUN, k.name


def test_losses_are_said_in_words():
    old = {"kfree_skb_has_reason": False, "consume_skb_has_location": False, "bpf_atomics": False,
           "fentry": True, "kprobes": True}
    assert lost_features(old) == ["drop reasons (5.17+): drops are named by function",
                                  "where a frame was consumed (6.3+)",
                                  "journeys stitched in the kernel (5.12+): stitched in user space; follow "
                                  "behind the traffic counts lost events, not every frame's verdict"]
    assert lost_features({**old, "kfree_skb_has_reason": True, "consume_skb_has_location": True,
                          "bpf_atomics": True}) == []
    assert lost_features({"fentry": False, "kprobes": False}) == [
        "the bridge's own decisions (no fentry, no kprobes): inferred from tracepoints"]
    # 5.10: the bridge's functions by kprobe, but nf_tables has no BTF for the netfilter hop
    plan = {"br_forward": "kprobe", "nft_do_chain": "none"}
    assert lost_features({**old, "bridge_plan": plan})[-1] == (
        "the netfilter verdict hop (nf_tables' BTF, 5.11+): netfilter drops named by function")
    assert not any("netfilter" in w for w in lost_features({**old, "bridge_plan": {**plan, "nft_do_chain": "fentry"}}))


def test_table_rows_come_from_the_results(tmp_path):
    d = tmp_path / "6.1"
    d.mkdir()
    (d / "row.json").write_text(json.dumps({"kernel": "6.1", "release": "6.1.0-57-amd64", "rc": 0, "seconds": 300}))
    (d / "facts.json").write_text(json.dumps({"follow_loader": "libbpf", "exporter_loader": "libbpf", "tp_btf": True,
                                              "bridge_hook": "fentry", "bridge_btf": "module",
                                              "kfree_skb_has_reason": True, "consume_skb_has_location": False,
                                              "bpf_atomics": True, "fentry": True, "kprobes": True}))
    (d / "demo.rc").write_text("0\n")
    (d / "demo.seconds").write_text("95\n")
    (d / "pytest.xml").write_text('<testsuites><testsuite tests="3" failures="0" errors="0" skipped="0"/></testsuites>')
    table = matrix.render_table(tmp_path).splitlines()
    assert len(table) == 3
    assert table[2] == ("| 6.1.0-57-amd64 | Debian 12 | libbpf / libbpf | tp_btf; br_flood: fentry (bridge module) | "
                        "where a frame was consumed (6.3+) | exit 0 (95 s) | 3 passed, 0 failed |")


def test_the_guest_command_fits_the_kernel_command_line(tmp_path):
    """virtme-ng passes the command base64-encoded on the kernel's command line, cut at 2048 bytes
    on x86: with the test ids on it the guest hung with nothing to run. They go in a file."""
    import base64

    for kernel in matrix.BY_NAME.values():
        cmd = matrix.guest_command(kernel.name, tmp_path, kernel.tests)
        assert len(base64.b64encode(cmd.encode())) < 1024, cmd
        assert (tmp_path / "tests.txt").read_text().split() == list(kernel.tests)
