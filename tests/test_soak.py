"""The exporter's soak (soak/, docs/soak.md): its rules on plain figures (no root), its bad input,
and a one-minute smoke of the real thing (kernel) whose summary must meet every criterion.

The smoke's exactness checks wait on conditions inside the soak (every frame sent is read or
counted dropped before the exporter's counters are compared); nothing here asserts a duration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # soak/ and bench/ are directories of the repository, not installed packages
    sys.path.insert(0, str(ROOT))

from soak import bpfobjs  # noqa: E402
from soak.criteria import error_lines, judge, rss_flat, rss_slope_mb_per_hour  # noqa: E402

# -- pure rules ---------------------------------------------------------------------------------

def test_rss_flat_allows_ten_percent_after_warmup_only():
    start_up = [(0, 50.0), (5, 90.0)]  # start-up allocations (kallsyms on the first drop) are not a leak
    flat = start_up + [(t, 94.0 + (t % 3) * 0.5) for t in range(10, 600, 10)]
    assert rss_flat(flat, warmup_s=10)[0]
    growing = start_up + [(t, 94.0 + t * 0.02) for t in range(10, 600, 10)]  # +12 MB over the run
    ok, why = rss_flat(growing, warmup_s=10)
    assert not ok and "allowed" in why
    assert rss_flat(start_up, warmup_s=10) == (False, "no RSS sample after the 10 s warm-up")


def test_rss_slope_is_in_mb_an_hour():
    samples = [(float(t), 100.0 + t / 3600 * 2.0) for t in range(0, 1800, 10)]  # +2 MB an hour
    assert rss_slope_mb_per_hour(samples) == pytest.approx(2.0)
    assert rss_slope_mb_per_hour(samples[:2]) is None


def test_error_lines_keep_only_what_is_not_a_known_healthy_line():
    lines = ["tapttrace exporter: serving http://127.0.0.1:41234/metrics",
             "tapttrace: note: no FDB counts from bridge:br_fdb_update (…)",
             "Traceback (most recent call last):", "  File \"x.py\", line 1", "",
             "tapttrace exporter: stopped, programs detached", "tapttrace: reading an exporter map failed: EBADF"]
    assert error_lines(lines) == ["Traceback (most recent call last):", "  File \"x.py\", line 1",
                                  "tapttrace: reading an exporter map failed: EBADF"]


def test_fdinfo_of_a_link_names_the_link_not_its_program():
    link = ("pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t1\nlink_type:\ttracing\nlink_id:\t77\n"
            "prog_tag:\tab\nprog_id:\t901\n")
    prog = "pos:\t0\nprog_type:\t26\nprog_jited:\t1\nprog_tag:\tab\nmemlock:\t4096\nprog_id:\t901\n"
    bpf_map = "map_type:\t6\nkey_size:\t4\nvalue_size:\t8\nmax_entries:\t1\nmap_flags:\t0x0\nmap_id:\t33\n"
    assert bpfobjs.parse_fdinfo(link) == ("link", 77)
    assert bpfobjs.parse_fdinfo(prog) == ("prog", 901)
    assert bpfobjs.parse_fdinfo(bpf_map) == ("map", 33)
    assert bpfobjs.parse_fdinfo("pos:\t0\nflags:\t02\n") is None


def test_what_a_process_keeps_alive_includes_its_links_programs_and_their_maps():
    lists = {"link": [{"id": 77, "prog_id": 901}], "prog": [{"id": 901, "map_ids": [33, 34]}, {"id": 5}],
             "map": [{"id": 33}, {"id": 34}, {"id": 35}]}
    held = bpfobjs.closure(bpfobjs.Held(link={77}), lists)
    assert held.as_dict() == {"prog": [901], "link": [77], "map": [33, 34]}
    left = bpfobjs.still_listed(held, {"link": [], "prog": [{"id": 901}], "map": [{"id": 35}]})
    assert left.as_dict() == {"prog": [901], "link": [], "map": []}


def summary(**over) -> dict:
    """A healthy summary as soak.run builds it; `over` replaces whole sections."""
    cycles = [{"tool": t, "signal": s, "gone_ok": True, "exit_ok": True}
              for t in ("follow", "diagnose") for s in ("SIGINT", "SIGTERM", "SIGKILL")]
    s = {"rss": {"samples": [[0, 50.0], [10, 90.0], [20, 90.5], [30, 90.2]], "warmup_s": 10},
         "series": {"cap": 30, "max_per_family": {"tapttrace_frames_total": 13}, "overflow_total": 0,
                    "prometheus_max_scraped": 50},
         "checkpoints": [{"ok": True, "why": ""}, {"ok": True, "why": ""}],
         "errors": {"exporter": [], "tools": []},
         "kernel_health": {"lost_events": 0, "decode_errors": 0},
         "tools": {"kinds": ["follow", "diagnose"], "signals": ["SIGINT", "SIGTERM", "SIGKILL"], "cycles": cycles},
         "exporter": {"gone_ok": True, "exit_code": 0},
         "rate": {"saturation_fps": 100_000, "delivered_fps": 60_000},
         "churn": {"created": 60, "destroyed": 60, "failed": 0}}
    s.update(over)
    return s


def test_a_healthy_summary_meets_every_criterion():
    assert all(ok for ok, _ in judge(summary()).values()), judge(summary())


@pytest.mark.parametrize("change,criterion", [
    ({"checkpoints": [{"ok": True, "why": ""}, {"ok": False, "why": "tap delivered: exporter 9, reader 10"}]},
     "counters_exact"),
    ({"checkpoints": []}, "counters_exact"),
    ({"errors": {"exporter": ["Traceback (most recent call last):"], "tools": []}}, "no_error_lines"),
    ({"exporter": {"gone_ok": False, "exit_code": 0}}, "no_bpf_leftovers"),
    ({"exporter": {"gone_ok": True, "exit_code": 1}}, "clean_exits"),
    ({"rate": {"saturation_fps": 100_000, "delivered_fps": 40_000}}, "rate"),
    ({"kernel_health": {"lost_events": 3, "decode_errors": 0}}, "nothing_lost"),
    ({"churn": {"created": 60, "destroyed": 59, "failed": 1}}, "churn"),
])
def test_each_criterion_fails_on_its_own_finding(change, criterion):
    verdict = judge(summary(**change))
    assert [k for k, (ok, _) in verdict.items() if not ok] == [criterion]


def test_series_past_the_cap_or_into_overflow_fail():
    over = summary(series={"cap": 30, "max_per_family": {"tapttrace_frames_total": 31}, "overflow_total": 0,
                           "prometheus_max_scraped": 50})
    assert not judge(over)["series_bounded"][0]
    spilled = summary(series={"cap": 30, "max_per_family": {"tapttrace_frames_total": 30}, "overflow_total": 4,
                              "prometheus_max_scraped": 50})
    assert not judge(spilled)["series_bounded"][0]


def test_a_signal_never_used_on_a_tool_fails_the_leftover_criterion():
    cycles = [c for c in summary()["tools"]["cycles"] if (c["tool"], c["signal"]) != ("diagnose", "SIGKILL")]
    s = summary()
    s["tools"]["cycles"] = cycles
    assert not judge(s)["no_bpf_leftovers"][0]


@pytest.mark.parametrize("args,env,says", [
    (["--minutes", "0"], {}, "must be > 0"),
    ([], {"SOAK_MINUTES": "soon"}, "is not a number"),
    (["--out", "/nonexistent/soak"], {}, "not a directory"),
    (["--keep", "-1"], {}, "must be > 0"),
])
def test_bad_input_is_one_line_and_exit_2(args, env, says):
    r = subprocess.run([sys.executable, "-m", "soak", *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=60)
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1 and says in r.stderr, r.stderr


# -- the real thing, for one minute -----------------------------------------------------------

SMOKE = ["--minutes", "1", "--segment", "15", "--keep", "4", "--max-series", "30", "--refresh", "1",
         "--tool-pause", "1", "--dedicated-frames", "500", "--saturation-seconds", "3"]


@pytest.mark.kernel
def test_soak_smoke_meets_every_criterion(tmp_path):
    """A 1-minute soak (about 80 s with set-up): 60 VMs through a 30-series cap, every follow/
    diagnose × signal stop, 4 bulk and 4 dedicated checkpoints, Prometheus scraping each second."""
    proc = subprocess.Popen([sys.executable, "-m", "soak", *SMOKE, "--out", str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=600)  # a bound on a hung run, not a speed assertion
    finally:
        if proc.poll() is None:
            proc.terminate()  # the soak cleans up on SIGTERM
            proc.communicate(timeout=120)
    s = json.loads((tmp_path / "soak-results.json").read_text())
    failed = {k: c["why"] for k, c in s["criteria"].items() if not c["ok"]}
    assert proc.returncode == 0 and not failed, (failed, out[-3000:], err[-3000:])
    assert s["schema"] == "tapttrace.soak/1"
    # what the criteria stand on is really there
    assert s["churn"]["created"] >= 30 and s["churn"]["destroyed"] == s["churn"]["created"]
    assert s["series"]["max_per_family"]["tapttrace_frames_total"] > 2  # the VMs' series reached Prometheus
    assert {c["kind"] for c in s["checkpoints"]} == {"bulk", "dedicated"}
    assert all(c["exporter"] and c["reader"] > 0 for c in s["checkpoints"])
    assert s["scrapes"]["total"] >= 30
    assert "soak: every criterion met" in out
    # nothing left behind: the soak's namespaces are gone
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"ts{proc.pid}-" not in netns, netns


def test_a_namespace_unmounted_between_open_and_setns_is_skipped_as_gone(tmp_path):
    """Found by the soak: `ip netns del` between listing and entering leaves the plain file under
    the mount point; setns(2) on it fails with EINVAL, and follow died at start with a traceback."""
    from tracer.netns import Netns
    from tracer.snapshot import collect_devices

    stale = tmp_path / "ts-gone"
    stale.write_text("")  # what /run/netns/NAME is once unmounted
    assert collect_devices([Netns("ts-gone", 1, str(stale))]) == []
