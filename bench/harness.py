"""What does tapttrace cost? Side-by-side runs of uplink → bridge → tap → reader at saturation.

One run of the harness:
  1. builds the C sender and reader (gcc, bench/build/), the topology (bench/topology.py) and
     starts the reader on CPU 1 (the sender and the bridge path it drives run on CPU 0);
  2. measures the generator's and the reader's own ceilings;
  3. for each round, runs every available configuration once, in a rotated order, each one a
     fresh tapttrace process: start it, wait for it to attach, push frames at full speed for
     `window` seconds (bpf stats off), then a short window with kernel.bpf_stats_enabled=1 to
     read each BPF program's run time, then SIGINT and time the detach;
  4. steps the offered rate with `follow` for the MAC all traffic is for, to find where events
     start being lost;
  5. writes RESULTS.md and results.json (bench/ by default).

Timings are reported, never asserted. Everything created is removed on every exit path.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .topology import GUEST_MAC, OTHER_MAC, REMOTE_MAC, Topology, remove_stale

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / "build"
SENDER_CPU, READER_CPU = "0", "1"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

DEFAULT_CONFIGS = ["baseline", "exporter", "follow-nomatch", "follow-match", "diagnose", "hooks-floor"]
# follow and the exporter with their loader forced (TAPTTRACE_FOLLOW_LOADER, TAPTTRACE_EXPORTER_LOADER): bcc
# or libbpf, each building the one source of its program (bpf/follow.c, bpf/exporter.c). The plain
# configurations take whatever tapttrace chooses (`tapttrace doctor` says which).
LOADERS = ("bcc", "libbpf")
LOADER_ENV = {"follow-nomatch": "TAPTTRACE_FOLLOW_LOADER", "follow-match": "TAPTTRACE_FOLLOW_LOADER",
              "exporter": "TAPTTRACE_EXPORTER_LOADER"}
# variant -> (the configuration it is a variant of, the environment that makes it one)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    f"{c}-{loader}": (c, {LOADER_ENV[c]: loader}) for c in LOADER_ENV for loader in LOADERS}
# follow on the libbpf loader with every hop as its own event: no journeys stitched in the kernel
VARIANTS["follow-match-events"] = ("follow-match", {"TAPTTRACE_FOLLOW_LOADER": "libbpf",
                                                    "TAPTTRACE_FOLLOW_TRIPS": "off"})
CONFIGS = DEFAULT_CONFIGS + list(VARIANTS)
DESCRIPTIONS = {
    "baseline": "no tracer",
    "exporter": "`tapttrace exporter` (in-kernel counters only)",
    "follow-nomatch": f"`tapttrace follow {OTHER_MAC} --json` (no frame matches)",
    "follow-match": f"`tapttrace follow {GUEST_MAC} --json` (every frame is a journey)",
    "diagnose": f"`tapttrace diagnose {GUEST_MAC} --duration WINDOW` while traffic flows",
    "hooks-floor": "`python -m bench.floor`: a BPF program that returns at once on each tracepoint the exporter "
                   "hooks (netif_receive_skb, net_dev_queue, consume_skb, kfree_skb): the floor of any "
                   "tracepoint counter here",
}
for _c, (_base, _env) in VARIANTS.items():
    DESCRIPTIONS[_c] = f"{DESCRIPTIONS[_base]}, " + " ".join(f"{k}={v}" for k, v in _env.items())


def split_config(config: str) -> tuple[str, Optional[dict[str, str]]]:
    """("follow-match", {"TAPTTRACE_FOLLOW_LOADER": "bcc"}) for "follow-match-bcc"; (config, None)
    for a configuration that is not a variant."""
    return VARIANTS.get(config, (config, None))


# -- small helpers --------------------------------------------------------------------------

def build_tools(out: Path = BUILD) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    tools = {}
    for name in ("sender", "reader"):
        src, exe = HERE / f"{name}.c", out / name
        if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
            subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
        tools[name] = exe
    return tools


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(val.split()[0]) / 1024
    except OSError:
        pass
    return out


def prog_ids(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds open (from /proc/PID/fdinfo: bpftool's pids column
    needs a bpftool built with skeletons, which not every distribution ships)."""
    ids = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return ids
    for fd in fds:
        try:
            if os.readlink(fd) != "anon_inode:bpf-prog":
                continue
            for line in Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def bpf_programs(pid: int) -> list[dict]:
    ids = prog_ids(pid)
    if not ids:
        return []
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    try:
        progs = json.loads(out or "[]")
    except json.JSONDecodeError:
        return []
    return [p for p in progs if p.get("id") in ids]


