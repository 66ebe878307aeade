"""The rules of tests/conftest.py, run for real on small inner test sessions:
a skipped kernel test fails when CI=true (and only then), and leftovers fail the session."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

CONFTEST = (Path(__file__).parent / "conftest.py").read_text().replace('pytest_plugins = ["pytester"]', "")
INI = "[pytest]\nmarkers =\n    kernel: kernel test\n"

SKIPS = '''
import pytest

@pytest.mark.kernel
def test_kernel_skips_itself():
    pytest.skip("no kernel here")

@pytest.mark.kernel
@pytest.mark.skipif(True, reason="marked away")
def test_kernel_skipped_by_mark():
    pass

@pytest.mark.kernel
@pytest.mark.xfail(reason="known kernel bug", strict=True)
def test_kernel_expected_failure():
    assert False

def test_plain():
    pytest.skip("ordinary skip")
'''


def _inner(pytester, monkeypatch, ci, tests):
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(test_inner=tests)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")


def test_skipped_kernel_tests_fail_in_ci(pytester, monkeypatch):
    result = _inner(pytester, monkeypatch, "true", SKIPS)
    # A skip decided at set-up (the mark) surfaces as an error, one in the call as a failure:
    # both fail the run. Ordinary skips and expected failures keep their outcome.
    result.assert_outcomes(failed=1, errors=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(["*kernel test skipped in CI (CI=true), which counts as a failure: no kernel here*"])
    result.stdout.fnmatch_lines(["*kernel test skipped in CI (CI=true), which counts as a failure: marked away*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("ci", [None, "false", "1"])
def test_skipped_kernel_tests_only_skip_outside_ci(pytester, monkeypatch, ci):
    result = _inner(pytester, monkeypatch, ci, SKIPS)
    result.assert_outcomes(skipped=3, xfailed=1)
    assert result.ret == pytest.ExitCode.OK


def _run_unprivileged(tests: str, ci: bool) -> pytest.RunResult:
    """Runs an inner session as a user who is not root, for real: as `nobody` when we are root."""
    with tempfile.TemporaryDirectory(prefix="tt-conftest-") as d:
        os.chmod(d, 0o755)  # `nobody` must read it
        Path(d, "conftest.py").write_text(CONFTEST)
        Path(d, "pytest.ini").write_text(INI)
        Path(d, "test_inner.py").write_text(tests)
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", d]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
            probe = subprocess.run([*cmd[:4], sys.executable, "-c", "import pytest"], capture_output=True)
            if probe.returncode != 0:
                pytest.skip(f"user nobody cannot run this venv's python: {probe.stderr.decode()[-200:]}")
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        env.update(PYTHONDONTWRITEBYTECODE="1", **({"CI": "true"} if ci else {}))
        p = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=120)
    return pytest.RunResult(p.returncode, p.stdout.splitlines(), p.stderr.splitlines(), 0.0)


KERNEL_ONLY = '''
import pytest

@pytest.mark.kernel
def test_needs_the_kernel():
    pass
'''


def test_not_root_skips_kernel_tests_with_the_reason():
    result = _run_unprivileged(KERNEL_ONLY, ci=False)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*kernel test: needs root*"])


def test_not_root_in_ci_fails_kernel_tests():
    result = _run_unprivileged(KERNEL_ONLY, ci=True)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*counts as a failure: kernel test: needs root*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


# ---------------------------------------------------------------------------- leftovers


@pytest.mark.kernel
def test_namespace_left_behind_fails_the_session_and_is_removed(pytester, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    existing, leaked = f"tt-guard-{tag}-old", f"tt-guard-{tag}-new"
    subprocess.run(["ip", "netns", "add", existing], check=True)
    try:
        result = _inner(pytester, monkeypatch, None, f'''
import subprocess

def test_leaks_a_namespace():
    subprocess.run(["ip", "netns", "add", "{leaked}"], check=True)
''')
    finally:
        subprocess.run(["ip", "netns", "del", existing], capture_output=True)
        leftover = Path("/run/netns", leaked).exists()
        subprocess.run(["ip", "netns", "del", leaked], capture_output=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*LEFTOVERS: the tests did not clean up after themselves*",
        f"*network namespace {leaked} (removed now)*",
        "*1 passed, 1 left over*",
    ])
    assert existing not in result.stdout.str()  # it was there before the session: not ours
    assert not leftover


@pytest.mark.kernel
def test_clean_session_passes(pytester, monkeypatch):
    result = _inner(pytester, monkeypatch, None, '''
import subprocess

def test_tidy():
    subprocess.run(["ip", "netns", "add", "tt-guard-tidy"], check=True)
    subprocess.run(["ip", "netns", "del", "tt-guard-tidy"], check=True)
''')
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "LEFTOVERS" not in result.stdout.str()


# A real raw_tracepoint program loaded with the bpf() syscall: "r0 = 0; exit". Kept in a global
# as a leaky test would, so the session ends holding it. bcc is not needed for this.
LEAK_BPF = '''
import ctypes, os, struct

SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
BPF_PROG_LOAD, BPF_PROG_TYPE_RAW_TRACEPOINT = 5, 17
HELD = []

def test_leaks_a_bpf_program():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)
    struct.pack_into("=IIQQ", attr, 0, BPF_PROG_TYPE_RAW_TRACEPOINT, 2,
                     ctypes.addressof(insns), ctypes.addressof(lic))
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    fd = libc.syscall(SYS_BPF, BPF_PROG_LOAD, buf, ctypes.c_uint(len(attr)))
    assert fd >= 0, os.strerror(ctypes.get_errno())
    HELD.append(fd)
'''


@pytest.mark.kernel
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="bpf() syscall number unknown here")
def test_bpf_program_held_at_the_end_fails_the_session(pytester, monkeypatch):
    result = _inner(pytester, monkeypatch, None, LEAK_BPF)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines([
        "*LEFTOVERS: the tests did not clean up after themselves*",
        "*fd *: raw_tracepoint program id *",
        "*1 passed, 1 left over*",
    ])


def test_helpers_of_this_file_need_setpriv_when_root():
    # Not a rule of conftest, but what the unprivileged runs above stand on.
    assert os.geteuid() != 0 or shutil.which("setpriv"), "setpriv (util-linux) is missing"
    assert ctypes.CDLL(None).syscall  # libc is there for the inner BPF test
