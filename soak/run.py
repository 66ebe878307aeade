"""Soak: does `tapttrace exporter` survive days? (issue 14)

For --minutes (30 by default), all at once on the bench's topology (bench/topology.py, in
namespaces ts<pid>-hv and ts<pid>-remote):
  - bulk traffic remote → up0 → br0 → vnet0 → C reader at --rate-fraction of the path's
    saturation (measured first, without a tracer), in segments of --segment seconds;
  - VMs (namespace + veth or tap on br0, soak/churn.py) created and the oldest destroyed every
    --vm-interval seconds;
  - a real Prometheus (Debian's package) scraping the exporter every second;
  - follow and diagnose started and stopped again and again, by SIGINT, SIGTERM and SIGKILL in
    turn, each time checked to leave no BPF program, link or map behind (soak/bpfobjs.py);
  - the exporter's RSS sampled every --rss-interval seconds.
Between segments, a checkpoint: the bulk traffic finished (every frame the sender sent is read
by the reader or counted dropped: a condition, waited for), the exporter's counters for vnet0
must equal the reader's own count exactly; then, with the next segment under way, a known
number of frames on a dedicated path (up0 → vnet1 → a second reader) must move the exporter's
counters by exactly that, directly and in Prometheus.

Writes soak-results.json (the summary) to --out, prints it in human lines, and exits 1 when a
criterion fails (soak/criteria.py), 2 on bad options, 3 when the machine can't run it.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from bench.harness import Reader, Traffic, build_tools, cpu_seconds, machine_info, memory_mb
from bench.topology import REMOTE_MAC, Topology, sh

from . import bpfobjs
from .churn import Churn, remove_stale
from .criteria import error_lines, judge, rss_baseline, rss_slope_mb_per_hour

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEDICATED_MAC = "52:54:00:b5:00:02"   # the checkpoints' own guest, on tap vnet1
DEDICATED_TAP_MAC = "fe:54:00:b5:00:02"
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
TOOLS = ("follow", "diagnose")
WAIT = 120.0  # seconds: the upper bound of every wait on a condition (a busy, shared machine)


@dataclass
class Params:
    minutes: float = 30.0
    rate_fraction: float = 0.7
    segment_s: float = 60.0
    vm_interval: float = 1.0
    keep: int = 10
    max_series: int = 500
    refresh_s: float = 5.0
    dedicated_frames: int = 2000
    tool_pause_s: float = 5.0
    min_tool_cycles: int = 6      # at least every tool × signal once, even if that takes longer
    saturation_s: float = 5.0
    tap_queue: int = 1000         # vnet0/vnet1 txqueuelen: a tap's default (libvirt's and qemu's taps too)
    rss_interval_s: float = 2.0
    warmup_s: Optional[float] = None  # RSS baseline after this; default min(120, 20 % of the run)
    out: Path = HERE
    command: str = ""

    def warmup(self) -> float:
        return self.warmup_s if self.warmup_s is not None else min(120.0, self.minutes * 60 * 0.2)


# -- small helpers ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10.0) -> Optional[bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except OSError:
        return None


def until(cond: Callable[[], bool], what: str, timeout: float = WAIT, step: float = 0.1) -> float:
    """Wait for a condition; seconds it took. Raises when it never holds (what is named)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - t0


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def link_stats(ns: str, dev: str) -> dict[str, int]:
    out = sh("ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev).stdout
    st = json.loads(out)[0]["stats64"]
    return {"rx_packets": st["rx"]["packets"], "rx_dropped": st["rx"]["dropped"],
            "tx_packets": st["tx"]["packets"], "tx_dropped": st["tx"]["dropped"]}


class TapReader(Reader):
    """bench/reader.c on one tap of the hv namespace: its own count, from a shared file (bench's
    Reader on any tap and namespace: its counters and stop are bench's)."""

    def __init__(self, ns: str, dev: str, exe: Path, path: Path, cpu: Optional[str] = None):
        self.path = path
        pin = ["taskset", "-c", cpu] if cpu else []
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *pin, str(exe), dev, str(path), "7200"])
        until(lambda: self.proc.poll() is None and path.exists() and path.stat().st_size >= 32
              and self.counters()[3] == 1, f"the reader on {dev}", timeout=30, step=0.02)


