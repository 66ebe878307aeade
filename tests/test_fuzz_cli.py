"""Property-based tests of the command line (issue 14): random argument vectors through click's
CliRunner end in help, a usage error or one clear `tapttrace: ` line, never a traceback. Pure in
what it needs: it runs as a user who is not root (as `nobody`, in a forked child, when the suite
runs as root), so a vector that happens to be valid stops at "must be root" (exit 3) instead
of loading BPF programs or building a lab."""
from __future__ import annotations

import json
import os
import signal
import traceback

from click.testing import CliRunner
from fuzzing import FUZZ_SLOW
from hypothesis import given
from hypothesis import strategies as st

from tracer.cli import main

NOBODY = 65534
CHILD_TIMEOUT_S = 120  # a generous bound for one command on a loaded machine, not a speed check

words = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
values = st.one_of(words, st.sampled_from(["52:54:00:e4:2e:c1", "52-54-00-E4-2E-C1", "zz:zz", "198.51.100.10",
                                           "2001:db8::1", "nan", "inf", "-1", "0", "1e999", "0.5", "root",
                                           "pid:1", "pid:x", "127.0.0.1:0", "[::1]:99999", ":", "test:///default",
                                           "bogus:///x", "/nonexistent/x", "stub", "qemu"]))
options = st.sampled_from(["--vm", "--connect", "--ip", "--count", "--duration", "--json", "--pcap", "--netns",
                           "--no-learn", "--tap", "--listen", "--bridge", "--refresh", "--max-series", "--tls-cert",
                           "--tls-key", "--guest", "--keep", "--help", "-h", "--version", "--bogus", "--"])
commands = st.sampled_from(["follow", "diagnose", "exporter", "doctor", "demo", "nosuch", ""])


@st.composite
def argvs(draw) -> list[str]:
    argv = [draw(commands)] if draw(st.integers(0, 9)) else []
    for _ in range(draw(st.integers(0, 6))):
        argv += draw(st.sampled_from([[draw(options), draw(values)], [draw(options)], [draw(values)]]))
    # A vector that is valid as a whole would start the command: only as the last resort of a
    # user who is not root, and demo/doctor are not run that way (they run the kernel's probes).
    return argv


def invoke_unprivileged(argv: list[str]) -> dict:
    """CliRunner.invoke(main, argv) in a forked child that is not root: its exit code, output and
    the traceback of any exception other than SystemExit."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            signal.alarm(CHILD_TIMEOUT_S)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
            # The parent (the suite, as root) may have probed the machine already: this process is
            # someone else now, and must find that out for itself.
            from tracer.features import probe_features

            probe_features.cache_clear()
            result = CliRunner().invoke(main, argv, prog_name="tapttrace")
            tb = ""
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                tb = "".join(traceback.format_exception(*result.exc_info))
            payload = json.dumps({"code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
                                  "traceback": tb}).encode()
            while payload:
                payload = payload[os.write(w, payload):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the child running {argv} died: status {status}"
    return json.loads(b"".join(chunks))


@FUZZ_SLOW
@given(argvs())
def test_any_argument_vector_ends_in_help_or_one_clear_error(argv):
    if argv[:1] in (["demo"], ["doctor"]) and not any(a in ("--help", "-h", "--bogus") for a in argv):
        argv = argv + ["--bogus"]  # their probes are the kernel tests' business; their parsing is ours
    out = invoke_unprivileged(argv)
    assert not out["traceback"], f"tapttrace {argv} raised:\n{out['traceback']}"
    assert out["code"] in (0, 2, 3), (argv, out)
    if out["code"] != 0:
        lines = [line for line in out["stderr"].splitlines() if line.strip()]
        assert lines, (argv, out)
        last = lines[-1]
        # click's usage errors end in "Error: …" (a bare `tapttrace` shows its usage, exit 2);
        # tapttrace's own are one "tapttrace: …" line
        assert last.startswith(("Error: ", "tapttrace: ")) or (out["code"] == 2 and lines[0].startswith("Usage:")), \
            (argv, out)
        if last.startswith("tapttrace: "):
            assert sum(line.startswith("tapttrace: ") and "note:" not in line for line in lines) == 1, (argv, out)


def test_a_duration_of_nan_is_a_usage_error_not_a_follow_that_never_stops():
    """Found by the fuzzing: click's FLOAT reads "nan", which compares false with everything, so
    `--duration nan` passed `duration <= 0` and follow would have run with a deadline it never meets."""
    out = invoke_unprivileged(["follow", "52:54:00:e4:2e:c1", "--duration", "nan"])
    assert (out["code"], out["stderr"].strip()) == (2, "tapttrace: --duration must be a positive number of seconds")
