"""A fast run of the benchmark harness (bench/), so it can't rot. Timings are never asserted here:
only that the harness runs end to end, writes RESULTS.md and results.json with every figure for
the configurations that ran, and leaves nothing behind. The short windows (0.5 s) are how long the
harness measures, not bounds on anything: no figure's value is asserted, only that it was made
(and that at least one frame got through a window of half a second, ~10^5 frames)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PER_CONFIG = {
    "baseline": ["delivered_fps", "ratio"],
    "exporter": ["delivered_fps", "ratio", "tool_cpu_frac", "attach_s", "peak_rss_mb", "detach_s"],
    "follow-nomatch": ["delivered_fps", "ratio", "tool_cpu_frac", "attach_s", "peak_rss_mb", "detach_s",
                       "lost_events", "bpf_ns_per_frame"],
    "follow-match": ["delivered_fps", "ratio", "tool_cpu_frac", "attach_s", "first_event_s", "peak_rss_mb",
                     "detach_s", "lost_events", "journeys_per_s", "bpf_ns_per_frame"],
    "diagnose": ["delivered_fps", "ratio", "tool_cpu_s", "command_s", "beyond_window_s"],
    "hooks-floor": ["delivered_fps", "ratio", "attach_s", "detach_s", "bpf_ns_per_frame"],
}


@pytest.mark.kernel
def test_bench_harness_smoke(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "--repeats", "1", "--window", "0.5", "--bpf-window", "0.3",
         "--sweep", "5000", "--sweep-seconds", "0.5", "--ceiling-seconds", "0.5", "--reader-queue", "5000",
         "--out", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.terminate()  # the harness cleans up on SIGTERM
            proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err

    results = json.loads((tmp_path / "results.json").read_text())
    md = (tmp_path / "RESULTS.md").read_text()
    assert results["schema"] == "tapttrace.bench/1"
    assert results["machine"]["kernel"] and results["command"].startswith("python -m bench")
    for key in ("generator_ceiling", "reader_ceiling"):
        assert results[key]["fps"] > 0
    assert results["saturation_probe"]["delivered_fps"] > 0

    ran = [c for c, ok in results["available"].items() if ok]
    assert {"baseline", "follow-nomatch", "follow-match", "hooks-floor"} <= set(ran)
    for config in results["available"]:
        if config not in ran:
            assert "not available" in md
            continue
        runs = [r for r in results["runs"] if r["config"] == config]
        assert len(runs) == 1, config
        for figure in PER_CONFIG[config]:
            assert runs[0].get(figure) is not None, (config, figure)
            assert results["summary"][config][figure]["n"] == 1, (config, figure)
        if "programs_left_after_exit" in runs[0]:
            assert runs[0]["programs_left_after_exit"] is False, config
    (row,) = results["sweep"]
    for figure in ("offered_fps", "delivered_fps", "journeys_per_s", "events", "lost_events"):
        assert row[figure] is not None, figure
    assert "| frames/s delivered to the tap reader |" in md
    assert "- floor of any tracepoint counter here (hooks-floor" in md

    # nothing left behind: the harness's namespaces are gone
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"ttbench-{proc.pid}-" not in netns, netns


@pytest.mark.kernel
def test_startup_bench_measures_what_the_tests_no_longer_assert():
    """bench.startup: BTF parse and device collection times, and their share of the budgets the
    tests once asserted (tests/test_btf.py, tests/test_snapshot.py); its namespaces are gone after."""
    p = subprocess.Popen([sys.executable, "-m", "bench.startup", "--repeats", "1", "--json"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    r = json.loads(out)
    assert r["devices"] == r["namespaces"] * 8
    for figure in ("btf_load_s", "btf_load_of_budget", "collect_devices_s", "collect_devices_of_budget",
                   "collect_snapshot_s"):
        assert r[figure] > 0, figure
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"ttstartup-{p.pid}-" not in netns, netns


def test_startup_bench_refuses_bad_repeats_in_one_line():
    p = subprocess.run([sys.executable, "-m", "bench.startup", "--repeats", "0"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1


@pytest.mark.parametrize("recording", [None, ROOT / "tests" / "recordings" / "lab-healthy.jsonl"])
def test_pipeline_budget_runs_without_root(recording):
    """bench.pipeline replays a recording through follow's Python stages and times each one."""
    if str(ROOT) not in sys.path:  # bench/ is a directory of the repository, not an installed package
        sys.path.insert(0, str(ROOT))
    from bench.pipeline import DEFAULTS, budget

    path = recording or next(p for p in DEFAULTS if p.exists())
    r = budget(path, journeys=300)
    assert r["journeys"] >= 300
    assert set(r["us_per_journey"]) == {"events.decode", "Stitcher.feed", "Stitcher.flush (build)", "Annotator",
                                        "JSON-lines sink"}
    assert r["total_us_per_journey"] > 0 and r["journeys_per_s_one_core"] > 0
