"""`python -m bench.floor`: attach bench/hooks_floor.c (four tp_btf programs that return at once,
on the tracepoints tapttrace hooks for every frame) until SIGINT or SIGTERM, then detach and exit 0.
The harness's `hooks-floor` configuration runs it like a tapttrace command and reads its programs'
bpf_stats: the floor under the exporter's and follow's BPF time a frame on this machine.

Built with the clang tapttrace's objects are built with (tracer/bpfbuild.py), loaded with the
libbpf tapttrace loads them with (tracer/libbpf_loader.py)."""
from __future__ import annotations

import ctypes
import errno
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tracer.bpfbuild import CLANGS, which
from tracer.errors import EnvironmentProblem, KernelError
from tracer.libbpf_loader import libbpf, open_object

SOURCE = Path(__file__).resolve().parent / "hooks_floor.c"


def build(out: Path) -> None:
    clang = which(*CLANGS)
    if clang is None:
        raise EnvironmentProblem("no clang to build bench/hooks_floor.c (apt-get install clang-14)")
    r = subprocess.run([clang, "-target", "bpf", "-O2", "-g", "-c", str(SOURCE), "-o", str(out)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise EnvironmentProblem(f"building bench/hooks_floor.c failed: {' '.join(r.stderr.split())[:300]}")


def main() -> int:
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # taken by sigwait below: none is lost before it
    links: list[int] = []
    obj = 0
    lib = None
    try:
        lib = libbpf()
        with tempfile.TemporaryDirectory(prefix="ttbench-floor-") as tmp:
            path = Path(tmp, "hooks_floor.o")
            build(path)
            obj = open_object(lib, path)
            err = lib.bpf_object__load(obj)
            if err != 0:
                raise KernelError(f"the floor's programs did not load: {errno.errorcode.get(-err, err)}")
        prog = lib.bpf_object__next_program(obj, None)
        while prog:
            link = lib.bpf_program__attach(prog)
            if not link:
                raise KernelError(f"{lib.bpf_program__name(prog).decode()} did not attach: "
                                  f"{errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())}")
            links.append(link)
            prog = lib.bpf_object__next_program(obj, prog)
        print(f"attached {len(links)} empty programs; Ctrl-C to stop", file=sys.stderr, flush=True)
        signal.sigwait(stops)
        return 0
    except (EnvironmentProblem, KernelError) as e:
        print(f"bench.floor: {e.message}", file=sys.stderr)
        return 2
    finally:
        if lib is not None:
            for link in links:
                lib.bpf_link__destroy(link)
            if obj:
                lib.bpf_object__close(obj)


if __name__ == "__main__":
    sys.exit(main())
