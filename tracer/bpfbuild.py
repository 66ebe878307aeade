"""Where the BPF C sources are, what their CO-RE objects are named, and how one is built.

Standard library only: setup.py's build hook loads this file by its path at wheel-build time,
when none of tapttrace's dependencies need be installed, and builds the objects the wheel
carries with the same code that builds one at run time (tracer/libbpf_loader.py).

An object's name is its content: the hash of its source, the headers it includes, its clang
flags and its variant's defines. Nothing of the kernel goes into it. CO-RE relocations adapt the
object to the running kernel when libbpf loads it, and what a kernel offers or lacks is decided
at load time (`.rodata` set by the loader, CO-RE guards in the C), so one object serves every
kernel. vmlinux.h comes from whatever kernel builds the object: CO-RE reads only the names and
shapes of the types from it, never their offsets.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

_PACKAGE = Path(__file__).resolve().parent
# A wheel carries bpf/ as tracer/_bpf/, with the objects built when the wheel was; a checkout
# (and an editable install of it) has bpf/ beside tracer/. The one definition of where they are.
PACKAGED_DIR = _PACKAGE / "_bpf"
BPF_DIR = PACKAGED_DIR if (PACKAGED_DIR / "follow.c").is_file() else _PACKAGE.parent / "bpf"

# Each object: its C source, the headers it includes (hashed with it) and its own clang flags
# (-mcpu=v3: follow's compare-and-swap claiming a trip slot, the exporter's on qtab).
OBJECTS = {
    "follow.c": (("loaders.h", "tapttrace.h", "kernel_compat.h"), ("-mcpu=v3",)),
    "exporter.c": (("loaders.h", "exporter.h", "kernel_compat.h"), ("-mcpu=v3",)),
}
# The one choice that can't wait for load time: before 5.12 the verifier refuses a program that
# holds a compare-and-swap anywhere, reachable or not (it checks every instruction's reserved
# fields before it walks the program). So each object comes in two builds, and the loader picks
# by probing (features.probe_bpf_atomics); the wheel carries both.
NO_ATOMICS = "-DTT_NO_ATOMICS"
VARIANTS: tuple[tuple[str, ...], ...] = ((), (NO_ATOMICS,))
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
LIBBPF_HEADER = Path("/usr/include/bpf/bpf_helpers.h")
CLANGS = ("clang-14", "clang", "clang-15", "clang-16", "clang-13")
BUILD_FIX = "apt-get install clang-14 libbpf-dev bpftool (scripts/setup.sh does)"


class BuildError(Exception):
    """An object could not be built: `missing` when a tool was not there, else a tool failed."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.message = message
        self.missing = missing


def _object(source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        return OBJECTS[source]
    except KeyError:
        raise ValueError(f"no BPF object is built from {source!r} (known: {', '.join(OBJECTS)})") from None


def object_name(source: str, defines: tuple[str, ...] = (), bpf_dir: Optional[Path] = None) -> str:
    """<source's stem>-<hash of the source, its headers, its flags and `defines`>.o"""
    headers, cflags = _object(source)
    h = hashlib.sha256()
    for name in (source, *headers):
        h.update(((bpf_dir or BPF_DIR) / name).read_bytes())
    h.update(" ".join(cflags + tuple(defines)).encode())
    return f"{Path(source).stem}-{h.hexdigest()[:16]}.o"


def which(*names: str) -> Optional[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin"
    return next((found for n in names if (found := shutil.which(n, path=path))), None)


def build_tools(source: str = "follow.c", btf: Path = VMLINUX_BTF) -> tuple[Optional[str], Optional[str], str]:
    """(clang, bpftool, problem): what building an object needs, and what is missing ("" if nothing)."""
    clang, bpftool = which(*CLANGS), which("bpftool")
    missing = [what for what, ok in (("clang", clang), ("bpftool", bpftool),
                                     ("libbpf's headers", LIBBPF_HEADER.is_file()),
                                     (f"kernel BTF at {btf} (for vmlinux.h)", btf.is_file())) if not ok]
    return clang, bpftool, (f"no {', '.join(missing)} to build bpf/{source}: {BUILD_FIX}" if missing else "")


def compile_object(source: str, defines: tuple[str, ...], target: Path, btf: Path = VMLINUX_BTF,
                   bpf_dir: Optional[Path] = None) -> None:
    """Build bpf/<source> with `defines` into `target` (written whole or not at all). BuildError."""
    src = bpf_dir or BPF_DIR
    _, cflags = _object(source)
    clang, bpftool, problem = build_tools(source, btf)
    if problem or clang is None or bpftool is None:  # no problem means both were found
        raise BuildError(problem, missing=True)
    with tempfile.TemporaryDirectory(prefix="tapttrace-bpf-") as tmp:
        vmlinux_h = Path(tmp, "vmlinux.h")
        out = Path(tmp, f"{Path(source).stem}.o")
        steps = [
            ([bpftool, "btf", "dump", "file", str(btf), "format", "c"], vmlinux_h),
            ([clang, "-target", "bpf", "-O2", "-g", *cflags, "-D__TARGET_ARCH_x86", *defines,
              f"-I{tmp}", f"-I{src}", "-c", str(src / source), "-o", str(out)], None),
        ]
        for argv, stdout_to in steps:
            with open(stdout_to, "wb") if stdout_to else open(os.devnull, "wb") as sink:
                r = subprocess.run(argv, stdout=sink, stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                said = " ".join(r.stderr.split())[:300]
                raise BuildError(f"building bpf/{source} failed at {Path(argv[0]).name}: {said}")
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(out, partial)
        os.replace(partial, target)  # readers see the whole object or none


def build_all(out_dir: Path, btf: Path = VMLINUX_BTF, bpf_dir: Optional[Path] = None) -> list[Path]:
    """Every object (each source, each variant) into out_dir, named by object_name: what a wheel
    carries. BuildError at the first that fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for source in OBJECTS:
        for variant in VARIANTS:
            target = out_dir / object_name(source, variant, bpf_dir)
            if not target.is_file():
                compile_object(source, variant, target, btf, bpf_dir)
            built.append(target)
    return built


def build_info() -> str:
    """Where the BPF objects come from, in words (`tapttrace --version`, doctor): the wheel's
    build (tracer/_bpf/BUILD.json, written by setup.py), or a checkout's sources."""
    try:
        info = json.loads((PACKAGED_DIR / "BUILD.json").read_text())
        return (f"BPF objects built {info['built']} by {info['clang'] or 'clang'} (vmlinux.h of "
                f"{info['btf_of']}; CO-RE): {', '.join(info['objects'])}")
    except FileNotFoundError:
        where = "this package's" if BPF_DIR == PACKAGED_DIR else "the checkout's"
        return f"BPF objects: none packaged; built at first use from {where} sources in {BPF_DIR}"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"BPF objects: {PACKAGED_DIR / 'BUILD.json'} is unreadable ({e})"
