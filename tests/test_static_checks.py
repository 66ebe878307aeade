"""The code passes ruff and mypy as configured in pyproject.toml (pure: no root, no kernel).

Both run as the venv's own modules (the `test` extra installs them), from the project root so
they read pyproject.toml's [tool.ruff] and [tool.mypy]. A tool that is missing fails the test
rather than skipping it: `make test` is where a type or lint regression must show.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Only a guard against a hung tool, not a speed check: mypy's first run on a busy machine with an
# empty cache takes a minute or more.
HANG_GUARD_S = 900


def run_tool(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)


def test_ruff_is_clean():
    r = run_tool("ruff", "check", "--no-fix", "--output-format", "concise", "tracer", "tests", "bench", "soak")
    assert r.returncode == 0, f"ruff check found problems (exit {r.returncode}):\n{r.stdout}{r.stderr}"


def test_mypy_is_clean():
    r = run_tool("mypy")  # the files and options come from [tool.mypy]
    assert r.returncode == 0, f"mypy found problems (exit {r.returncode}):\n{r.stdout}{r.stderr}"
