"""Test-wide rules.

1. Tests marked `kernel` skip with the reason when this machine can't run them (not root, no bcc,
   no BTF, no tracefs, no network namespaces) — but never silently in CI: with CI=true a skipped
   kernel test, whatever skipped it, is reported as a failure. The kernel tests are the point of
   this project's CI, and a CI that quietly skipped them all would be green and worthless.
2. Nothing outlives the session: a network namespace named tt* that appeared during the run, or
   a tracing BPF program held by this process at the end, fails the run loudly (see
   pytest_sessionfinish). Leftover namespaces are removed after being reported, so one broken
   run does not poison the next.

Fixtures here stay generic; each test file keeps its own.
"""
from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Optional

import pytest

from tracer.lab.topology import pid_alive

pytest_plugins = ["pytester"]

IN_CI = os.environ.get("CI") == "true"
NETNS_PREFIX = "tt"
RUN_NETNS = Path("/run/netns")

# bpf_prog_type numbers (uapi/linux/bpf.h) of the program kinds a tracer attaches: kprobe,
# tracepoint, perf_event, raw_tracepoint, raw_tracepoint_writable, tracing (fentry/fexit).
_TRACING_PROG_TYPES = {2: "kprobe", 5: "tracepoint", 7: "perf_event", 17: "raw_tracepoint",
                       24: "raw_tracepoint_writable", 26: "tracing"}
_TRACING_LINK_TYPES = {"raw_tracepoint", "tracing", "perf_event", "kprobe_multi", "uprobe_multi"}

_leftovers_key = pytest.StashKey[list]()
_netns_before_key = pytest.StashKey[set]()


# ---------------------------------------------------------------------------- kernel tests


@cache
def kernel_unavailable() -> Optional[str]:
    """Why kernel tests can't run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (BPF programs, bridges and network namespaces)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "needs bcc (Debian's python3-bpfcc, seen through a --system-site-packages venv; run scripts/setup.sh)"
    if not Path("/sys/kernel/btf/vmlinux").is_file():
        return "the kernel has no BTF (/sys/kernel/btf/vmlinux; CONFIG_DEBUG_INFO_BTF)"
    if not Path("/sys/kernel/tracing/events").is_dir() and not Path("/sys/kernel/debug/tracing/events").is_dir():
        return "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    if not Path("/proc/self/ns/net").exists():
        return "the kernel has no network namespaces (CONFIG_NET_NS)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    return None


def pytest_collection_modifyitems(config, items):
    reason = kernel_unavailable()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"kernel test: {reason}")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # An xfail also reports as skipped; it is an expected outcome, not a test that didn't run.
    if not (IN_CI and report.skipped and "kernel" in item.keywords) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = (f"kernel test skipped in CI (CI=true), which counts as a failure: {reason}\n"
                       "CI must run every kernel test; fix the machine set-up (scripts/setup.sh) or the test.")


# ---------------------------------------------------------------------------- leftovers


def _netns_names() -> set[str]:
    try:
        return {e.name for e in RUN_NETNS.iterdir() if e.name.startswith(NETNS_PREFIX)}
    except FileNotFoundError:
        return set()


def _someone_elses(name: str) -> bool:
    """A name carrying a live pid other than ours belongs to a concurrent run (another shell's
    pytest or demo on the same machine), not to this session."""
    m = re.match(rf"^{NETNS_PREFIX}\w*-(\d+)-", name)
    return bool(m) and int(m.group(1)) != os.getpid() and pid_alive(int(m.group(1)))


def _tracing_bpf_held_here() -> list[str]:
    """Tracing BPF programs and links that this process still holds an fd to.

    Read from /proc/self/fdinfo rather than bpftool: it needs no privilege and no BPF iterator,
    and "held by this process" is exactly what an fd table answers.
    """
    found = []
    fd_dir = Path("/proc/self/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
            if target not in ("anon_inode:bpf-prog", "anon_inode:bpf_link"):
                continue
            info = dict(line.split(":", 1) for line in (Path("/proc/self/fdinfo") / fd.name).read_text().splitlines()
                        if ":" in line)
        except OSError:
            continue  # closed while we looked (the iterdir fd itself, for one)
        info = {k.strip(): v.strip() for k, v in info.items()}
        if target == "anon_inode:bpf-prog":
            kind = _TRACING_PROG_TYPES.get(int(info.get("prog_type", "-1")))
            if kind:
                found.append(f"fd {fd.name}: {kind} program id {info.get('prog_id', '?')}")
        elif info.get("link_type") in _TRACING_LINK_TYPES:
            found.append(f"fd {fd.name}: {info['link_type']} link id {info.get('link_id', '?')}"
                         f" to program id {info.get('prog_id', '?')}")
    return found


def pytest_sessionstart(session):
    session.config.stash[_netns_before_key] = _netns_names()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    # BPF objects caught in reference cycles are only closed by the collector; they are not leaks.
    gc.collect()
    before = session.config.stash.get(_netns_before_key, set())
    leftovers = []
    for name in sorted(_netns_names() - before):
        if _someone_elses(name):
            continue
        gone = subprocess.run(["ip", "netns", "del", name], capture_output=True).returncode == 0
        leftovers.append(f"network namespace {name} ({'removed now' if gone else 'could not remove it'})")
    # The libvirt lab's devices live in the root namespace; their names carry our pid.
    for dev in sorted(os.listdir("/sys/class/net")):
        if re.match(rf"^tv{os.getpid()}x\d+[but]\d*$", dev):
            subprocess.run(["ip", "link", "del", dev], capture_output=True)
            leftovers.append(f"root-namespace device {dev} of the libvirt lab (removed now)")
    leftovers += _tracing_bpf_held_here()
    session.config.stash[_leftovers_key] = leftovers
    # An interrupted or broken run keeps its own, more telling, exit status.
    if leftovers and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    leftovers = config.stash.get(_leftovers_key, [])
    if not leftovers:
        return
    tr = terminalreporter
    tr.section("LEFTOVERS: the tests did not clean up after themselves", sep="!", red=True, bold=True)
    for line in leftovers:
        tr.line(f"  {line}", red=True)
    tr.line("The session fails for this even though every test passed.", red=True, bold=True)
    # Counted in the closing line too ("3 passed, 2 left over in 1.5s"), where a reader looks first.
    # As objects, as pytest's own reports are: other plugins (hypothesis) read every entry's __dict__.
    tr.stats.setdefault("left over", []).extend(_LeftOver(line) for line in leftovers)


class _LeftOver:
    """One leftover in terminalreporter.stats (counted in the closing line)."""

    def __init__(self, what: str):
        self.what = what

    def __str__(self) -> str:
        return self.what
