"""Errors that end a command with one clear line and a meaningful exit code, and the notes that
don't end it (what was given up, said once on stderr)."""
from __future__ import annotations

import sys

# Exit codes (documented in docs/cli.md):
#   0 ok / diagnose found nothing wrong, 1 diagnose found a cause,
#   2 usage error (bad MAC, IP, unknown interface or namespace),
#   3 the environment can't run tapttrace (not root, no BTF, no tracefs, no headers, no bcc),
#   4 a kernel operation failed at run time (BPF load/attach).
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_KERNEL = 4


class TapttraceError(Exception):
    """Base: carries the one line the user reads and the exit code."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UsageError(TapttraceError):
    exit_code = EXIT_USAGE


class EnvironmentProblem(TapttraceError):
    """A missing requirement of the machine; the message names the fix."""

    exit_code = EXIT_ENVIRONMENT


class KernelError(TapttraceError):
    exit_code = EXIT_KERNEL


def say_note(text: str) -> None:
    """What a command gave up and why (a hook that wouldn't attach, a loader it fell back from), on stderr."""
    print(f"tapttrace: note: {text}", file=sys.stderr)


READY_PREFIX = "tapttrace: watching "


def say_ready(what: str) -> None:
    """The one line on stderr, with --json, that says every hook is attached: from here on no frame
    is missed. Scripts (and tapttrace's own tests) start their traffic on it."""
    print(f"{READY_PREFIX}{what}", file=sys.stderr, flush=True)
