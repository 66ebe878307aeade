"""`python -m soak [--minutes M] …`: options, the human summary, the exit code."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Optional

from .run import HERE, Params, Soak

EXIT_FAILED, EXIT_USAGE, EXIT_ENV = 1, 2, 3


def positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return v
    return parse


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(EXIT_USAGE, f"soak: {message} (python -m soak --help)\n")


def human(s: dict) -> list[str]:
    r, rss, ser, sc = s["rate"], s["rss"], s["series"], s["scrapes"]
    ch, ex = s["churn"], s["exporter"]
    cps = s["checkpoints"]
    lines = [
        f"soak: {s['duration_s'] / 60:.1f} min on {s['machine']['kernel']}, load average "
        f"{' '.join(s['machine']['loadavg_at_start'])} at start, {' '.join(s['machine']['loadavg_at_end'])} at end",
        f"rate: saturation {r['saturation_fps']:.0f}/s without a tracer; offered {r['offered_fps']:.0f}/s, "
        f"through the bridge {r['handled_fps']:.0f}/s ({r['handled_fps'] / r['saturation_fps']:.0%}), read "
        f"{r['delivered_fps']:.0f}/s, tap queue {r['tap_queue']} over "
        f"{r['segments']} segments; {r['bulk_frames']} bulk frames, {r['dedicated_frames']} on the dedicated path",
        f"RSS: start {rss['start_mb']:.1f} MB, after warm-up ({rss['warmup_s']:.0f} s) {rss['baseline_mb']:.1f}, "
        f"end {rss['end_mb']:.1f}, max {rss['max_mb']:.1f}, slope "
        + (f"{rss['slope_mb_per_hour']:+.2f} MB/h" if rss["slope_mb_per_hour"] is not None else "n/a"),
        f"series: largest family {max(ser['max_per_family'].values(), default=0)} (cap {ser['cap']}), "
        f"{ser['overflow_total']:.0f} into _overflow, at most {ser['prometheus_max_scraped']} samples a scrape, "
        f"at most {ser['devices_watched_max']} devices watched",
        f"scrapes: {sc['up']:.0f}/{sc['total']:.0f} up, slowest {sc['max_duration_s'] * 1000:.0f} ms",
        f"checkpoints: {sum(c['ok'] for c in cps)}/{len(cps)} exact "
        f"({sum(c['kind'] == 'bulk' for c in cps)} bulk, {sum(c['kind'] == 'dedicated' for c in cps)} dedicated)",
        f"churn: {ch['created']} VMs created, {ch['destroyed']} destroyed, {ch['failed']} failed, "
        f"{ch['late_ticks']} ticks late, create median {ch['create_s_median'] or 0:.2f} s",
        f"follow/diagnose: {len(s['tools']['cycles'])} stops "
        + ", ".join(f"{t}/{sig} {sum(1 for c in s['tools']['cycles'] if c['tool'] == t and c['signal'] == sig)}"
                    for t in s["tools"]["kinds"] for sig in s["tools"]["signals"]),
        f"exporter: exit {ex['exit_code']} after SIGTERM, its {sum(ex['held'].values())} BPF objects gone: "
        f"{ex['gone_ok']}; CPU {ex['cpu_frac']:.0%} of a core",
        f"kernel health: lost {s['kernel_health']['lost_events']:.0f}, decode errors "
        f"{s['kernel_health']['decode_errors']:.0f}, refresh errors {s['kernel_health']['refresh_errors']:.0f}",
    ]
    for name, c in s["criteria"].items():
        lines.append(f"{'PASS' if c['ok'] else 'FAIL'} {name}: {c['why']}")
    lines.append("soak: " + ("every criterion met" if s["ok"] else "FAILED"))
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    ap = Parser(prog="python -m soak", description=__doc__.split("\n")[0])
    # argparse converts a string default with `type` too: a bad SOAK_MINUTES is one usage line.
    ap.add_argument("--minutes", type=positive(float), default=os.environ.get("SOAK_MINUTES") or "30",
                    help="how long (default 30, or $SOAK_MINUTES)")
    ap.add_argument("--rate-fraction", type=positive(float), default=0.7,
                    help="bulk traffic offered, as a fraction of the path's saturation (default 0.7)")
    ap.add_argument("--segment", type=positive(float), default=60.0,
                    help="seconds of bulk traffic between checkpoints (default 60)")
    ap.add_argument("--vm-interval", type=positive(float), default=1.0, help="a VM created every S seconds")
    ap.add_argument("--keep", type=positive(int), default=10, help="VMs alive at once (default 10)")
    ap.add_argument("--max-series", type=positive(int), default=500, help="the exporter's --max-series (default 500)")
    ap.add_argument("--refresh", type=positive(float), default=5.0, help="the exporter's --refresh (default 5)")
    ap.add_argument("--dedicated-frames", type=positive(int), default=2000,
                    help="frames on the dedicated path at each checkpoint (default 2000)")
    ap.add_argument("--tool-pause", type=float, default=5.0, help="seconds between follow/diagnose runs")
    ap.add_argument("--min-tool-cycles", type=int, default=6,
                    help="follow/diagnose stops before the soak may end (default 6: every tool × signal)")
    ap.add_argument("--saturation-seconds", type=positive(float), default=5.0)
    ap.add_argument("--tap-queue", type=positive(int), default=1000,
                    help="txqueuelen of the two measured taps (default 1000, a tap's own)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds before the RSS baseline (default: 20 %% of the run, at most 120)")
    ap.add_argument("--out", type=Path, default=HERE, help="directory for soak-results.json (default soak/)")
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if a.tool_pause < 0 or a.min_tool_cycles < 0:
        print("soak: --tool-pause and --min-tool-cycles must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    if not a.out.is_dir():
        print(f"soak: --out {a.out}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    p = Params(minutes=a.minutes, rate_fraction=a.rate_fraction, segment_s=a.segment, vm_interval=a.vm_interval,
               keep=a.keep, max_series=a.max_series, refresh_s=a.refresh, dedicated_frames=a.dedicated_frames,
               tool_pause_s=a.tool_pause, min_tool_cycles=a.min_tool_cycles, saturation_s=a.saturation_seconds,
               tap_queue=a.tap_queue, warmup_s=a.warmup, out=a.out,
               command=" ".join(["python -m soak", *map(shlex.quote, argv if argv is not None else sys.argv[1:])]))

    def on_term(*_):  # SIGTERM takes the same clean-up path as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Started as a background job of a non-interactive shell, SIGINT comes ignored, and an ignored
    # signal stays ignored across exec: the follow/diagnose runs it stops by SIGINT would not stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        summary = Soak(p, log=lambda line: print(line, flush=True)).run()
    except OSError as err:
        print(f"soak: {err}", file=sys.stderr)
        return EXIT_ENV
    except KeyboardInterrupt:  # everything it made is removed on the way out (ExitStack)
        print("soak: interrupted, cleaned up; no summary", file=sys.stderr)
        return 130
    out = p.out / "soak-results.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(human(summary)))
    print(f"wrote {out}")
    return 0 if summary["ok"] else EXIT_FAILED
