"""Install it the way an operator does (issue 12): the README's "Install on a hypervisor" commands,
run as written, build the wheel in this checkout and install it into a fresh venv of Debian's
python outside the repository; then, from /, with clang and llc hidden (a private mount namespace
binds an empty file over each), the installed `tapttrace` runs doctor, follows a lab guest,
diagnoses the seed scenario (a tap carrying the guest's MAC: local-mac) and serves the exporter's
metrics to a scrape. No object may be built on the way: the wheel's are loaded.

Host only (not in the kernel matrix): building a wheel needs this machine's clang and an index
for the dependencies."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
from test_follow_kernel import WAIT, Follow, echoes, pings_done, run_window

from tracer.bpfbuild import CLANGS
from tracer.lab import Lab, LabSpec

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
UNIT = ROOT / "deploy" / "systemd" / "tapttrace-exporter.service"
# Where the README installs to, and where it builds the wheel: the test puts both in its own
# temporary directory.
README_VENV, README_DIST = "/opt/tapttrace", "dist"
# Hidden at run time: an operator's hypervisor has no compiler.
COMPILERS = (*CLANGS, "llc", "llc-14", "llc-15", "llc-16", "llc-13")


def readme_install_commands() -> tuple[list[str], list[str], list[str]]:
    """The README's install block: (apt packages, build-machine commands, hypervisor commands)."""
    block = re.search(r"<!-- install:begin -->\n```sh\n(.*?)```\n<!-- install:end -->", README.read_text(), re.S)
    assert block, "README.md has no install block between <!-- install:begin --> and <!-- install:end -->"
    packages: list[str] = []
    build: list[str] = []
    host: list[str] = []
    on = build
    for line in block.group(1).splitlines():
        if line.startswith("# on the hypervisor"):
            on = host
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("apt-get install"):  # not run here: checked to be installed
            packages += [w for w in line.split()[2:] if not w.startswith("-")]
            continue
        on.append(line)
    assert build and host and packages
    return packages, build, host


def hiding_compilers(empty: Path) -> list[str]:
    """A command prefix: a private mount namespace where every clang and llc is an empty,
    non-executable file (the bind mount covers what the name resolves to), then cwd /."""
    found = {os.path.realpath(p) for name in COMPILERS if (p := shutil.which(name, path="/usr/bin:/usr/sbin"))}
    assert found, "no clang here: the wheel could not have been built with objects"
    mounts = "".join(f"mount --bind {shlex.quote(str(empty))} {shlex.quote(p)} && " for p in sorted(found))
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts}cd / && exec "$@"', "sh"]


@pytest.fixture(scope="module")
def installed():
    """(command prefix that runs the installed tapttrace with the compilers hidden, venv, BPF cache).
    Everything it makes is in one temporary directory, removed on every way out."""
    packages, build, host = readme_install_commands()
    status = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
                            capture_output=True, text=True)
    assert all(line.endswith(" installed") for line in status.stdout.splitlines()) and \
        len(status.stdout.splitlines()) == len(packages), status.stdout + status.stderr
    unit = UNIT.read_text()
    assert f"ExecStart={README_VENV}/bin/tapttrace exporter" in unit  # the unit runs what the README installs

    # setuptools builds in the checkout's build/ (ignored by git): removed again if this made it
    made_build = not (ROOT / "build").exists()
    tmp = Path(tempfile.mkdtemp(prefix="whl-install-"))
    try:
        venv, dist, cache = tmp / "venv", tmp / "dist", tmp / "bpf-cache"
        empty = tmp / "empty"
        empty.write_bytes(b"")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp), "TAPTTRACE_BPF_CACHE": str(cache),
               "COLUMNS": "400",  # doctor's lines unwrapped
               # the machine's pip configuration (its index) stays; nothing of this checkout's venv
               **{k: v for k, v in os.environ.items() if k.startswith("PIP_") or k == "CI"}}

        def sh(line: str, cwd: Path, prefix: tuple[str, ...] = ()) -> str:
            line = line.replace(README_VENV, str(venv)).replace(f"{README_DIST}/", f"{dist}/")
            line = line.replace(f"-w {README_DIST} ", f"-w {dist} ")
            p = subprocess.run([*prefix, "bash", "-euc", line], cwd=cwd, env=env, capture_output=True, text=True,
                               timeout=600)
            assert p.returncode == 0, f"{line}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
            return p.stdout

        for line in build:  # in the checkout, with its compilers
            sh(line, ROOT)
        hide = hiding_compilers(empty)
        said = subprocess.run([*hide, "sh", "-c", "command -v clang-14 clang llc-14 llc || echo hidden"], env=env,
                              capture_output=True, text=True)
        assert said.stdout.strip() == "hidden", said  # the namespace really has no compiler
        outputs = [sh(line, Path("/"), tuple(hide)) for line in host]
        assert any("follow loader: libbpf" in out for out in outputs), outputs  # the README's doctor
        yield [*hide, str(venv / "bin" / "tapttrace")], venv, cache, env, outputs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_build:
            shutil.rmtree(ROOT / "build", ignore_errors=True)