def set_bpf_stats(on: bool) -> None:
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1" if on else "0")


# Where `python -m tracer` runs from: this checkout, or another one given with --tracer-root (to
# measure a proposed patch against the same topology and harness).
TRACER_ROOT = ROOT


def tapttrace_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tracer", *args]


def command_available(name: str) -> Optional[str]:
    """The --help text of `tapttrace NAME`, or None where that command doesn't exist yet."""
    r = subprocess.run(tapttrace_cmd(name, "--help"), cwd=TRACER_ROOT, capture_output=True, text=True, timeout=60)
    return r.stdout if r.returncode == 0 else None


def summarize(values: list[Optional[float]]) -> Optional[dict]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


# -- traffic --------------------------------------------------------------------------------

class Reader:
    """The C tap reader, pinned to READER_CPU; counters read from a shared file without a syscall to it."""

    def __init__(self, topo: Topology, exe: Path, workdir: Path, max_s: float):
        self.path = workdir / "reader.counters"
        self.proc = subprocess.Popen(topo.ns_cmd(topo.hv, "taskset", "-c", READER_CPU, str(exe), "vnet0",
                                                 str(self.path), str(int(max_s))))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the tap reader exited at start")
            if self.path.exists() and self.counters()[3] == 1:
                return
            time.sleep(0.02)
        raise RuntimeError("the tap reader never attached to vnet0")

    def counters(self) -> tuple[int, int, int, int]:
        with open(self.path, "rb") as f:
            return struct.unpack("4Q", f.read(32))

    @property
    def frames(self) -> int:
        return self.counters()[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Traffic:
    topo: Topology
    sender: Path
    reader: Reader

    def send(self, seconds: float, rate: float = 0, dev: str = "eth0", max_frames: int = 50_000_000,
             background: bool = False):
        cmd = self.topo.ns_cmd(self.topo.remote, "taskset", "-c", SENDER_CPU, str(self.sender), dev, GUEST_MAC,
                               REMOTE_MAC, str(int(rate)), str(max_frames), f"{seconds:.3f}")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if background:
            return proc
        return self.finish(proc, seconds)

    @staticmethod
    def finish(proc: subprocess.Popen, seconds: float) -> dict:
        out, err = proc.communicate(timeout=seconds + 30)
        if proc.returncode != 0:
            raise RuntimeError(f"sender failed: {err}")
        return json.loads(out.strip().splitlines()[-1])

    def measure(self, seconds: float, rate: float = 0) -> dict:
        """Frames per second the reader got while the sender pushed for `seconds`."""
        before = self.reader.frames
        tap0 = self.topo.tap_stats()
        t0 = time.monotonic()
        sent = self.send(seconds, rate)
        self._settle()
        got = self.reader.frames - before
        tap1 = self.topo.tap_stats()
        elapsed = sent["elapsed_s"] or (time.monotonic() - t0)
        return {"offered_fps": sent["sent"] / elapsed, "delivered_fps": got / elapsed, "sent": sent["sent"],
                "delivered": got, "tap_dropped": tap1["tx_dropped"] - tap0["tx_dropped"], "seconds": elapsed}

    def _settle(self, timeout: float = 2.0) -> None:
        """Wait until the reader stops counting (the tap queue is empty)."""
        last, deadline = -1, time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.reader.frames
            if now == last:
                return
            last = now
            time.sleep(0.03)


def generator_ceiling(traffic: Traffic, seconds: float) -> dict:
    """The sender alone, into a veth pair whose far end throws frames away at once."""
    r = traffic.send(seconds, dev="gen0")
    return {"fps": r["sent"] / r["elapsed_s"], "seconds": r["elapsed_s"]}


def reader_ceiling(traffic: Traffic, frames: int) -> dict:
    """The reader draining a full tap queue: stop it, queue `frames`, let it go, time the drain."""
    reader = traffic.reader
    pids = _descendants(reader.proc.pid) + [reader.proc.pid]
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        traffic.send(30, max_frames=frames)
        queued = frames
    finally:
        before = reader.frames
        t0 = time.monotonic_ns()
        for p in pids:
            os.kill(p, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and reader.frames - before < queued:
        time.sleep(0.001)
    time.sleep(0.05)
    frames_now, _, last_ns, _ = reader.counters()
    drained = frames_now - before
    seconds = max(last_ns - t0, 1) / 1e9
    return {"fps": drained / seconds, "drained": drained, "seconds": seconds}


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    kids = [int(x) for x in out]
    return kids + [g for k in kids for g in _descendants(k)]


# -- one configuration, one run -------------------------------------------------------------

@dataclass
class Tool:
    """A tapttrace process started for one run; stdout to a file."""

    argv: list[str]
    out_path: Path
    env: Optional[dict] = None  # None: the bench's own environment
    proc: Optional[subprocess.Popen] = None
    started: float = 0.0
    programs_left: bool = False
    exit_s: float = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self._out = open(self.out_path, "w")
        self.proc = subprocess.Popen(self.argv, cwd=TRACER_ROOT, stdout=self._out, stderr=subprocess.PIPE, text=True,
                                     env=self.env)

    def wait_attached(self, timeout: float = 30.0) -> float:
        """Seconds from start until its BPF programs are loaded (the count steady over two looks)."""
        assert self.proc is not None
        deadline, last, seen_at = time.monotonic() + timeout, -1, 0.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv} exited at start: {self.proc.stderr.read()[-2000:]}")
            n = len(prog_ids(self.proc.pid))
            if n and n == last:
                return seen_at - self.started
            if n != last:
                seen_at = time.monotonic()
            last = n
            time.sleep(0.02)
        raise RuntimeError(f"{self.argv}: no BPF programs after {timeout} s")

    def first_line_after(self, timeout: float) -> Optional[float]:
        """Seconds from start until the first line of output (the first journey)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.out_path.stat().st_size > 0:
                return time.monotonic() - self.started
            time.sleep(0.002)
        return None

    def lines(self) -> int:
        with open(self.out_path, "rb") as f:
            return sum(1 for _ in f)

    def stop(self, timeout: float = 30.0) -> float:
        """SIGINT, then seconds until the process holds no BPF program any more (its hooks are
        detached; it may still be writing out what it had). Seconds to exit go to exit_s."""
        assert self.proc is not None
        pid = self.proc.pid
        ids = prog_ids(pid)
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        detach = None
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                break
            if detach is None and not prog_ids(pid):
                detach = time.monotonic() - t0
            time.sleep(0.005)
        else:
            self.proc.kill()
            self.proc.wait()
            self._out.close()
            raise RuntimeError(f"{self.argv} did not exit within {timeout} s of SIGINT")
        self.exit_s = time.monotonic() - t0
        if detach is None:
            detach = self.exit_s
        # Programs are freed an RCU grace period after their last fd closes: a deadline for that
        # (a loaded machine stretches grace periods), so "left" means left, not slow.
        t1 = time.monotonic()
        while _any_alive(ids) and time.monotonic() - t1 < 30:
            time.sleep(0.01)
        self.programs_left = _any_alive(ids)
        self._out.close()
        return detach

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _any_alive(ids: set[int]) -> bool:
    """Whether any of these programs is still loaded (a freed program's id is never reused at once)."""
    if not ids:
        return False
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    try:
        return any(p.get("id") in ids for p in json.loads(out or "[]"))
    except json.JSONDecodeError:
        return False


def follow_summary(path: Path) -> dict:
    summary = {}
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b'{"schema": "tapttrace.summary/1"') or b'"tapttrace.summary/1"' in line[:60]:
                summary = json.loads(line)
    return summary


def bpf_stats(pid: int) -> dict[int, dict]:
    return {p["id"]: {"name": p.get("name", ""), "run_time_ns": p.get("run_time_ns", 0),
                      "run_cnt": p.get("run_cnt", 0)} for p in bpf_programs(pid)}


def bpf_window(traffic: Traffic, pid: int, seconds: float) -> dict:
    """A short extra window with bpf stats on: each program's hits and ns per hit, and ns per frame."""
    set_bpf_stats(True)
    try:
        s0 = bpf_stats(pid)
        m = traffic.measure(seconds)
        s1 = bpf_stats(pid)
    finally:
        set_bpf_stats(False)
    progs, total = {}, 0
    for pid_, a in s0.items():
        b = s1.get(pid_)
        if not b:
            continue
        cnt, ns = b["run_cnt"] - a["run_cnt"], b["run_time_ns"] - a["run_time_ns"]
        total += ns
        progs[f'{a["name"]}#{pid_}'] = {"hits_per_frame": cnt / max(m["delivered"], 1),
                                         "ns_per_hit": ns / cnt if cnt else None}
    return {"programs": progs, "bpf_ns_per_frame": total / max(m["delivered"], 1)}


@dataclass
class Bench:
    traffic: Traffic
    workdir: Path
    window: float
    bpf_window: float
    available: dict[str, bool] = field(default_factory=dict)
    exporter_args: list[str] = field(default_factory=list)
    diagnose_args: list[str] = field(default_factory=list)
    log: Callable[[str], None] = print

    def tool_for(self, config: str, run_id: str) -> Optional[Tool]:
        out = self.workdir / f"{run_id}.out"
        config, variant = split_config(config)
        env = {**os.environ, **variant} if variant else None
        if config == "follow-nomatch":
            return Tool(tapttrace_cmd("follow", OTHER_MAC, "--json", "--no-learn"), out, env)
        if config == "follow-match":
            return Tool(tapttrace_cmd("follow", GUEST_MAC, "--json", "--no-learn"), out, env)
        if config == "exporter":
            return Tool(tapttrace_cmd("exporter", *self.exporter_args), out, env)
        if config == "hooks-floor":  # not tapttrace: the same harness around empty programs
            # by path, with this checkout's tracer: a --tracer-root checkout need not have it
            return Tool([sys.executable, str(HERE / "floor.py")], out, {**os.environ, "PYTHONPATH": str(ROOT)})
        return None

    def run(self, config: str, run_id: str) -> dict:
        if config == "baseline":
            m = self.traffic.measure(self.window)
            return {"config": config, **m}
        if config == "diagnose":
            return self._run_diagnose(run_id)
        tool = self.tool_for(config, run_id)
        assert tool is not None
        result: dict = {"config": config}
        config = split_config(config)[0]  # what to measure depends on the kind, not the loader
        warm = None
        try:
            if config == "follow-match":
                # traffic flows while the command starts: time to the first journey it writes
                warm = self.traffic.send(30, rate=1000, background=True)
            tool.start()
            result["attach_s"] = tool.wait_attached()
            read_before = self.traffic.reader.frames
            if config == "follow-match":
                result["first_event_s"] = tool.first_line_after(60)  # a deadline for the figure, not a bound on it
                warm.send_signal(signal.SIGINT)
                warm.wait(60)  # a deadline: the sender is pinned to a core that may be busy
                warm = None
                time.sleep(0.1)
            pid = tool.proc.pid
            lines0 = tool.lines() if config == "follow-match" else 0
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            m = self.traffic.measure(self.window)
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
            result.update(m)
            result["tool_cpu_s"] = cpu1 - cpu0
            result["tool_cpu_frac"] = (cpu1 - cpu0) / (t1 - t0)
            result["bpf"] = self.bpf_stats_window(pid)
            mem = memory_mb(pid)
            result["rss_mb"] = mem.get("VmRSS")
            result["peak_rss_mb"] = mem.get("VmHWM")
            result["total_cpu_s"] = cpu_seconds(pid)
            result["detach_s"] = tool.stop()
            read_while = self.traffic.reader.frames - read_before
            result["exit_s"] = tool.exit_s
            result["programs_left_after_exit"] = tool.programs_left
            if config.startswith("follow"):
                s = follow_summary(tool.out_path)
                result["journeys"] = s.get("journeys")
                result["events"] = s.get("events")
                result["lost_events"] = s.get("lost_events")
                result["discarded_events"] = s.get("discarded_events")
                result["discarded_journeys"] = s.get("discarded_journeys")
                result["summary_frames"] = s.get("frames")
                result["counted_in_kernel"] = s.get("counted_in_kernel")
                if config == "follow-match" and s.get("frames") is not None:
                    # every frame for the MAC the reader got from follow's attach until its detach must
                    # be in its summary (shown, counted in the kernel, or discarded at exit and said)
                    said = s["frames"] + (s.get("discarded_journeys") or 0)
                    result["unaccounted"] = max(0, read_while - said)
                if config == "follow-match" and s:
                    # journeys handled in the window: all lines written after it began (the summary
                    # line excepted), over the window; the backlog drained at the end belongs to it
                    handled = tool.lines() - 1 - lines0
                    result["journeys_handled"] = handled
                    result["journeys_per_s"] = handled / m["seconds"]
            return result
        finally:
            if warm is not None and warm.poll() is None:
                warm.kill()
                warm.wait()
            tool.kill()
            tool.out_path.unlink(missing_ok=True)

    def bpf_stats_window(self, pid: int) -> Optional[dict]:
        if self.bpf_window <= 0:
            return None
        return bpf_window(self.traffic, pid, self.bpf_window)

    def _run_diagnose(self, run_id: str) -> dict:
        out = self.workdir / f"{run_id}.out"
        before = self.traffic.reader.frames
        sender = self.traffic.send(self.window, background=True)
        t0 = time.monotonic()
        tool = Tool(tapttrace_cmd("diagnose", *(a.format(window=self.window) for a in self.diagnose_args)), out)
        tool.start()
        peak, cpu = 0.0, 0.0
        try:
            while tool.proc.poll() is None and time.monotonic() - t0 < self.window + 60:
                peak = max(peak, memory_mb(tool.proc.pid).get("VmHWM", 0.0))
                cpu = cpu_seconds(tool.proc.pid)
                time.sleep(0.05)
            duration = time.monotonic() - tool.started
            sent = Traffic.finish(sender, self.window)
            self.traffic._settle()
            got = self.traffic.reader.frames - before
            return {"config": "diagnose", "offered_fps": sent["sent"] / sent["elapsed_s"],
                    "delivered_fps": got / sent["elapsed_s"], "sent": sent["sent"], "delivered": got,
                    "seconds": sent["elapsed_s"], "command_s": duration,
                    "beyond_window_s": duration - self.window, "tool_cpu_s": cpu,
                    "peak_rss_mb": peak or None, "exit_code": tool.proc.returncode,
                    "output_head": out.read_text(errors="replace")[:400] if out.exists() else ""}
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
            tool.kill()
            out.unlink(missing_ok=True)

    def loss_sweep(self, rates: list[float], seconds: float) -> list[dict]:
        """follow for the MAC of all traffic at stepped offered rates: journeys/s and events lost."""
        rows = []
        for rate in rates:
            tool = Tool(tapttrace_cmd("follow", GUEST_MAC, "--json", "--no-learn"),
                        self.workdir / f"sweep-{int(rate)}.out")
            try:
                tool.start()
                tool.wait_attached()
                pid = tool.proc.pid
                cpu0 = cpu_seconds(pid)
                m = self.traffic.measure(seconds, rate)
                cpu = cpu_seconds(pid) - cpu0
                tool.stop()
                s = follow_summary(tool.out_path)
                row = {"rate": rate, "offered_fps": m["offered_fps"], "delivered_fps": m["delivered_fps"],
                       "journeys": s.get("journeys"), "journeys_per_s": (s.get("journeys") or 0) / m["seconds"],
                       "events": s.get("events"), "lost_events": s.get("lost_events"),
                       "tool_cpu_frac": cpu / m["seconds"]}
                self.log(f"  sweep {rate:>9.0f}/s: offered {m['offered_fps']:.0f}/s, "
                         f"{row['journeys_per_s']:.0f} journeys/s, lost {row['lost_events']}")
                rows.append(row)
            finally:
                tool.kill()
                tool.out_path.unlink(missing_ok=True)
        return rows


# -- the whole run --------------------------------------------------------------------------

@dataclass
class Params:
    repeats: int = 5
    window: float = 5.0
    bpf_window: float = 1.0
    sweep_rates: list[float] = field(default_factory=lambda: [5e3, 10e3, 20e3, 40e3, 60e3, 80e3, 100e3,
                                                              150e3, 0])
    sweep_seconds: float = 3.0
    ceiling_seconds: float = 3.0
    reader_queue: int = 50_000
    configs: list[str] = field(default_factory=lambda: list(DEFAULT_CONFIGS))
    out_dir: Path = HERE
    command: str = ""


def machine_info() -> dict:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"kernel": platform.release(), "machine": platform.machine(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gib": round(mem_kb / 2**20, 1), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def detect_commands(configs: list[str]) -> tuple[dict[str, bool], list[str], list[str]]:
    available = {c: True for c in configs}
    exporter_args: list[str] = []
    diagnose_args: list[str] = []
    exporters = [c for c in configs if split_config(c)[0] == "exporter"]
    if exporters:
        text = command_available("exporter")
        available.update({c: text is not None for c in exporters})
        if text:
            port = _free_port()
            if "--listen" in text:
                exporter_args = ["--listen", f"127.0.0.1:{port}"]
            elif "--port" in text:
                exporter_args = ["--port", str(port)]
    if "hooks-floor" in configs:  # built with the clang tapttrace's objects are built with
        from tracer.bpfbuild import CLANGS, which

        available["hooks-floor"] = which(*CLANGS) is not None
    if "diagnose" in configs:
        text = command_available("diagnose")
        available["diagnose"] = text is not None
        if text:
            diagnose_args = [GUEST_MAC] if "MAC" in text.split("Options")[0] else []
            if "--duration" in text:
                diagnose_args += ["--duration", "{window}"]  # watches the traffic for the window
    return available, exporter_args, diagnose_args


def run_bench(p: Params, log: Callable[[str], None] = print) -> dict:
    if os.geteuid() != 0:
        raise SystemExit("the bench needs root (namespaces, BPF)")
    for ns in remove_stale():
        log(f"removed {ns}, left by a bench that was killed")
    tools = build_tools()
    available, exporter_args, diagnose_args = detect_commands(p.configs)
    stats_before = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    results: dict = {"schema": "tapttrace.bench/1", "command": p.command, "machine": machine_info(),
                     "params": {"repeats": p.repeats, "window_s": p.window, "bpf_window_s": p.bpf_window,
                                "sweep_rates": p.sweep_rates, "sweep_seconds": p.sweep_seconds,
                                "sender_cpu": SENDER_CPU, "reader_cpu": READER_CPU,
                                "tapttrace_cpu": "unpinned", "tracer_root": str(TRACER_ROOT)},
                     "available": available, "runs": [], "descriptions": DESCRIPTIONS}
    with tempfile.TemporaryDirectory(prefix="ttbench-") as tmp, Topology() as topo:
        workdir = Path(tmp)
        reader = Reader(topo, tools["reader"], workdir, max_s=7200)
        try:
            topo.wait_forwarding()
            traffic = Traffic(topo, tools["sender"], reader)
            set_bpf_stats(False)
            log("ceilings: generator, reader")
            results["generator_ceiling"] = generator_ceiling(traffic, p.ceiling_seconds)
            results["reader_ceiling"] = reader_ceiling(traffic, p.reader_queue)
            reader_cpu0, t0 = cpu_seconds(reader.proc.pid), time.monotonic()
            results["saturation_probe"] = traffic.measure(p.ceiling_seconds)
            # the reader runs under `ip netns exec`, which execs it: same pid
            results["saturation_probe"]["reader_cpu_frac"] = (cpu_seconds(reader.proc.pid) - reader_cpu0) / (
                time.monotonic() - t0)
            log(f"  generator {results['generator_ceiling']['fps']:.0f}/s, reader "
                f"{results['reader_ceiling']['fps']:.0f}/s, path {results['saturation_probe']['delivered_fps']:.0f}/s")
            bench = Bench(traffic, workdir, p.window, p.bpf_window, available, exporter_args, diagnose_args, log)
            order = [c for c in p.configs if available.get(c)]
            for rnd in range(p.repeats):
                k = rnd % len(order)
                for config in order[k:] + order[:k]:
                    run_id = f"{config}-{rnd}"
                    r = bench.run(config, run_id)
                    r["round"] = rnd
                    results["runs"].append(r)
                    log(f"round {rnd} {config:15s} {r['delivered_fps']:>9.0f} frames/s"
                        + (f", lost {r['lost_events']}" if r.get("lost_events") is not None else ""))
            if "follow-match" in order and p.sweep_rates:
                log("loss sweep")
                results["sweep"] = bench.loss_sweep(p.sweep_rates, p.sweep_seconds)
        finally:
            reader.stop()
            Path("/proc/sys/kernel/bpf_stats_enabled").write_text(stats_before)
    results["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    results["summary"] = aggregate(results)
    return results


FIGURES = ["delivered_fps", "ratio", "tool_cpu_frac", "tool_cpu_s", "journeys_per_s", "lost_events",
           "attach_s", "first_event_s", "peak_rss_mb", "detach_s", "exit_s", "bpf_ns_per_frame", "command_s",
           "beyond_window_s", "discarded_events", "discarded_journeys", "summary_frames", "counted_in_kernel",
           "unaccounted"]


def aggregate(results: dict) -> dict:
    runs = results["runs"]
    # each run's ratio is to the baseline runs of the same round (the nearest in time)
    base_by_round = {r["round"]: r["delivered_fps"] for r in runs if r["config"] == "baseline"}
    base_all = [r["delivered_fps"] for r in runs if r["config"] == "baseline"]
    base_med = statistics.median(base_all) if base_all else None
    out: dict = {}
    for config in CONFIGS:
        rs = [r for r in runs if r["config"] == config]
        if not rs:
            continue
        for r in rs:
            base = base_by_round.get(r["round"], base_med)
            r["ratio"] = r["delivered_fps"] / base if base else None
            if r.get("bpf"):
                r["bpf_ns_per_frame"] = r["bpf"]["bpf_ns_per_frame"]
        out[config] = {f: summarize([r.get(f) for r in rs]) for f in FIGURES}
        out[config] = {k: v for k, v in out[config].items() if v is not None}
    sweep = results.get("sweep") or []
    lossy = [s for s in sweep if s.get("lost_events")]
    clean = [s for s in sweep if s.get("lost_events") == 0]
    out["loss"] = {
        "max_clean_offered_fps": max((s["offered_fps"] for s in clean), default=None),
        "max_clean_journeys_per_s": max((s["journeys_per_s"] for s in clean), default=None),
        "loss_starts_offered_fps": min((s["offered_fps"] for s in lossy), default=None),
    }
    return out


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--window", type=float, default=5.0, help="seconds of full-rate traffic per run")
    ap.add_argument("--bpf-window", type=float, default=1.0, help="seconds with bpf stats on per run (0: off)")
    ap.add_argument("--sweep", default="5000,10000,20000,40000,60000,80000,100000,150000,0",
                    help="offered rates for the loss sweep, comma-separated (0: full speed; empty: no sweep)")
    ap.add_argument("--sweep-seconds", type=float, default=3.0)
    ap.add_argument("--ceiling-seconds", type=float, default=3.0)
    ap.add_argument("--reader-queue", type=int, default=50_000)
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--out", type=Path, default=HERE, help="directory for RESULTS.md and results.json")
    ap.add_argument("--tracer-root", type=Path, default=None,
                    help="run `python -m tracer` from this checkout instead (A/B of a patch)")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite RESULTS.md from OUT/results.json (e.g. after editing OUT/FINDINGS.md)")
    a = ap.parse_args(argv)
    from .report import write_results

    if a.render:
        results = json.loads((a.out / "results.json").read_text())
        results.pop("notes", None)
        md, js = write_results(results, a.out)
        print(f"wrote {md}")
        return 0
    if a.tracer_root is not None:
        global TRACER_ROOT
        TRACER_ROOT = a.tracer_root.resolve()
    p = Params(repeats=a.repeats, window=a.window, bpf_window=a.bpf_window,
               sweep_rates=[float(x) for x in a.sweep.split(",") if x.strip()], sweep_seconds=a.sweep_seconds,
               ceiling_seconds=a.ceiling_seconds, reader_queue=a.reader_queue,
               configs=[c for c in a.configs.split(",") if c], out_dir=a.out,
               command=" ".join(["python -m bench", *map(shlex.quote, argv if argv is not None else sys.argv[1:])]))
    unknown = set(p.configs) - set(CONFIGS)
    if unknown:
        ap.error(f"unknown configurations: {', '.join(sorted(unknown))}")
    interrupted = {"n": 0}

    def on_term(*_):  # SIGTERM takes the same clean-up path as Ctrl-C
        interrupted["n"] += 1
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    results = run_bench(p)
    md, js = write_results(results, p.out_dir)
    print(f"wrote {md} and {js}")
    return 0
