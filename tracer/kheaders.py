"""Find kernel headers bcc can compile against, merging Debian's split packages when needed.

bcc compiles tapttrace's C at run time and needs <dir>/include/linux/kconfig.h. With
BCC_KERNEL_SOURCE set it uses that one directory as both build and source tree, but
Debian ships generated files (linux-headers-X-amd64) and sources (linux-headers-X-common)
apart. When the running kernel has no headers of its own we therefore lay a tree of
symlinks over both, once, in a cache directory, and point BCC_KERNEL_SOURCE at it.
Older headers work for tapttrace because its BPF code reads kernel structs only
through offsets taken from the running kernel's BTF.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import EnvironmentProblem

MODULES_DIR = "/lib/modules"
USR_SRC = "/usr/src"
CACHE_DIR = "/var/cache/tapttrace/kernel-headers"
KHEADERS_ARCHIVE = "/sys/kernel/kheaders.tar.xz"
_KCONFIG = "include/linux/kconfig.h"
_STAMP = ".tapttrace-headers.json"

# Debian's flavour suffix for each machine, used to pick among installed header packages.
_DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armmp", "ppc64le": "powerpc64le",
                "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class KernelHeaders:
    """Which kernel headers bcc will compile against."""

    release: str  # the kernel release the headers are for ("6.1.0-56-amd64")
    running: str  # uname -r
    path: str  # the tree bcc reads (BCC_KERNEL_SOURCE when `env` is set)
    source: str  # "running" | "kheaders" | "installed" | "merged"
    build_dir: str = ""  # where the generated files come from
    source_dir: str = ""  # where the header sources come from

    @property
    def matches_running(self) -> bool:
        return self.release == self.running

    @property
    def env(self) -> dict[str, str]:
        """Environment bcc needs for these headers ({} when it finds them by itself)."""
        if self.source in ("running", "kheaders"):
            return {}
        return {"BCC_KERNEL_SOURCE": self.path}

    def apply(self) -> None:
        """Export `env` into this process, before bcc compiles anything."""
        os.environ.update(self.env)

    def describe(self) -> str:
        if self.source == "running":
            return f"{self.release} (the running kernel's, {self.path})"
        if self.source == "kheaders":
            return f"{self.release} (the running kernel's, from {self.path})"
        how = "merged symlink tree" if self.source == "merged" else "installed"
        return f"{self.release} ({how} at {self.path}; running kernel is {self.running})"


def _has_kconfig(path: Path) -> bool:
    return (path / _KCONFIG).is_file()


def _bcc_finds_itself(modules: Path, release: str) -> Optional[Path]:
    """The tree bcc uses without help, by its own rule (loader.cc), or None."""
    kdir = modules / release
    # With both build/ and source/ bcc reads source/ and adds build/'s generated includes.
    if (kdir / "build").is_dir() and (kdir / "source").is_dir():
        return kdir / "source" if _has_kconfig(kdir / "source") else None
    return kdir / "build" if _has_kconfig(kdir / "build") else None


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release))


@dataclass(frozen=True)
class _Candidate:
    release: str
    build: Path
    source: Path


def _candidates(modules: Path, usr_src: Path) -> Iterator[_Candidate]:
    # /lib/modules/X/{build,source} are what the headers packages install on Debian and Ubuntu.
    if modules.is_dir():
        for kdir in modules.iterdir():
            build, source = kdir / "build", kdir / "source"
            if _has_kconfig(build):
                yield _Candidate(kdir.name, build.resolve(), build.resolve())
            elif (build / "include/generated").is_dir() and _has_kconfig(source):
                yield _Candidate(kdir.name, build.resolve(), source.resolve())
    # Headers unpacked without /lib/modules links (e.g. in a container): pair them by name.
    if usr_src.is_dir():
        for common in usr_src.glob("linux-headers-*-common"):
            if not _has_kconfig(common):
                continue
            version = common.name[len("linux-headers-") : -len("-common")]
            for build in usr_src.glob(f"linux-headers-{version}-*"):
                if build != common and (build / "include/generated").is_dir():
                    yield _Candidate(build.name[len("linux-headers-") :], build.resolve(), common.resolve())


def _pick(candidates: list[_Candidate], running: str, machine: str) -> Optional[_Candidate]:
    flavour = _DEBIAN_ARCH.get(machine, machine)
    usable = [c for c in candidates if c.release.endswith(flavour) or c.build == c.source]

    def rank(c: _Candidate) -> tuple:
        # Newest first; at equal version the plain flavour ("-amd64") over "-rt-amd64"/"-cloud-amd64".
        plain = c.release.endswith(f"-{flavour}") and not re.search(r"-(rt|cloud)-", c.release)
        return (c.release == running, _version_key(c.release.split("-" + flavour)[0]), plain)

    return max(usable or candidates, key=rank, default=None)


def _merge(source: Path, build: Path, into: Path) -> None:
    """Fill `into` with symlinks to source and build; directories in both are merged."""
    into.mkdir(parents=True, exist_ok=True)
    names = set(os.listdir(source)) | set(os.listdir(build))
    for name in sorted(names):
        s, b = source / name, build / name
        if s.exists() and b.exists() and s.resolve() != b.resolve() and s.is_dir() and b.is_dir():
            _merge(s, b, into / name)
        else:
            # The build tree's copy wins (its Makefile includes the source one anyway).
            (into / name).symlink_to(b if b.exists() else s)


def _stamp(c: _Candidate) -> dict[str, str]:
    return {"release": c.release, "build": str(c.build), "source": str(c.source)}


def _cached_tree(c: _Candidate, cache_dir: Path) -> Path:
    """The merged tree for `c` under `cache_dir`, built if missing or stale."""
    target = cache_dir / c.release
    try:
        if json.loads((target / _STAMP).read_text()) == _stamp(c) and _has_kconfig(target):
            return target
    except (OSError, ValueError):
        pass
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed into place, so a concurrent run never sees half a tree.
    tmp = Path(tempfile.mkdtemp(prefix=f".{c.release}.", dir=cache_dir))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the headers are public anyway
        _merge(c.source, c.build, tmp)
        (tmp / _STAMP).write_text(json.dumps(_stamp(c)))
        if target.exists() or target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _has_kconfig(target):  # not another run's fresh tree: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def install_hint(running: str) -> str:
    return f"apt-get install linux-headers-{running} (or linux-headers-amd64 for the newest Debian headers)"


def find_headers(
    modules: str = MODULES_DIR,
    usr_src: str = USR_SRC,
    cache_dir: str = CACHE_DIR,
    release: Optional[str] = None,
    kheaders_archive: str = KHEADERS_ARCHIVE,
    machine: Optional[str] = None,
) -> KernelHeaders:
    """Headers for bcc: the running kernel's if present, else the newest installed (merged if split)."""
    running = release or os.uname().release
    mods = Path(modules)
    native = _bcc_finds_itself(mods, running)
    if native is not None:
        return KernelHeaders(running, running, str(native), "running")
    # bcc unpacks CONFIG_IKHEADERS' archive by itself when no tree is found.
    if Path(kheaders_archive).is_file():
        return KernelHeaders(running, running, kheaders_archive, "kheaders")
    chosen = _pick(list(_candidates(mods, Path(usr_src))), running, machine or platform.machine())
    if chosen is None:
        raise EnvironmentProblem(
            f"no kernel headers found for bcc (looked in {modules} and {usr_src}): {install_hint(running)}"
        )
    if chosen.build == chosen.source:
        return KernelHeaders(chosen.release, running, str(chosen.build), "installed",
                             str(chosen.build), str(chosen.source))
    try:
        tree = _cached_tree(chosen, Path(cache_dir))
    except OSError as e:
        raise EnvironmentProblem(
            f"cannot build the merged kernel-headers tree in {cache_dir} ({e.strerror}): "
            f"run as root or {install_hint(running)}"
        ) from e
    return KernelHeaders(chosen.release, running, str(tree), "merged", str(chosen.build), str(chosen.source))
