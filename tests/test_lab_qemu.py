"""The lab's real guest: the initramfs builder (pure), then labs whose guest is Linux under qemu/TCG.

Runtime: every kernel test boots its own guest, ~5-6 s each under TCG on 2 cores (plus ~4 s and a
27 MB download the very first time, when ensure_guest_image builds the cache); the file takes
about a minute.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracer.errors import EnvironmentProblem
from tracer.lab import Lab, LabSpec, libvirt_tap_mac, remove_stale
from tracer.lab.guest_image import (
    BUSYBOX,
    READY_MARKER,
    _download,
    cpio_newc,
    guest_cmdline,
    modinfo,
    modules_in_load_order,
    read_cpio_newc,
)
from tracer.lab.topology import RUN_NETNS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from test_diagnose_kernel import diagnose  # noqa: E402
from test_follow_kernel import Follow, echoes, pings_done  # noqa: E402

# Healthy: each probe waits for its own reply (Lab.ping, up to PROBE_TIMEOUT): TCG answers in ~1 ms,
# the first in ~15, a busy machine in whatever it takes. Failing: no reply will ever come.
FAST = dict(count=3, interval=0.1)
FAILING = dict(count=2, interval=0.1, timeout=0.3)
WAIT = 120  # seconds: an upper bound on waiting for a condition, never a measurement
QEMU = LabSpec(guest="qemu")


# ---------------------------------------------------------------------------- pure

ENTRIES = [("bin", stat.S_IFDIR | 0o755, b"", 0),
           ("dev/console", stat.S_IFCHR | 0o600, b"", 5 << 8 | 1),
           ("bin/sh", stat.S_IFLNK | 0o777, b"busybox", 0),
           ("init", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n", 0),
           ("odd", stat.S_IFREG | 0o644, b"x" * 5, 0),  # sizes that need padding
           ("empty", stat.S_IFREG | 0o644, b"", 0)]


def test_cpio_newc_round_trips():
    blob = cpio_newc(ENTRIES)
    assert blob.startswith(b"070701") and len(blob) % 4 == 0
    assert read_cpio_newc(blob) == ENTRIES
    assert cpio_newc(ENTRIES) == blob  # deterministic: the cache key relies on it


def test_cpio_newc_is_what_busybox_cpio_reads(tmp_path):
    archive = tmp_path / "a.cpio"
    archive.write_bytes(cpio_newc(ENTRIES))
    listing = subprocess.run([str(BUSYBOX), "cpio", "-t", "-F", str(archive)], capture_output=True, text=True,
                             check=True).stdout.split()
    assert listing == [name for name, *_ in ENTRIES]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run([str(BUSYBOX), "cpio", "-i", "-d", "-F", str(archive)], cwd=out, check=True, capture_output=True)
    assert (out / "init").read_bytes() == b"#!/bin/sh\necho hi\n" and (out / "odd").read_bytes() == b"xxxxx"
    assert os.readlink(out / "bin/sh") == "busybox"


def fake_module(**info: str) -> bytes:
    """An ELF64 LE file with a .modinfo section: all modules_in_load_order reads of a .ko."""
    modinfo_sec = b"".join(f"{k}={v}\0".encode() for k, v in info.items())
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    data_off = 64
    shoff = data_off + len(modinfo_sec) + len(shstrtab)
    header = (b"\x7fELF\x02\x01\x01" + b"\0" * 9
              + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2))
    sh = struct.Struct("<IIQQQQIIQQ")
    sections = (sh.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
                + sh.pack(1, 1, 0, 0, data_off, len(modinfo_sec), 0, 0, 1, 0)
                + sh.pack(10, 3, 0, 0, data_off + len(modinfo_sec), len(shstrtab), 0, 0, 1, 0))
    return header + modinfo_sec + shstrtab + sections


def test_modules_come_in_dependency_order_without_builtins(tmp_path):
    mods = tmp_path / "kernel"
    (mods / "drivers").mkdir(parents=True)
    for name, deps in {"virtio_net": "net_failover,virtio,virtio_ring", "net_failover": "failover",
                       "failover": "", "virtio": "", "virtio_ring": "", "virtio_pci": "virtio,virtio_pci_modern_dev",
                       "virtio_pci_modern_dev": "virtio", "unrelated": ""}.items():
        file = name.replace("_", "-") if name == "virtio_pci_modern_dev" else name  # as virtio-rng.ko is
        (mods / "drivers" / f"{file}.ko").write_bytes(
            fake_module(name=name, depends=deps, license="GPL"))
    (tmp_path / "modules.builtin").write_text("kernel/drivers/virtio/virtio_ring.ko\n")
    assert modinfo(fake_module(depends="a,b"))["depends"] == "a,b"
    order = [name for name, _ in modules_in_load_order(tmp_path)]
    assert sorted(order) == ["failover", "net_failover", "virtio", "virtio_net", "virtio_pci", "virtio_pci_modern_dev"]
    for name, deps in (("virtio_pci", ["virtio", "virtio_pci_modern_dev"]), ("virtio_net", ["net_failover", "virtio"]),
                       ("net_failover", ["failover"])):
        assert all(order.index(d) < order.index(name) for d in deps), order


def test_guest_cmdline_carries_the_address_and_the_knobs():
    line = guest_cmdline("198.51.100.10/24")
    assert "console=ttyS0" in line.split() and "tt.ip=198.51.100.10/24" in line.split()
    assert "tt.ipv6=0" in line.split() and "tt.arp=1" in line.split()
    line = guest_cmdline("203.0.113.5/24", "foo=bar", gateway="203.0.113.1", arp=False)
    assert {"tt.gw=203.0.113.1", "tt.arp=0", "foo=bar"} <= set(line.split())
    with pytest.raises(ValueError):
        guest_cmdline("198.51.100.10")


def test_a_package_apt_cannot_fetch_is_one_clear_line(tmp_path):
    with pytest.raises(EnvironmentProblem) as err:
        _download("linux-image-tapttrace-no-such-kernel", tmp_path / "debs")
    assert "can't download linux-image-tapttrace-no-such-kernel" in err.value.message
    assert "\n" not in err.value.message and not list((tmp_path / "debs").iterdir())


def test_spec_rejects_an_unknown_guest_kind():
    with pytest.raises(ValueError, match="guest"):
        LabSpec(guest="kvm")


# ---------------------------------------------------------------------------- kernel


def namespaces() -> set[str]:
    return {e.name for e in RUN_NETNS.iterdir()} if RUN_NETNS.is_dir() else set()


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_until(cond, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.kernel
def test_qemu_guest_answers_remote_and_host_and_is_gone_after_the_block():
    with contextlib.suppress(RuntimeError):
        with Lab(QEMU) as lab:
            qemu, tmp, names = lab.guest.pid, lab.tmp, {lab.hv_ns, lab.remote_ns}
            cmd = Path(f"/proc/{qemu}/cmdline").read_bytes().split(b"\0")
            assert Path(cmd[0].decode()).name == "qemu-system-x86_64"
            assert f"guest={lab.guest_name}".encode() in cmd and b"tcg" in cmd
            assert f"{READY_MARKER} ip={lab.guest_ip}/24 mac={lab.guest_mac}" in lab.console_log()
            remote, host = lab.ping_guest_from_remote(**FAST), lab.ping_guest_from_host(**FAST)
            assert remote.received == 3 and host.received == 3, (remote, host)
            lab.pause_guest()  # a hung VM: holds the tap, answers nothing
            assert lab.ping_guest_from_host(**FAILING).received == 0
            lab.resume_guest()
            assert lab.ping_guest_from_host(**FAST).received >= 2
            raise RuntimeError("the test body failed: teardown must still kill qemu")
    assert gone(qemu) and lab.guest is None
    assert not tmp.exists() and not names & namespaces()


@pytest.mark.kernel
def test_qemu_guest_behind_a_tap_with_its_own_mac_until_the_libvirt_fix():
    with Lab(LabSpec(tap_mac="guest", guest="qemu")) as lab:
        assert lab.ping_guest_from_remote(**FAILING).received == 0
        assert lab.ping_guest_from_host(**FAST).received == 3
        lab.set_tap_mac(libvirt_tap_mac(lab.guest_mac))
        assert lab.ping_guest_from_remote(**FAST).received == 3


@pytest.mark.kernel
def test_follow_sees_frames_delivered_to_qemu_and_the_guest_kernels_replies():
    with Lab(QEMU) as lab:
        f = Follow(lab.guest_mac, "--netns", lab.hv_ns, "--ip", lab.guest_ip)
        ping = lab.ping_guest_from_remote(**FAST)
        journeys, summary, _ = f.stop(until=pings_done(lab.guest_mac, 3, 3))
        qemu = lab.guest.pid
    assert ping.received == 3
    reqs = echoes(journeys)
    assert len(reqs) == 3
    for j in reqs:
        assert j["verdict"] == "delivered"
        assert [(h["event"], h["dev"]) for h in j["hops"]][-3:] == [
            ("received", lab.uplink), ("sent", lab.tap), ("read", lab.tap)]
        assert "qemu" in j["hops"][-1]["reader"] and str(qemu) in json.dumps(j["hops"][-1])
    replies = [j for j in journeys if j["summary"].startswith("ICMP echo reply") and j["src_mac"] == lab.guest_mac]
    assert len(replies) == 3 and all(j["verdict"] == "forwarded" for j in replies)
    assert summary["lost_events"] == 0


@pytest.mark.kernel
def test_diagnose_names_local_mac_for_a_qemu_guest():
    with Lab(LabSpec(tap_mac="guest", guest="qemu")) as lab:
        code, report = diagnose(lab, lambda lab: lab.ping_guest_from_remote(count=3, interval=0.2, timeout=0.5))
    assert code == 1 and report["cause"] == "local-mac", {k: v for k, v in report.items() if k != "journeys"}
    assert any(libvirt_tap_mac(lab.guest_mac) in c for c in report["fix"])


CHILD = """
import json, sys, time
from tracer.errors import EnvironmentProblem
from tracer.lab import Lab, LabSpec
with Lab(LabSpec(guest="qemu")) as lab:
    print(json.dumps({"ns": [lab.remote_ns, lab.hv_ns], "guest": lab.guest.pid, "tmp": str(lab.tmp)}), flush=True)
    while True:  # until the test's signal, however long it takes to come (not pause(): a signal
        time.sleep(1)  # landing just before it would leave it waiting for another one)
"""


@pytest.mark.kernel
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_lab_takes_its_qemu_guest_along(sig):
    p = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([p.stdout], [], [], WAIT)[0], "the child's lab did not come up"
        info = json.loads(p.stdout.readline())
        names, qemu, tmp = set(info["ns"]), info["guest"], Path(info["tmp"])
        assert not gone(qemu) and tmp.is_dir()
        p.send_signal(sig)
        p.wait(timeout=WAIT)
        assert p.returncode == -sig
        # SIGTERM: the lab's handler tears down. SIGKILL: qemu's parent-death signal ends it,
        # and the next lab removes the namespaces and the console directory.
        assert wait_until(lambda: gone(qemu))
        if sig == signal.SIGKILL:
            remove_stale()
        assert not names & namespaces() and not tmp.exists()
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()
        remove_stale()