def test_doctor_loads_the_wheels_objects_without_a_compiler(installed):
    command, venv, cache, env, outputs = installed
    doctor = outputs[-1]
    for program in ("follow", "exporter"):
        assert re.search(rf"✓ {program} loader: libbpf.* {venv}/lib/python3\.\d+/site-packages/tracer/_bpf/"
                         rf"{program}-\w+\.o is built", doctor), doctor
        assert f"✓ {program} program: bpf/{program}.c loaded by libbpf" in doctor
    assert "✓ BPF objects: built " in doctor and "✓ libbpf: libbpf v1." in doctor
    version = subprocess.run([*command, "--version"], env=env, capture_output=True, text=True, check=True).stdout
    assert re.match(r"tapttrace \d+\.\d+\.\d+\nBPF objects built \S+ by .*clang.*: exporter-\w+\.o, .*follow-",
                    version), version
    assert not list(cache.glob("*.o"))  # nothing was compiled


def test_follow_a_lab_guest(installed):
    command, _, cache, env, _ = installed
    with Lab(LabSpec()) as lab:
        f = Follow(lab.guest_mac, "--netns", lab.hv_ns, "--ip", lab.guest_ip, command=command, cwd=Path("/"))
        ping = lab.ping_guest_from_remote(count=3)
        journeys, _, _ = f.stop(until=pings_done(lab.guest_mac, 3, 3))
    assert ping.received == 3
    assert [j["verdict"] for j in echoes(journeys)] == ["delivered"] * 3
    assert not list(cache.glob("*.o"))


def test_diagnose_the_seed_scenario(installed):
    command, _, cache, env, _ = installed
    with Lab(LabSpec(tap_mac="guest")) as lab:
        argv = [*command, "diagnose", lab.guest_mac, "--ip", lab.guest_ip, "--duration", "600", "--json"]
        code, out, err = run_window(argv, lambda: lab.ping_guest_from_remote(count=3, interval=0.2, timeout=0.5),
                                    cwd=Path("/"))
    report = json.loads(out)
    assert code == 1 and report["cause"] == "local-mac", err
    assert any(lab.tap in e for e in report["evidence"])
    assert not list(cache.glob("*.o"))


def test_exporter_serves_a_scrape(installed):
    command, _, cache, env, _ = installed
    with Lab(LabSpec()) as lab:
        # --netns: other runs' taps on this machine must not fill its maps (docs/testing.md, `watch`)
        proc = subprocess.Popen([*command, "exporter", "--listen", "127.0.0.1:0", "--netns", lab.hv_ns], env=env,
                                stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stderr.readline()
            while line.startswith("tapttrace: note: "):  # what this kernel lacks (the FDB decisions here)
                line = proc.stderr.readline()
            url = re.search(r"serving (http://\S+/metrics)", line)
            assert url, line + proc.stderr.read()
            lab.ping_guest_from_remote(count=3)
            with urllib.request.urlopen(url.group(1), timeout=WAIT) as r:
                body = r.read().decode()
            assert f'tap="{lab.tap}"' in body and "tapttrace_tap_frames_total" in body, body[:2000]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=WAIT)
            assert proc.returncode == 0 and "programs detached" in err, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not list(cache.glob("*.o"))