# -- the processes under test -----------------------------------------------------------------

class Exporter:
    def __init__(self, workdir: Path, hv: str, p: Params):
        self.err_path = workdir / "exporter.stderr"
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracer", "exporter", "--listen", "127.0.0.1:0", "--netns", hv,
             "--max-series", str(p.max_series), "--refresh", str(p.refresh_s)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.err)
        self.port = 0

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the exporter exited at start: {self.err_path.read_text()[-2000:]}")
            for line in self.err_path.read_text().splitlines():
                if "serving" in line:
                    self.port = int(line.rsplit(":", 1)[1].split("/")[0])
                    return True
            return False

        until(serving, "the exporter to serve")

    def scrape(self) -> dict:
        raw = http_get(f"http://127.0.0.1:{self.port}/metrics")
        if raw is None:
            raise RuntimeError("a scrape of the exporter failed")
        return parse_metrics(raw.decode())

    def stderr_lines(self) -> list[str]:
        return self.err_path.read_text(errors="replace").splitlines()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


class Prometheus:
    def __init__(self, workdir: Path, exporter_port: int):
        import yaml

        if not shutil.which("prometheus"):
            raise OSError("needs Debian's prometheus package (apt-get install prometheus)")
        self.port = free_port()
        self.dir = workdir / "prometheus"
        self.dir.mkdir()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "tapttrace",
                                      "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}]}
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "prometheus.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(["prometheus", f"--config.file={self.dir / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={self.dir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        self.url = f"http://127.0.0.1:{self.port}"
        until(lambda: http_get(self.url + "/-/ready") is not None, "prometheus ready")

    def query(self, expr: str) -> list[dict]:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}),
                                        timeout=60) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as err:  # 400/422: the error is in the body
            raise RuntimeError(f"prometheus query failed: {expr}: {err.read().decode(errors='replace')}") from None
        except OSError as err:
            raise RuntimeError(f"prometheus query failed: {expr}: {err}") from None
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query failed: {expr}: {body}")
        return body["data"]["result"]

    def scalar(self, expr: str) -> Optional[float]:
        rows = self.query(expr)
        return sum(float(r["value"][1]) for r in rows) if rows else None

    def error_lines(self) -> list[str]:
        return [line for line in self.log_path.read_text(errors="replace").splitlines() if "level=error" in line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@dataclass
class ToolCycler:
    """follow and diagnose started and stopped in turn, each stop checked for BPF leftovers."""

    workdir: Path
    pause_s: float
    log: Callable[[str], None]
    cycles: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    current: Optional[subprocess.Popen] = None

    def plan(self) -> list[tuple[str, str]]:
        # every tool with every signal, the signals rotating against the tools
        return [(t, s) for i, s in enumerate(SIGNALS) for t in (TOOLS if i % 2 == 0 else TOOLS[::-1])]

    def run(self, stop: threading.Event) -> None:
        plan = self.plan()
        n = 0
        while not stop.is_set():
            tool, sig = plan[n % len(plan)]
            n += 1
            try:
                self.cycles.append(self.cycle(tool, sig, n))
            except Exception as err:  # noqa: BLE001 - one line in the summary, and go on
                self.errors.append(f"{tool} cycle {n} ({sig}): {err}")
            stop.wait(self.pause_s)

    def cycle(self, tool: str, sig: str, n: int) -> dict:
        args = ["follow", DEDICATED_MAC, "--json"] if tool == "follow" else \
            ["diagnose", DEDICATED_MAC, "--duration", "600"]
        out, err = self.workdir / f"{tool}-{n}.out", self.workdir / f"{tool}-{n}.err"
        t0 = time.monotonic()
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen([sys.executable, "-m", "tracer", *args], cwd=ROOT, stdout=fo, stderr=fe)
        self.current = proc
        rec: dict = {"tool": tool, "signal": sig, "n": n}
        try:
            # Attached: it holds BPF programs and their number is steady over two looks.
            last = [-1]

            def attached() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"exited ({proc.returncode}) before attaching: "
                                       f"{err.read_text(errors='replace')[-500:]}")
                k = len(bpfobjs.held_by(proc.pid).prog)
                ok = k > 0 and k == last[0]
                last[0] = k
                return ok

            until(attached, f"{tool} to attach", step=0.1)
            rec["attach_s"] = round(time.monotonic() - t0, 2)
            held = bpfobjs.closure(bpfobjs.held_by(proc.pid), bpfobjs.listed())
            rec["held"] = {k: len(v) for k, v in held.as_dict().items()}
            time.sleep(random.uniform(0.2, 2.0))  # stopped at a different moment of its work each time
            proc.send_signal(SIGNALS[sig])
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rec["hung"] = True
            rec["exit_code"] = proc.returncode
            want = {-signal.SIGKILL} if sig == "SIGKILL" else ({0} if tool == "follow" else {0, 1})
            rec["exit_ok"] = proc.returncode in want and not rec.get("hung")
            gone = bpfobjs.wait_gone(held, timeout=WAIT)
            rec["gone_ok"] = gone.ok
            rec["gone_s"] = round(gone.seconds, 2)
            if not gone.ok or gone.kept_by_live:
                rec["left"], rec["kept_by_live"] = gone.left, gone.kept_by_live
            rec["error_lines"] = error_lines(err.read_text(errors="replace").splitlines())
            self.log(f"  {tool} #{n} stopped by {sig}: exit {proc.returncode}, "
                     f"{sum(rec['held'].values())} BPF objects, gone in {rec['gone_s']} s"
                     + ("" if gone.ok else f", LEFT {gone.left}"))
            return rec
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self.current = None
            out.unlink(missing_ok=True)
            err.unlink(missing_ok=True)


