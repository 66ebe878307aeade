"""The wheel's BPF: bpf/ goes into the package as tracer/_bpf/ (bcc's fallback and a from-source
build read it there), with the CO-RE objects built now, so that an install needs neither clang
nor kernel headers. Everything else about the package is in pyproject.toml.

A build_py step rather than a build backend of our own: setuptools stays the backend (sdist,
wheel and editable installs as before) and this only adds files to what it packages. An
editable install (scripts/setup.sh) gets nothing here: a checkout reads bpf/ beside tracer/ and
builds objects into its cache.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# TAPTTRACE_WHEEL_OBJECTS=required: fail the build rather than ship a wheel without objects.
REQUIRE_ENV = "TAPTTRACE_WHEEL_OBJECTS"


def _bpfbuild():
    """tracer/bpfbuild.py by its path: the package's dependencies aren't installed at build time."""
    spec = importlib.util.spec_from_file_location("_tapttrace_bpfbuild", HERE / "tracer" / "bpfbuild.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool_version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0].strip()
    except (OSError, IndexError):
        return ""


class BuildPyWithBpf(build_py):
    """build_py, then bpf/ into build_lib's tracer/_bpf/ (install_lib and the wheel take all of
    build_lib, so no package-data entry is needed)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        bpfbuild = _bpfbuild()
        dest = Path(self.build_lib, "tracer", "_bpf")
        shutil.rmtree(dest, ignore_errors=True)  # an earlier build's objects of other sources
        dest.mkdir(parents=True)
        for source in sorted((HERE / "bpf").glob("*.[ch]")):
            shutil.copyfile(source, dest / source.name)
        try:
            built = bpfbuild.build_all(dest, bpf_dir=dest)
        except bpfbuild.BuildError as e:
            if os.environ.get(REQUIRE_ENV) == "required":
                raise SystemExit(f"tapttrace: {e.message}") from None
            # Still a working package: the objects are built at first use where clang is, and
            # bcc compiles the sources where it isn't.
            self.warn(f"no BPF objects in this build ({e.message}); they will be built at first use")
            return
        clang = bpfbuild.which(*bpfbuild.CLANGS) or ""
        (dest / "BUILD.json").write_text(json.dumps({
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "clang": _tool_version([clang, "--version"]),
            "btf_of": platform.release(),  # whose vmlinux.h: names and shapes only (CO-RE)
            "objects": sorted(p.name for p in built),
        }, indent=1) + "\n")


setup(cmdclass={"build_py": BuildPyWithBpf})
