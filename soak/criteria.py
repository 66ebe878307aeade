"""The soak's pass/fail rules, on plain figures (no kernel, no root: tested on their own).

Every rule returns (ok, one line that says why); `judge` applies them all to a run's summary.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Optional

RSS_TOLERANCE = 0.10   # "RSS flat (±10 %)"
MIN_RATE_FRACTION = 0.5  # "at ≥ 50 % of saturation"

# What the exporter, follow and diagnose may write on stderr in a healthy run; anything else is
# an error line. One-line notes ("tapttrace: note: …") say what a kernel lacks, not a failure.
_ALLOWED_STDERR = [
    re.compile(r"^tapttrace exporter: serving https?://"),
    re.compile(r"^tapttrace exporter: stopped, programs detached$"),
    re.compile(r"^tapttrace exporter: capabilities reduced to [a-z_, ]+$"),
    re.compile(r"^tapttrace: note: "),
    re.compile(r"^tapttrace: watching "),  # follow/diagnose --json: every hook attached
    re.compile(r"^\s*$"),
]


def error_lines(lines: Iterable[str]) -> list[str]:
    return [line.rstrip("\n") for line in lines if not any(p.search(line.rstrip("\n")) for p in _ALLOWED_STDERR)]


def rss_baseline(samples: list[tuple[float, float]], warmup_s: float) -> Optional[float]:
    """The first sample at or after warmup_s: the exporter's RSS once start-up allocations are done
    (its maps read, the first refreshes and scrapes made)."""
    for t, mb in samples:
        if t >= warmup_s:
            return mb
    return None


def rss_slope_mb_per_hour(samples: list[tuple[float, float]], after_s: float = 0.0) -> Optional[float]:
    """Least-squares slope of RSS over time after after_s, in MB an hour: what days would add."""
    pts = [(t, mb) for t, mb in samples if t >= after_s]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mm = sum(mb for _, mb in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var == 0:
        return None
    return sum((t - mt) * (mb - mm) for t, mb in pts) / var * 3600


def rss_flat(samples: list[tuple[float, float]], warmup_s: float,
             tolerance: float = RSS_TOLERANCE) -> tuple[bool, str]:
    """Every sample after warm-up within ±tolerance of the baseline (the end one included)."""
    base = rss_baseline(samples, warmup_s)
    if base is None:
        return False, f"no RSS sample after the {warmup_s:.0f} s warm-up"
    after = [mb for t, mb in samples if t >= warmup_s]
    lo, hi = min(after), max(after)
    ok = lo >= base * (1 - tolerance) and hi <= base * (1 + tolerance)
    return ok, (f"RSS after warm-up {base:.1f} MB, then {lo:.1f}..{hi:.1f} MB, end {after[-1]:.1f} MB "
                f"(allowed {base * (1 - tolerance):.1f}..{base * (1 + tolerance):.1f})")


def judge(s: dict) -> dict[str, tuple[bool, str]]:
    """Each criterion of issue 14 on a summary (soak.run builds it): name -> (ok, why)."""
    out: dict[str, tuple[bool, str]] = {}
    rss = s["rss"]
    out["rss_flat"] = rss_flat([tuple(x) for x in rss["samples"]], rss["warmup_s"])
    ser = s["series"]
    over = ser.get("overflow_total") or 0
    worst = max(ser.get("max_per_family", {}).values(), default=0)
    out["series_bounded"] = (worst <= ser["cap"] and over == 0 and ser.get("prometheus_max_scraped") is not None,
                             f"largest family {worst} series (cap {ser['cap']}), {over} label sets into _overflow, "
                             f"at most {ser.get('prometheus_max_scraped')} samples a scrape in Prometheus")
    cps = s["checkpoints"]
    bad = [c for c in cps if not c["ok"]]
    out["counters_exact"] = (bool(cps) and not bad,
                             f"{len(cps) - len(bad)}/{len(cps)} checkpoints exact"
                             + (f"; first miss: {bad[0]['why']}" if bad else ""))
    errs = s["errors"]
    n_err = sum(len(v) for v in errs.values())
    out["no_error_lines"] = (n_err == 0, f"{n_err} error lines" + (
        f" (first: {next(iter(line for v in errs.values() for line in v))!r})" if n_err else ""))
    k = s["kernel_health"]
    out["nothing_lost"] = (k.get("lost_events", 0) == 0 and k.get("decode_errors", 0) == 0,
                           f"lost events {k.get('lost_events')}, decode errors {k.get('decode_errors')}")
    tools = s["tools"]
    left = [c for c in tools["cycles"] if not c.get("gone_ok")]
    combos = {(c["tool"], c["signal"]) for c in tools["cycles"]}
    want = {(t, sig) for t in tools["kinds"] for sig in tools["signals"]}
    out["no_bpf_leftovers"] = (not left and want <= combos and s["exporter"].get("gone_ok", False),
                               f"{len(tools['cycles'])} follow/diagnose stops, {len(left)} left BPF objects behind; "
                               f"every tool × signal covered: {want <= combos}; exporter's objects gone after "
                               f"SIGTERM: {s['exporter'].get('gone_ok')}")
    bad_exit = [c for c in tools["cycles"] if not c.get("exit_ok")]
    out["clean_exits"] = (not bad_exit and s["exporter"].get("exit_code") == 0,
                          f"{len(bad_exit)} follow/diagnose exits not as expected; exporter exit "
                          f"{s['exporter'].get('exit_code')}")
    r = s["rate"]
    # The exporter's load is every frame the bridge hands the tap: read, or dropped on its full queue
    # when the reader falls behind (the machine is shared); the reader's own pace is not the point.
    handled = r.get("handled_fps", r["delivered_fps"])
    frac = (handled / r["saturation_fps"]) if r.get("saturation_fps") else 0.0
    out["rate"] = (frac >= MIN_RATE_FRACTION,
                   f"{handled:.0f} frames/s through the bridge to vnet0 during traffic ({r['delivered_fps']:.0f} "
                   f"read) = {frac:.0%} of the path's saturation {r.get('saturation_fps', 0):.0f}/s "
                   f"(need {MIN_RATE_FRACTION:.0%})")
    ch = s["churn"]
    out["churn"] = (ch["created"] > 0 and ch["failed"] == 0,
                    f"{ch['created']} VMs created, {ch['destroyed']} destroyed, {ch['failed']} failed")
    return out