# -- checkpoints ------------------------------------------------------------------------------

@dataclass
class Counts:
    """Cumulative counts at one quiescent moment: the readers', the devices', the exporter's."""
    reader0: int
    reader1: int
    vnet0_dropped: int
    vnet1_dropped: int
    exp: dict


class Soak:
    def __init__(self, p: Params, log: Callable[[str], None] = print):
        self.p, self.log = p, log
        self.pid_tag = f"ts{os.getpid()}"
        self.checkpoints: list[dict] = []
        self.bulk_sent = 0
        self.bulk_seconds = 0.0
        self.bulk_segments: list[dict] = []
        self.rss: list[tuple[float, float]] = []
        self.dedicated_sent = 0
        self.t0 = 0.0

    # the exporter's view of the two exact paths
    def exporter_counts(self, ex: Exporter, hv: str) -> dict:
        s = ex.scrape()
        tap = lambda dev, ev: total(s, "tapttrace_tap_frames_total", netns=hv, tap=dev, event=ev)  # noqa: E731
        return {"vnet0_delivered": tap("vnet0", "delivered"), "vnet0_queued": tap("vnet0", "queued"),
                "vnet0_tap_drops": total(s, "tapttrace_tap_drops_total", netns=hv, tap="vnet0"),
                "up0_vnet0_delivered": total(s, "tapttrace_frames_total", netns=hv, in_port="up0", out_port="vnet0",
                                             verdict="delivered"),
                "vnet1_delivered": tap("vnet1", "delivered"),
                "vnet1_tap_drops": total(s, "tapttrace_tap_drops_total", netns=hv, tap="vnet1"),
                "up0_vnet1_delivered": total(s, "tapttrace_frames_total", netns=hv, in_port="up0", out_port="vnet1",
                                             verdict="delivered"),
                "lost": total(s, "tapttrace_lost_events_total"),
                "decode_errors": total(s, "tapttrace_decode_errors_total"),
                "refresh_errors": total(s, "tapttrace_refresh_errors_total"),
                "overflow": total(s, "tapttrace_series_overflow_total")}

    def counts(self, ex: Exporter, topo: Topology, r0: TapReader, r1: TapReader) -> Counts:
        return Counts(r0.frames, r1.frames, link_stats(topo.hv, "vnet0")["tx_dropped"],
                      link_stats(topo.hv, "vnet1")["tx_dropped"], self.exporter_counts(ex, topo.hv))

    def settle_bulk(self, topo: Topology, r0: TapReader, base: Counts, remote_drop0: int) -> float:
        """Every bulk frame sent since base is read by the reader or counted dropped (on vnet0's
        full queue, or refused by the veth: eth0's tx_dropped)."""
        def done() -> bool:
            drops = (link_stats(topo.hv, "vnet0")["tx_dropped"] - base.vnet0_dropped
                     + link_stats(topo.remote, "eth0")["tx_dropped"] - remote_drop0)
            return r0.frames - base.reader0 + drops >= self.bulk_sent
        return until(done, "the bulk traffic to be read or dropped", step=0.05)

    def bulk_checkpoint(self, ex, prom, topo, r0, r1, base: Counts, remote_drop0: int, n: int) -> dict:
        rec: dict = {"n": n, "kind": "bulk", "t_s": round(time.monotonic() - self.t0, 1)}
        try:
            rec["settle_s"] = round(self.settle_bulk(topo, r0, base, remote_drop0), 2)
            now = self.counts(ex, topo, r0, r1)
            e0, e1 = base.exp, now.exp
            read = now.reader0 - base.reader0
            dropped = now.vnet0_dropped - base.vnet0_dropped
            got = {"tap delivered": e1["vnet0_delivered"] - e0["vnet0_delivered"],
                   "up0→vnet0 delivered": e1["up0_vnet0_delivered"] - e0["up0_vnet0_delivered"],
                   "tap drops": e1["vnet0_tap_drops"] - e0["vnet0_tap_drops"],
                   "queued": e1["vnet0_queued"] - e0["vnet0_queued"]}
            want = {"tap delivered": read, "up0→vnet0 delivered": read, "tap drops": dropped,
                    "queued": read + dropped}
            rec.update({"sent": self.bulk_sent, "reader": read, "tap_dropped": dropped, "exporter": got})
            miss = [f"{k}: exporter {got[k]:.0f}, reader/device {want[k]}" for k in want if got[k] != want[k]]
            # The same value through Prometheus: a scrape after this moment must show it.
            key = f'tapttrace_tap_frames_total{{netns="{topo.hv}",tap="vnet0",event="delivered"}}'
            until(lambda: (prom.scalar(key) or 0) >= e1["vnet0_delivered"], "prometheus to scrape the checkpoint")
            rec["prometheus"] = prom.scalar(key)
            if rec["prometheus"] != e1["vnet0_delivered"]:
                miss.append(f"prometheus {rec['prometheus']:.0f} != exporter {e1['vnet0_delivered']:.0f}")
            rec["ok"], rec["why"] = not miss, "; ".join(miss)
        except Exception as err:  # noqa: BLE001
            rec["ok"], rec["why"] = False, f"checkpoint {n}: {err}"
        return rec

    def dedicated_checkpoint(self, ex, prom, topo, traffic_sender: Path, r1: TapReader, base: Counts,
                             n: int) -> dict:
        """Exactly dedicated_frames more frames to vnet1 (while the bulk traffic flows): the exporter
        must count exactly what the second reader read and what the sender sent."""
        rec: dict = {"n": n, "kind": "dedicated", "t_s": round(time.monotonic() - self.t0, 1)}
        try:
            r = subprocess.run(topo.ns_cmd(topo.remote, str(traffic_sender), "eth0", DEDICATED_MAC, REMOTE_MAC, "0",
                                           str(self.p.dedicated_frames), "60"), capture_output=True, text=True)
            sent = json.loads(r.stdout.strip().splitlines()[-1])["sent"]
            self.dedicated_sent += sent
            until(lambda: r1.frames - base.reader1 + link_stats(topo.hv, "vnet1")["tx_dropped"] - base.vnet1_dropped
                  >= self.dedicated_sent, "the dedicated frames to be read", step=0.05)
            e = self.exporter_counts(ex, topo.hv)
            read = r1.frames - base.reader1
            # A burst can fill vnet1's queue (1000 frames) while its reader waits for a CPU: those
            # are dropped, and counted exactly like the rest.
            dropped = link_stats(topo.hv, "vnet1")["tx_dropped"] - base.vnet1_dropped
            got = {"tap delivered": e["vnet1_delivered"] - base.exp["vnet1_delivered"],
                   "up0→vnet1 delivered": e["up0_vnet1_delivered"] - base.exp["up0_vnet1_delivered"],
                   "tap drops": e["vnet1_tap_drops"] - base.exp["vnet1_tap_drops"]}
            want = {"tap delivered": read, "up0→vnet1 delivered": read, "tap drops": dropped}
            rec.update({"sent": self.dedicated_sent, "reader": read, "tap_dropped": dropped, "exporter": got})
            miss = [f"{k}: exporter {got[k]:.0f}, reader/device {want[k]}" for k in want if got[k] != want[k]]
            if read + dropped != self.dedicated_sent:
                miss.append(f"read {read} + dropped {dropped} != sent {self.dedicated_sent} (lost on the way)")
            key = f'tapttrace_tap_frames_total{{netns="{topo.hv}",tap="vnet1",event="delivered"}}'
            until(lambda: (prom.scalar(key) or 0) >= e["vnet1_delivered"], "prometheus to scrape the dedicated count")
            rec["prometheus"] = prom.scalar(key)
            if rec["prometheus"] != e["vnet1_delivered"]:
                miss.append(f"prometheus {rec['prometheus']:.0f} != exporter {e['vnet1_delivered']:.0f}")
            rec["ok"], rec["why"] = not miss, "; ".join(miss)
        except Exception as err:  # noqa: BLE001
            rec["ok"], rec["why"] = False, f"dedicated checkpoint {n}: {err}"
        return rec

    # -- the whole run ----------------------------------------------------------------------------

    def run(self) -> dict:
        p = self.p
        if os.geteuid() != 0:
            raise OSError("the soak needs root (namespaces, BPF)")
        for ns in remove_stale():
            self.log(f"removed {ns}, left by a soak that was killed")
        tools = build_tools()
        info = machine_info()
        stop = threading.Event()
        threads: list[threading.Thread] = []
        with ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{self.pid_tag}-")))
            topo = stack.enter_context(Topology(prefix=f"{self.pid_tag}-"))
            hv, rm = topo.hv, topo.remote
            sh("ip", "-n", hv, "tuntap", "add", "dev", "vnet1", "mode", "tap")
            sh("ip", "-n", hv, "link", "set", "vnet1", "address", DEDICATED_TAP_MAC, "txqueuelen", str(p.tap_queue),
               "master", "br0", "up")
            # The bench gives vnet0 a 100 000-frame queue to measure its reader's drain; a tap has 1000.
            # More than the exporter's 65 536-entry table of queued frames at once is past its limit
            # (docs/soak.md, "Findings"): --tap-queue 100000 shows it.
            sh("ip", "-n", hv, "link", "set", "vnet0", "txqueuelen", str(p.tap_queue))
            sh("bridge", "-n", hv, "fdb", "add", DEDICATED_MAC, "dev", "vnet1", "master", "static")
            # The VMs send to the remote: a static entry so that is never a flood toward vnet0/vnet1.
            sh("bridge", "-n", hv, "fdb", "add", REMOTE_MAC, "dev", "up0", "master", "static")
            r0 = TapReader(hv, "vnet0", tools["reader"], tmp / "vnet0.counters", cpu="1")
            stack.callback(r0.stop)
            r1 = TapReader(hv, "vnet1", tools["reader"], tmp / "vnet1.counters")
            stack.callback(r1.stop)
            topo.wait_forwarding(("up0", "vnet0", "vnet1"))
            traffic = Traffic(topo, tools["sender"], r0)  # type: ignore[arg-type]  (any reader with .frames)
            self.log(f"saturation of up0 → br0 → vnet0 without a tracer ({p.saturation_s:.0f} s at full speed)")
            sat = traffic.measure(p.saturation_s)
            rate = sat["delivered_fps"] * p.rate_fraction
            self.log(f"  {sat['delivered_fps']:.0f} frames/s; the soak offers {rate:.0f}/s ({p.rate_fraction:.0%})")

            ex = Exporter(tmp, hv, p)
            stack.callback(ex.kill)
            until(lambda: total(ex.scrape(), "tapttrace_devices_watched", role="tap") >= 2,
                  "the exporter to watch vnet0 and vnet1")
            exporter_held = bpfobjs.closure(bpfobjs.held_by(ex.proc.pid), bpfobjs.listed())
            prom = Prometheus(tmp, ex.port)
            stack.callback(prom.stop)
            until(lambda: prom.scalar('up{job="tapttrace"}') == 1, "prometheus's first scrape")
            self.t0 = time.monotonic()
            cpu0 = cpu_seconds(ex.proc.pid)
            # Nothing is in flight on vnet0/vnet1 now: the start of every cumulative comparison.
            base = self.counts(ex, topo, r0, r1)
            remote_drop0 = link_stats(rm, "eth0")["tx_dropped"]

            churn = Churn(self.pid_tag, hv, rm, tools["sender"], tools["reader"], tmp, p.vm_interval, p.keep,
                          self.log)
            stack.callback(churn.destroy_all)
            cycler = ToolCycler(tmp, p.tool_pause_s, self.log)

            def sample_rss() -> None:
                while not stop.is_set():
                    mb = memory_mb(ex.proc.pid).get("VmRSS")
                    if mb:
                        self.rss.append((round(time.monotonic() - self.t0, 1), mb))
                    stop.wait(p.rss_interval_s)

            def stop_threads(kill: bool = True) -> None:
                stop.set()
                # At the normal end the running follow/diagnose cycle finishes (and is checked);
                # on an error path it is killed at once.
                if kill and cycler.current is not None and cycler.current.poll() is None:
                    cycler.current.kill()
                for t in threads:
                    t.join(WAIT)

            stack.callback(stop_threads)
            for target, args in ((churn.run, (stop,)), (cycler.run, (stop,)), (sample_rss, ())):
                t = threading.Thread(target=target, args=args, daemon=True)
                t.start()
                threads.append(t)

            end = self.t0 + p.minutes * 60
            hard_end = end + max(300.0, p.minutes * 60 * 0.2)  # the tool cycles' own floor may run over
            n = 0
            self.log(f"soak: {p.minutes:g} min, a VM every {p.vm_interval:g} s (keep {p.keep}), segments of "
                     f"{p.segment_s:g} s, exporter --max-series {p.max_series} --refresh {p.refresh_s:g}")
            pending_dedicated = False
            while True:
                left = end - time.monotonic()
                cycles_done = len(cycler.cycles) >= p.min_tool_cycles
                if (left <= 0 and cycles_done) or time.monotonic() > hard_end:
                    break
                seg = min(p.segment_s, max(left, 5.0))
                n += 1
                proc = traffic.send(seg, rate=rate, background=True)
                if pending_dedicated or n == 1:
                    self.checkpoints.append(self.dedicated_checkpoint(ex, prom, topo, tools["sender"], r1, base, n))
                    self._say(self.checkpoints[-1])
                res = Traffic.finish(proc, seg)
                self.bulk_sent += res["sent"]
                self.bulk_seconds += res["elapsed_s"]
                self.bulk_segments.append(res)
                self.checkpoints.append(self.bulk_checkpoint(ex, prom, topo, r0, r1, base, remote_drop0, n))
                self._say(self.checkpoints[-1])
                pending_dedicated = True
            stop_threads(kill=False)
            churn.destroy_all()
            elapsed = time.monotonic() - self.t0
            cpu = cpu_seconds(ex.proc.pid) - cpu0
            delivered = r0.frames - base.reader0
            tap_dropped = link_stats(hv, "vnet0")["tx_dropped"] - base.vnet0_dropped
            lookback = f"{int(elapsed) + 30}s"
            prom_fig = self.prometheus_figures(prom, lookback)
            last = self.exporter_counts(ex, hv)
            # The exporter itself: SIGTERM, exit 0, its BPF objects gone.
            exporter_held.merge(bpfobjs.closure(bpfobjs.held_by(ex.proc.pid), bpfobjs.listed()))
            ex.proc.send_signal(signal.SIGTERM)
            try:
                ex.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                pass
            gone = bpfobjs.wait_gone(exporter_held, timeout=WAIT)
            exporter = {"exit_code": ex.proc.poll(), "gone_ok": gone.ok, "gone_s": round(gone.seconds, 2),
                        "held": {k: len(v) for k, v in gone.held.items()}, "left": gone.left,
                        "cpu_s": round(cpu, 1), "cpu_frac": round(cpu / elapsed, 3), "port": ex.port}
            errors = {"exporter": error_lines(ex.stderr_lines()),
                      "prometheus": prom.error_lines(),
                      "tools": [line for c in cycler.cycles for line in c.get("error_lines", [])] + cycler.errors,
                      "churn": churn.errors}
            samples = self.rss
            warm = p.warmup()
            rss = {"samples": samples, "warmup_s": warm, "start_mb": samples[0][1] if samples else None,
                   "baseline_mb": rss_baseline(samples, warm), "end_mb": samples[-1][1] if samples else None,
                   "max_mb": max(mb for _, mb in samples) if samples else None,
                   "slope_mb_per_hour": rss_slope_mb_per_hour(samples, warm)}
            summary = {
                "schema": "tapttrace.soak/1", "command": p.command, "machine": info,
                "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in p.__dict__.items()},
                "duration_s": round(elapsed, 1),
                "rate": {"saturation_fps": sat["delivered_fps"], "target_fps": rate,
                         "offered_fps": self.bulk_sent / self.bulk_seconds if self.bulk_seconds else 0.0,
                         "delivered_fps": delivered / self.bulk_seconds if self.bulk_seconds else 0.0,
                         # what the bridge handled toward vnet0: read by the reader or dropped on its full queue
                         "handled_fps": (delivered + tap_dropped) / self.bulk_seconds if self.bulk_seconds else 0.0,
                         "bulk_frames": self.bulk_sent, "bulk_delivered": delivered, "bulk_tap_dropped": tap_dropped,
                         "tap_queue": p.tap_queue,
                         "dedicated_frames": self.dedicated_sent, "segments": len(self.bulk_segments)},
                "rss": rss,
                "series": {"cap": p.max_series, **prom_fig["series"], "overflow_total": last["overflow"]},
                "scrapes": prom_fig["scrapes"],
                "kernel_health": {"lost_events": last["lost"], "decode_errors": last["decode_errors"],
                                  "refresh_errors": last["refresh_errors"]},
                "checkpoints": self.checkpoints,
                "churn": churn.summary(),
                "tools": {"kinds": list(TOOLS), "signals": list(SIGNALS), "cycles": cycler.cycles},
                "exporter": exporter,
                "errors": errors,
            }
            summary["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
            summary["criteria"] = {k: {"ok": ok, "why": why} for k, (ok, why) in judge(summary).items()}
            summary["ok"] = all(c["ok"] for c in summary["criteria"].values())
            return summary

    def prometheus_figures(self, prom: Prometheus, lookback: str) -> dict:
        # max_over_time drops __name__ (every family would collide): the name goes into a label first.
        fam = prom.query(f'max_over_time(label_replace(count by (__name__) ({{job="tapttrace",'
                         f'__name__=~"tapttrace_.+"}}), "family", "$1", "__name__", "(.+)")[{lookback}:1s])')
        return {"series": {"max_per_family": {r["metric"]["family"]: int(float(r["value"][1])) for r in fam},
                           "prometheus_max_scraped": prom.scalar(
                               f'max_over_time(scrape_samples_scraped{{job="tapttrace"}}[{lookback}])'),
                           "devices_watched_max": prom.scalar(
                               f'max_over_time(sum(tapttrace_devices_watched{{job="tapttrace"}})[{lookback}:1s])')},
                "scrapes": {"total": prom.scalar(f'count_over_time(up{{job="tapttrace"}}[{lookback}])'),
                            "up": prom.scalar(f'sum_over_time(up{{job="tapttrace"}}[{lookback}])'),
                            "max_duration_s": prom.scalar(
                                f'max_over_time(scrape_duration_seconds{{job="tapttrace"}}[{lookback}])')}}

    def _say(self, c: dict) -> None:
        if c["kind"] == "bulk":
            self.log(f"checkpoint {c['n']} (bulk, t={c['t_s']} s): " + (
                f"sent {c['sent']}, read {c['reader']}, dropped {c['tap_dropped']}: exact" if c["ok"]
                else f"MISS: {c['why']}"))
        else:
            self.log(f"checkpoint {c['n']} (dedicated vnet1, t={c['t_s']} s): " + (
                f"sent {c['sent']}, read {c['reader']}, dropped {c['tap_dropped']}: exact" if c["ok"]
                else f"MISS: {c['why']}"))
