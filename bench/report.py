"""RESULTS.md (for people) and results.json (for machines) from one run of the harness."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .harness import CONFIGS, DESCRIPTIONS

TARGETS = [
    # (config, figure, comparison, value, text): issue 13's
    ("exporter", "ratio", ">=", 0.97, "exporter ≥ 97 % of baseline frames/s"),
    ("exporter", "bpf_ns_per_frame", "<=", 150, "exporter ≤ 150 ns of BPF a delivered frame (bpf_stats included)"),
    ("follow-nomatch", "ratio", ">=", 0.98, "follow, no frame matching ≥ 98 % of baseline"),
    ("follow-match", "unaccounted", "<=", 0, "follow, every frame matching: 0 frames unaccounted in its summary"),
    ("follow-match", "journeys_per_s", ">=", 100_000, "follow, every frame matching: ≥ 100 k journeys/s written"),
    ("follow-match", "first_event_s", "<=", 0.5, "first event ≤ 0.5 s after start"),
    ("follow-nomatch", "detach_s", "<=", 0.1, "SIGINT → detached ≤ 0.1 s (no match)"),
    ("follow-match", "detach_s", "<=", 0.1, "SIGINT → detached ≤ 0.1 s (all match)"),
    ("exporter", "detach_s", "<=", 0.1, "SIGINT → detached ≤ 0.1 s (exporter)"),
    ("follow-nomatch", "peak_rss_mb", "<=", 100, "follow resident memory ≤ 100 MB (no match)"),
    ("follow-match", "peak_rss_mb", "<=", 100, "follow resident memory ≤ 100 MB (all match)"),
    ("diagnose", "beyond_window_s", "<=", 1.0, "diagnose under the flood finishes within its window + 1 s"),
]


def _fmt(v: Optional[float], kind: str) -> str:
    if v is None:
        return "–"
    if kind == "fps":
        return f"{v / 1000:.1f} k"
    if kind == "pct":
        return f"{100 * v:.1f} %"
    if kind == "s":
        return f"{v:.3f} s"
    if kind == "mb":
        return f"{v:.0f} MB"
    if kind == "ns":
        return f"{v:.0f} ns"
    if kind == "int":
        return f"{v:.0f}"
    return f"{v:.2f}"


def _cell(stats: Optional[dict], kind: str) -> str:
    if not stats:
        return "–"
    if stats["n"] == 1 or stats["min"] == stats["max"]:
        return _fmt(stats["median"], kind)
    return f"{_fmt(stats['median'], kind)} ({_fmt(stats['min'], kind)}–{_fmt(stats['max'], kind)})"


ROWS = [
    ("frames/s delivered to the tap reader", "delivered_fps", "fps"),
    ("ratio to baseline (same round)", "ratio", "pct"),
    ("tapttrace CPU (share of one core, during the window)", "tool_cpu_frac", "pct"),
    ("BPF run time per delivered frame (bpf_stats)", "bpf_ns_per_frame", "ns"),
    ("journeys/s handled (at saturation)", "journeys_per_s", "fps"),
    ("events lost (at saturation)", "lost_events", "int"),
    ("frames in follow's summary (shown or counted in the kernel)", "summary_frames", "int"),
    ("… of them counted in the kernel, not shown", "counted_in_kernel", "int"),
    ("frames the reader got while follow ran, not in its summary", "unaccounted", "int"),
    ("start → programs attached", "attach_s", "s"),
    ("start → first event written", "first_event_s", "s"),
    ("peak resident memory (VmHWM)", "peak_rss_mb", "mb"),
    ("SIGINT → BPF programs detached", "detach_s", "s"),
    ("SIGINT → process exited", "exit_s", "s"),
    ("backlog events discarded at exit (follow's exit budget)", "discarded_events", "int"),
    ("backlog journeys discarded at exit (follow's exit budget)", "discarded_journeys", "int"),
    ("diagnose: command run time", "command_s", "s"),
    ("diagnose: run time beyond its window", "beyond_window_s", "s"),
]


def target_lines(summary: dict, available: dict) -> list[str]:
    lines = []
    for config, fig, op, val, text in TARGETS:
        if config not in available:
            lines.append(f"- {text}: not measured (`{config}` not run in this invocation)")
            continue
        if not available[config]:
            lines.append(f"- {text}: **not measured** (`{config}` not available)")
            continue
        st = (summary.get(config) or {}).get(fig)
        if not st:
            lines.append(f"- {text}: **not measured**")
            continue
        med, worst = st["median"], (st["min"] if op == ">=" else st["max"])
        ok = med >= val if op == ">=" else med <= val
        kind = {row_fig: row_kind for _, row_fig, row_kind in ROWS}.get(fig, "s")
        lines.append(f"- {text}: {'met' if ok else '**missed**'} — median {_fmt(med, kind)}, "
                     f"worst {_fmt(worst, kind)}")

    def median(config: str, fig: str) -> Optional[float]:
        return ((summary.get(config) or {}).get(fig) or {}).get("median")

    floor, exporter = median("hooks-floor", "bpf_ns_per_frame"), median("exporter", "bpf_ns_per_frame")
    if floor is not None:
        ratio = median("hooks-floor", "ratio")
        lines.append(f"- floor of any tracepoint counter here (hooks-floor: its programs return at once): "
                     f"{_fmt(floor, 'ns')} of BPF a frame"
                     + (f", {_fmt(ratio, 'pct')} of baseline frames/s" if ratio is not None else "")
                     + (f"; the exporter's own work above it: {_fmt(exporter - floor, 'ns')}" if exporter else ""))
    loss = summary.get("loss") or {}
    if available.get("follow-match") and loss.get("max_clean_offered_fps") is not None:
        lines.append(f"- follow, all matching, loss sweep: no event lost up to offered "
                     f"{_fmt(loss.get('max_clean_offered_fps'), 'fps')} frames/s (highest step), "
                     f"{_fmt(loss.get('max_clean_journeys_per_s'), 'fps')} journeys/s written at most; "
                     f"loss starts at offered {_fmt(loss.get('loss_starts_offered_fps'), 'fps')} frames/s")
    return lines


def render(results: dict) -> str:
    m = results["machine"]
    s = results["summary"]
    avail = results["available"]
    cols = [c for c in CONFIGS if c in avail]
    out = ["# tapttrace benchmark results", "",
           f"Command: `{results['command']}` (as root, from the repository; `sudo make bench` runs it)  ",
           f"Date: {m['date']}  ",
           f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['machine']}  ",
           f"Kernel: {m['kernel']}; Python {m['python']}  ",
           f"Load average at start / end: {' '.join(m.get('loadavg_at_start', []))} / "
           f"{' '.join(m.get('loadavg_at_end', []))} (other work on the machine shows up here)", "",
           "Topology (bench/topology.py, two namespaces, nothing in the root namespace): C sender "
           "(AF_PACKET, sendmmsg, qdisc bypass, 64-byte UDP frames, pinned to CPU "
           f"{results['params']['sender_cpu']}) → veth eth0 → up0 → br0 (static FDB entry) → tap vnet0 → "
           f"C reader (poll + read until EAGAIN, pinned to CPU {results['params']['reader_cpu']}). "
           "The sender's CPU also runs the whole bridge path in softirq, so that core is the bottleneck; "
           "tapttrace is not pinned (it competes for the same two cores, as it would on a hypervisor).", "",
           f"Each configuration ran {results['params']['repeats']} times, alternating, "
           f"{results['params']['window_s']} s of full-rate traffic each: median (min–max).", ""]
    out.append("| figure | " + " | ".join(f"{i + 1}. {c}" for i, c in enumerate(cols)) + " |")
    out.append("|---|" + "---|" * len(cols))
    for label, fig, kind in ROWS:
        cells = []
        for c in cols:
            if not avail.get(c):
                cells.append("not available")
            else:
                cells.append(_cell((s.get(c) or {}).get(fig), kind))
        if all(x in ("–", "not available") for x in cells):
            continue
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", "Configurations:"]
    for i, c in enumerate(cols):
        note = "" if avail.get(c) else " — **not available** (the command doesn't exist yet; picked up "\
                                       "automatically once `tapttrace " + c + " --help` works)"
        out.append(f"{i + 1}. {c}: {DESCRIPTIONS.get(c, results['descriptions'][c])}{note}")
    gen, rd, sat = results.get("generator_ceiling"), results.get("reader_ceiling"), results.get("saturation_probe")
    if gen and rd and sat:
        out += ["", "## The harness's own ceilings", "",
                f"- generator alone (into a veth pair that discards at once): {_fmt(gen['fps'], 'fps')} frames/s",
                f"- reader alone (draining a full tap queue of {rd['drained']} frames): "
                f"{_fmt(rd['fps'], 'fps')} frames/s",
                f"- the path with neither limiting (baseline probe): {_fmt(sat['delivered_fps'], 'fps')} "
                f"frames/s, reader busy {_fmt(sat.get('reader_cpu_frac'), 'pct')} of its core, "
                f"{sat['tap_dropped']} frames dropped at the tap",
                "", "Both ceilings are well above the path's rate: neither is the bottleneck."
                if gen["fps"] > 1.3 * sat["delivered_fps"] and rd["fps"] > 1.3 * sat["delivered_fps"]
                else "**One of the ceilings is close to the path's rate: read the numbers with care.**"]
    sweep = results.get("sweep")
    if sweep:
        out += ["", "## follow, every frame matching: stepping the offered rate", "",
                "| offered frames/s | delivered frames/s | journeys/s handled | events | events lost | "
                "tapttrace CPU |", "|---|---|---|---|---|---|"]
        for r in sweep:
            out.append(f"| {_fmt(r['offered_fps'], 'fps')} | {_fmt(r['delivered_fps'], 'fps')} | "
                       f"{_fmt(r['journeys_per_s'], 'fps')} | {r['events']} | {r['lost_events']} | "
                       f"{_fmt(r['tool_cpu_frac'], 'pct')} |")
    diag = [r for r in results["runs"] if r["config"] == "diagnose"]
    if diag:
        codes = ", ".join(str(r.get("exit_code")) for r in diag)
        head = (diag[0].get("output_head") or "").strip()
        out += ["", "## diagnose while traffic flows", "",
                f"Exit codes of the {len(diag)} runs: {codes} (0: nothing wrong, 1: a cause found).",
                "Its output in the first run began:", "", "```", head, "```"]
    bpf_rows = _bpf_table(results)
    if bpf_rows:
        out += ["", "## BPF programs (kernel.bpf_stats_enabled=1 window; stats add ≈ 45 ns a hit)", ""] + bpf_rows
    out += ["", "## Targets", ""] + target_lines(s, avail)
    notes = results.get("notes")
    if notes:
        out += ["", "## Findings", "", notes.strip()]
    return "\n".join(out) + "\n"


def _bpf_table(results: dict) -> list[str]:
    rows = []
    for config in [c for c in CONFIGS if c not in ("baseline", "diagnose")]:  # the forced-loader ones too
        runs = [r for r in results["runs"] if r["config"] == config and r.get("bpf")]
        if not runs:
            continue
        progs = runs[0]["bpf"]["programs"]
        for name, p in sorted(progs.items()):
            rows.append(f"| {config} | {name.split('#')[0]} | {p['hits_per_frame']:.2f} | "
                        + (f"{p['ns_per_hit']:.0f}" if p["ns_per_hit"] else "–") + " |")
    if not rows:
        return []
    return ["| configuration | program | hits per delivered frame | ns per hit |", "|---|---|---|---|"] + rows


def write_results(results: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = out_dir / "FINDINGS.md"
    if notes.exists() and "notes" not in results:
        results["notes"] = notes.read_text()
    md, js = out_dir / "RESULTS.md", out_dir / "results.json"
    js.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md.write_text(render(results))
    return md, js
