"""The kernel matrix: fetch stock Debian kernels by package name, boot each under qemu with
virtme-ng (sharing this machine's root filesystem, so the checkout and its .venv are there), run
tapttrace's doctor, its demo and the kernel tests each kernel is held to, and render the README's
"Supported kernels" table from the results.

    python -m tests.kernels.matrix fetch [--kernel 6.1]
    python -m tests.kernels.matrix run --kernel 6.1 -- .venv/bin/tapttrace doctor
    python -m tests.kernels.matrix matrix [--kernel 6.1 ...] [--host] [--results DIR]
    python -m tests.kernels.matrix table [--write-readme]

Kernels and results live under /var/lib/tapttrace (never in the repository). Not /var/cache or
/var/tmp: virtme-ng mounts a tmpfs on those inside the guest, so a guest could not see a kernel's
modules there.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import click

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TAPTTRACE_KERNELS", "/var/lib/tapttrace/kernels"))
RESULTS = Path(os.environ.get("TAPTTRACE_MATRIX_RESULTS", "/var/lib/tapttrace/matrix-results"))
README = ROOT / "README.md"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"
GUEST_SCRIPT = Path(__file__).with_name("guest.sh")


@dataclass(frozen=True)
class Kernel:
    """One row of the matrix: a stock kernel, named by its series, found by package name."""

    name: str  # "6.1"
    distro: str  # "Debian 12"
    suite: str  # the Debian suite whose newest kernel of the series is taken
    package: str  # regex of the linux-image-…-unsigned package; group 1 is the release (uname -r)
    # pytest node ids run inside this kernel (beyond doctor and demo); a kernel test not run on a
    # kernel is declared in tests/kernels/support.py's NOT_RUN with the reason.
    tests: tuple[str, ...] = ()


FOLLOW = "tests/test_follow_kernel.py"
DIAGNOSE = "tests/test_diagnose_kernel.py"
EXPORTER = "tests/test_exporter_kernel.py"
CORE_TESTS = (
    # the lab every other test stands on: the bridge knows the guest before its first frame (the
    # guest's announcement was lost on a port the bridge had not yet seen carrier on: 6.12, TCG)
    "tests/test_lab.py::test_the_bridge_knows_the_guest_when_the_lab_is_ready",
    f"{FOLLOW}::test_healthy_guest_frames_are_delivered_to_the_tap",
    f"{FOLLOW}::test_tap_carrying_the_guest_mac_sends_frames_to_the_host_stack_never_the_tap",
    # every cause diagnose names from traffic, with and without br_netfilter (issue 11): the
    # evidence differs by kernel (drop reasons, the bridge's own hops) and by br_netfilter's path
    *(f"{DIAGNOSE}::{test}[{br_nf}]" for test in (
        "test_healthy_guest_is_ok",
        "test_tap_carrying_the_guest_mac_is_local_mac",
        "test_tap_outside_the_bridge_is_port_not_in_bridge",
        "test_tap_admin_down_is_port_not_forwarding",
        "test_guest_mac_in_the_fdb_on_the_uplink_is_fdb_wrong_port",
        "test_stp_port_not_forwarding",
        "test_netfilter_drop_of_bridged_frames_is_netfilter_drop",
        "test_stopped_guest_is_guest_not_reading",
        "test_frames_larger_than_the_tap_mtu_is_mtu",
        "test_flood_flags_off_is_flood_blocked",
    ) for br_nf in ("plain", "br_netfilter")),
    f"{FOLLOW}::test_bcc_loader_delivers_the_same_journeys",
    f"{EXPORTER}::test_delivered_and_forwarded_pings_are_counted_exactly",
    # the exporter's verdicts are follow's for the same frames (5.10: an echo reply a raw socket
    # took is freed without a reason at icmp_rcv; local, as NO_SOCKET says on 5.17+)
    f"{EXPORTER}::test_verdicts_agree_with_follow",
    # the bridge's FDB decisions at its own functions: fentry (6.1, 6.12), kprobes (5.10), none here
    f"{EXPORTER}::test_fdb_decisions_are_counted_once_where_the_bridge_makes_them",
    # nothing left behind: follow ended by its count or by SIGTERM, the exporter by SIGTERM
    f"{FOLLOW}::test_no_program_remains_after_any_ending[count]",
    f"{FOLLOW}::test_no_program_remains_after_any_ending[sigterm]",
    f"{EXPORTER}::test_sigterm_detaches_every_program",
    # follow behind the traffic (stopped): every frame still accounted, journeys counted in the
    # kernel by path (5.12+: trips); on 5.10 the loss is counted instead (issue 13)
    "tests/test_trips_kernel.py::test_every_frame_is_accounted_for_when_follow_is_behind",
)
KERNELS = (
    Kernel("5.10", "Debian 11", "bullseye", r"linux-image-(5\.10\.0-\d+-amd64)-unsigned", CORE_TESTS),
    Kernel("6.1", "Debian 12", "bookworm", r"linux-image-(6\.1\.0-\d+-amd64)-unsigned", CORE_TESTS),
    Kernel("6.12", "Debian 13", "trixie", r"linux-image-(6\.12\.\d+\+deb13-amd64)-unsigned", CORE_TESTS),
)
BY_NAME = {k.name: k for k in KERNELS}


class MatrixError(click.ClickException):
    exit_code = 2


# -- fetching --------------------------------------------------------------------------


def _apt_options() -> list[str]:
    """apt options for a private configuration under CACHE: the system's sources are untouched."""
    base = CACHE / "apt"
    sources = base / "sources.list"
    if not sources.is_file():
        (base / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (base / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        lines = []
        for k in KERNELS:  # the newest kernel of a release comes through its security or updates suite
            lines += [f"deb [signed-by={KEYRING}] {MIRROR} {k.suite} {k.suite}-updates main",
                      f"deb [signed-by={KEYRING}] {MIRROR}-security {k.suite}-security main"]
        sources.write_text("\n".join(lines) + "\n")
    return [f"-oDir::Etc::sourcelist={sources}", "-oDir::Etc::sourceparts=-", f"-oDir::State::Lists={base / 'lists'}",
            f"-oDir::Cache={base / 'cache'}", "-oAPT::Sandbox::User=root", "-qq"]


def _run(*argv: str, cwd: Optional[Path] = None) -> str:
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise MatrixError(f"{' '.join(argv[:3])}…: exit {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}")
    return p.stdout


def newest_package(kernel: Kernel) -> tuple[str, str]:
    """(package, release) of the newest kernel of the series the archive offers."""
    opts = _apt_options()
    if not any((CACHE / "apt" / "lists").glob("*Packages*")):
        _run("apt-get", *opts, "update")
    found = []
    for line in _run("apt-cache", *opts, "pkgnames", "linux-image-").split():
        m = re.fullmatch(kernel.package, line)
        if m:
            found.append((tuple(int(x) for x in re.findall(r"\d+", m.group(1))), line, m.group(1)))
    if not found:
        raise MatrixError(f"no package matching {kernel.package} in {kernel.suite}")
    _, package, release = max(found)
    return package, release


@dataclass(frozen=True)
class Fetched:
    kernel: Kernel
    release: str
    root: Path  # the extracted package

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"


def fetch(kernel: Kernel) -> Fetched:
    """Download and extract the kernel once; make its modules loadable by virtme-ng's initramfs
    (looked for in <root>/lib/modules/<release>, not compressed) and by the guest's modprobe."""
    stamp = CACHE / f"{kernel.name}.json"
    if stamp.is_file():
        saved = json.loads(stamp.read_text())
        done = Fetched(kernel, saved["release"], Path(saved["root"]))
        if done.vmlinuz.is_file():
            return done
    package, release = newest_package(kernel)
    root = CACHE / release
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=CACHE))
    try:
        _run("apt-get", *_apt_options(), "download", package, cwd=work)
        (deb,) = work.glob("*.deb")
        _run("dpkg-deb", "-x", str(deb), str(work / "root"))
        modules = work / "root" / "lib" / "modules"
        usr_modules = work / "root" / "usr" / "lib" / "modules"  # Debian 13 ships them under /usr
        if usr_modules.is_dir() and not modules.is_dir():
            modules.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(usr_modules), str(modules))
        compressed = [str(p) for p in modules.rglob("*.ko.xz")]
        for i in range(0, len(compressed), 200):  # virtme-ng's initramfs loads .ko and .ko.zst only
            _run("xz", "-d", "-T0", *compressed[i:i + 200])
        _run("depmod", "-b", str(work / "root"), release)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(work / "root", root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    done = Fetched(kernel, release, root)
    stamp.write_text(json.dumps({"release": release, "root": str(root), "package": package}))
    return done


# -- booting ------------------------------------------------------------------------------


def vng() -> str:
    """virtme-ng in the checkout's venv (installed there if missing)."""
    venv_bin = ROOT / ".venv" / "bin"
    if not (venv_bin / "vng").exists():
        _run(str(venv_bin / "pip"), "install", "-q", "--disable-pip-version-check", "virtme-ng")
    return str(venv_bin / "vng")


# virtme-ng shares the root filesystem through the Rust virtiofsd (Debian 13 only) or else 9p,
# which under TCG is slow everywhere and ~8x slower on 5.10 (`import tracer.cli`: 87 s on 9p,
# 8 s on virtiofs). Debian 12's qemu ships the C virtiofsd: tests/kernels/bin/virtiofsd speaks
# virtme-ng's options to it.
C_VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
SHIM_DIR = Path(__file__).resolve().parent / "bin"


def virtiofsd_dir() -> str:
    """The PATH entry that gives virtme-ng a virtiofsd ('' when a Rust one is there or no C one)."""
    return f"{SHIM_DIR}:" if C_VIRTIOFSD.exists() and not shutil.which("virtiofsd") else ""


# The qemus running now: rows run in threads, and a SIGTERM reaches only the main thread, which
# kills these so the threads' waits end (else they would wait out their timeout).
RUNNING: set[subprocess.Popen] = set()


def kill_running() -> None:
    for p in list(RUNNING):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def boot(fetched: Fetched, command: str, out_dir: Path, timeout: float) -> int:
    """Run `command` (bash) as root inside the kernel, in the checkout; its output goes to
    out_dir/console.log. The guest writes out_dir (shared read-write); everything else it writes
    lands in tmpfs overlays. qemu is gone on every exit path (its own process group)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rc_file = out_dir / "rc"
    rc_file.unlink(missing_ok=True)
    inner = f"cd {shlex.quote(str(ROOT))}; ( {command} ) > {out_dir}/console.log 2>&1; echo $? > {rc_file}"
    env = {**os.environ, "PATH": f"{virtiofsd_dir()}{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
           "VIRTIOFSD_LOG": str(out_dir / "virtiofsd.log")}
    argv = [vng(), "-r", str(fetched.vmlinuz), "--disable-kvm", "--memory", "2G", "--cpus", "2",
            # TCG's two vCPUs' TSCs look unsynchronised to 5.10, which then reads the emulated HPET
            # on every clock read (64 µs each): everything ran ~3x slower.
            "--append", "tsc=reliable clocksource=tsc",
            # The guest kernel's warnings and worse (an oops, a panic, its OOM killer) in vng.log:
            # a 6.12 guest once stopped mid-test with nothing said anywhere (12-06, rc 124).
            "--verbose", "--append", "loglevel=4",
            "--overlay-rwdir", "/tmp", "--rwdir", str(out_dir), "--exec", inner]
    with open(out_dir / "vng.log", "w") as log:
        p = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        RUNNING.add(p)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with open(out_dir / "console.log", "a") as console:
                console.write(f"\nmatrix: the guest was stopped after {timeout:.0f} s\n")
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            RUNNING.discard(p)
    try:
        return int(rc_file.read_text())
    except (OSError, ValueError):
        return 124  # the guest never finished its command


# -- the matrix ----------------------------------------------------------------------------


def guest_command(name: str, out_dir: Path, tests: tuple[str, ...]) -> str:
    """The guest's command. It travels on the kernel's command line (virtme-ng's virtme.exec=,
    base64), which x86 cuts at 2048 bytes: a longer one is cut off and the guest hangs with
    nothing to run. So the test ids go in a file in out_dir, which the guest shares."""
    (out_dir / "tests.txt").write_text("".join(f"{t}\n" for t in tests))
    return " ".join(shlex.quote(a) for a in ("bash", str(GUEST_SCRIPT), name, str(out_dir), f"@{out_dir}/tests.txt"))


def run_row(name: str, out_dir: Path, timeout: float) -> dict:
    """One kernel's row: doctor, demo and its tests, inside that kernel (or here, for --host)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    started = time.monotonic()
    if name == "host":
        tests = CORE_TESTS
        with open(out_dir / "console.log", "w") as log:
            rc = subprocess.run(["bash", str(GUEST_SCRIPT), "host", str(out_dir), *tests], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT).returncode
        release = os.uname().release
    else:
        kernel = BY_NAME[name]
        fetched = fetch(kernel)
        rc = boot(fetched, guest_command(name, out_dir, kernel.tests), out_dir, timeout)
        release = fetched.release
    row = {"kernel": name, "release": release, "rc": rc, "seconds": round(time.monotonic() - started)}
    (out_dir / "row.json").write_text(json.dumps(row))
    return row


@click.group()
def main() -> None:
    """The kernel matrix (docs/kernels.md)."""
    # SIGTERM (a CI time limit, a kill) unwinds like Ctrl-C, so boot()'s finally kills qemu and its
    # virtiofsd: Python's default SIGTERM would leave them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _kernels(names: tuple[str, ...]) -> list[Kernel]:
    bad = [n for n in names if n not in BY_NAME]
    if bad:
        raise MatrixError(f"unknown kernel {bad[0]!r} (known: {', '.join(BY_NAME)})")
    return [BY_NAME[n] for n in names] if names else list(KERNELS)


@main.command("fetch")
@click.option("--kernel", "names", multiple=True, help="A kernel of the matrix (all by default).")
def fetch_command(names: tuple[str, ...]) -> None:
    """Download and extract the kernels (cached)."""
    for k in _kernels(names):
        f = fetch(k)
        click.echo(f"{k.name}: {f.release} at {f.root}")


@main.command("run")
@click.option("--kernel", "name", required=True)
@click.option("--timeout", type=float, default=1800, show_default=True)
@click.argument("command", nargs=-1, required=True)
def run_command(name: str, timeout: float, command: tuple[str, ...]) -> None:
    """Run COMMAND as root inside one kernel of the matrix."""
    (kernel,) = _kernels((name,))
    out = Path(tempfile.mkdtemp(prefix=f"run-{name}-", dir=CACHE))
    try:
        rc = boot(fetch(kernel), " ".join(shlex.quote(c) for c in command), out, timeout)
        sys.stdout.write((out / "console.log").read_text(errors="replace"))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    sys.exit(rc)


@main.command("matrix")
@click.option("--kernel", "names", multiple=True, help="A kernel of the matrix (all by default).")
@click.option("--host/--no-host", default=True, show_default=True, help="Also the row of the running kernel.")
@click.option("--results", type=click.Path(path_type=Path), default=RESULTS, show_default=True)
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds per kernel.")
@click.option("--jobs", type=click.IntRange(1, 8), default=3, show_default=True,
              help="Rows run at once (each guest is its own qemu).")
def matrix_command(names: tuple[str, ...], host: bool, results: Path, timeout: float, jobs: int) -> None:
    """Doctor, demo and each kernel's tests on every kernel; exit 1 if any failed."""
    # Rows run side by side: a TCG guest spends most of its time on one vCPU thread (the guest's
    # Python), so on 2 cores three guests take ~half the time of one after another (docs/kernels.md).
    # The kernels are fetched first, one at a time (apt and depmod share state).
    kernels = _kernels(names)
    for k in kernels:
        fetch(k)
    names_in_order = (["host"] if host else []) + [k.name for k in kernels]

    def one(name: str) -> dict:
        row = run_row(name, results / name, timeout)
        click.echo(f"matrix: {row['kernel']} ({row['release']}): {'ok' if row['rc'] == 0 else 'FAILED'} "
                   f"in {row['seconds']} s", err=True)
        return row

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            rows = list(pool.map(one, names_in_order))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            kill_running()
            raise
    failed = [r for r in rows if r["rc"] != 0]
    for r in failed:
        log = results / r["kernel"] / "console.log"
        tail = log.read_text(errors="replace").splitlines()[-40:] if log.is_file() else []
        click.echo(f"---- {r['kernel']} ({r['release']}) failed, exit {r['rc']}; last lines:\n" + "\n".join(tail),
                   err=True)
    click.echo(render_table(results))
    sys.exit(1 if failed else 0)


# -- the README's table --------------------------------------------------------------------


def render_table(results: Path = RESULTS) -> str:
    from .support import lost_features

    lines = ["| kernel | distribution | follow / exporter loader | hooks | what is lost | demo | kernel tests |",
             "|---|---|---|---|---|---|---|"]
    for name in ("host", *BY_NAME):
        d = results / name
        try:
            row = json.loads((d / "row.json").read_text())
            f = json.loads((d / "facts.json").read_text())
        except (OSError, ValueError):
            continue
        distro = BY_NAME[name].distro if name in BY_NAME else "this machine"
        loaders = f"{f.get('follow_loader', '?')} / {f.get('exporter_loader', '?')}"
        hooks = "tp_btf" if f.get("tp_btf") else "raw tracepoints"
        bridge = f.get("bridge_hook", "none")
        home = {"module": " (bridge module)", "vmlinux": "",
                "": " (bridge module without BTF: module BTF came in 5.11)"}.get(f.get("bridge_btf", ""), "")
        plan = f.get("bridge_plan") or {}
        used = sorted({kind for kind in plan.values() if kind != "none"})
        if used:  # the bridge's own decisions as hops (features.plan_bridge_hooks)
            n = sum(kind != "none" for kind in plan.values())
            hooks += f"; inside the bridge: {' + '.join(used)} ({n} of {len(plan)} functions)" + home
        elif plan:  # none of them can be hooked here
            hooks += "; inside the bridge: none"
        else:  # results from before the plan was recorded
            hooks += f"; br_flood: {bridge}" + (home if bridge != "none" else "")
        lost = "; ".join(lost_features(f)) or "nothing"
        demo = _read(d / "demo.rc")
        demo_text = ("exit 0" if demo == "0" else f"exit {demo}") + f" ({_read(d / 'demo.seconds')} s)"
        tests = _junit(d / "pytest.xml")
        lines.append(f"| {row['release']} | {distro} | {loaders} | {hooks} | {lost} | {demo_text} | {tests} |")
    return "\n".join(lines)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "?"


def _junit(path: Path) -> str:
    import xml.etree.ElementTree as ET

    try:
        suite = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return "none run (see tests/kernels/support.py)"
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return f"{n - failed - skipped} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")


@main.command("table")
@click.option("--results", type=click.Path(path_type=Path), default=RESULTS, show_default=True)
@click.option("--write-readme", is_flag=True, help="Replace the table between the README's kernels markers.")
def table_command(results: Path, write_readme: bool) -> None:
    """The "Supported kernels" table from the last matrix run."""
    table = render_table(results)
    if write_readme:
        text = README.read_text()
        begin, end = "<!-- kernels:begin -->", "<!-- kernels:end -->"
        if begin not in text or end not in text:
            raise MatrixError(f"README.md has no {begin} … {end} block")
        head, rest = text.split(begin, 1)
        README.write_text(head + begin + "\n" + table + "\n" + end + rest.split(end, 1)[1])
    click.echo(table)


if __name__ == "__main__":
    main()
