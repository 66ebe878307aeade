"""Test-wide rules: kernel tests skip politely on a laptop but never silently in CI."""
from __future__ import annotations

import os
import subprocess

import pytest

pytest_plugins = ["pytester"]

IN_CI = os.environ.get("CI") == "true"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="kernel test: needs root, BPF and network namespaces")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skipped kernel test is a failure: the kernel tests are the point of CI here."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and "kernel" in item.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"kernel test skipped in CI (CI=true), which counts as a failure: {reason}"


def _our_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("ttlab-")}


@pytest.fixture(scope="session", autouse=True)
def no_leftover_namespaces():
    """Fail the run if a lab of this test process outlives it."""
    yield
    mine = {ns for ns in _our_namespaces() if ns.startswith(f"ttlab-{os.getpid()}-")}
    assert not mine, f"namespaces left behind by the tests: {sorted(mine)}"
