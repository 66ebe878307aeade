"""Record diagnose scenarios on the real kernel for the pure tests: `python -m tracer.diagnosis.record [OUT] [NAME...]`.

Each scenario builds the lab (remote ─ veth ─ br0 ─ vnet0 ═ guest) in throwaway `ttdiag-PID-`
namespaces, breaks it one way, runs `tapttrace follow --json` while the remote host pings the
guest, snapshots the namespaces, diagnoses, applies the printed fix and pings again. It writes
tests/recordings/diag-NAME.json: snapshot, journeys, the cause expected and the one found, the
fix, and whether the fix made the guest answer. Needs root; namespaces are always removed.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..lab import Lab, LabSpec
from ..netns import resolve_netns
from ..snapshot import collect_snapshot
from .engine import diagnose, read_process_states
from .journeys import load_journeys
from .locate import locate

PREFIX = "ttdiag"
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Scenario:
    """One way to break the lab, the traffic that shows it, and the cause it must give."""

    name: str
    expected: str
    spec: LabSpec = LabSpec()
    # what either returns is not used (the traffic's ping result, say)
    breaks: Callable[[Lab], object] = lambda lab: None
    # 1 s a probe: most scenarios are faults no answer comes through
    traffic: Callable[[Lab], object] = lambda lab: lab.ping_guest_from_remote(count=3, interval=0.2, timeout=1.0)
    duration: float = 4.0


def _hv(lab: Lab, *argv: str) -> None:
    lab.run(lab.hv_ns, *argv)


def _flood(lab: Lab) -> None:
    lab.ping(lab.remote_ns, lab.guest_ip, count=1300, interval=0.001, timeout=0.1, burst=True)


def _pause(lab: Lab) -> None:
    lab.ping_guest_from_remote(count=1)  # ARP resolved while the guest still reads
    lab.pause_guest()


def _wrong_bridge(lab: Lab) -> None:
    _hv(lab, "ip", "link", "add", "br1", "type", "bridge")
    _hv(lab, "ip", "link", "set", "br1", "up")
    _hv(lab, "ip", "link", "set", "dev", lab.tap, "master", "br1")


def _ingress_listening(lab: Lab) -> None:
    # kernel STP with the longest forward delay, then the uplink flaps: it sits in listening for a minute
    _hv(lab, "ip", "link", "set", "dev", lab.bridge, "type", "bridge", "forward_delay", "3000", "stp_state", "1")
    _hv(lab, "ip", "link", "set", "dev", lab.uplink, "down")
    _hv(lab, "ip", "link", "set", "dev", lab.uplink, "up")


def _no_holder(lab: Lab) -> None:
    lab.stop_guest()  # the tap stays, nobody holds it: no carrier


def _isolated(lab: Lab) -> None:
    _hv(lab, "bridge", "link", "set", "dev", lab.tap, "isolated", "on")
    _hv(lab, "bridge", "link", "set", "dev", lab.uplink, "isolated", "on")


def _nft_bridge_policy(lab: Lab) -> None:
    _hv(lab, "nft", "add table bridge vmfw")
    _hv(lab, "nft", "add chain bridge vmfw fw { type filter hook forward priority 0; policy drop; }")
    _hv(lab, "nft", f"add rule bridge vmfw fw oifname \"{lab.uplink}\" accept")


def _tap_listening(lab: Lab) -> None:
    _hv(lab, "ip", "link", "set", "dev", lab.bridge, "type", "bridge", "forward_delay", "3000", "stp_state", "1")
    _hv(lab, "ip", "link", "set", "dev", lab.tap, "down")
    _hv(lab, "ip", "link", "set", "dev", lab.tap, "up")


SCENARIOS = (
    Scenario("healthy-guest", "ok"),
    Scenario("tap-carries-mac", "local-mac", LabSpec(tap_mac="guest")),
    Scenario("tap-outside", "port-not-in-bridge", LabSpec(attach_tap=False)),
    Scenario("tap-listening", "port-not-forwarding", breaks=_tap_listening),
    Scenario("forward-policy", "netfilter-drop", LabSpec(br_netfilter=True), breaks=lambda lab: _hv(
        lab, "iptables", "-P", "FORWARD", "DROP")),
    Scenario("tap-mtu", "mtu", LabSpec(tap_mtu=576),
             traffic=lambda lab: lab.ping_guest_from_remote(count=3, size=1000, timeout=1.0)),
    Scenario("bcast-off", "flood-blocked", breaks=lambda lab: _hv(lab, "bridge", "link", "set", "dev", lab.tap,
                                                                  "bcast_flood", "off")),
    Scenario("admin-down", "port-not-forwarding", breaks=lambda lab: _hv(lab, "ip", "link", "set", "dev", lab.tap,
                                                                         "down")),
    Scenario("bridge-down", "port-not-forwarding", breaks=lambda lab: _hv(lab, "ip", "link", "set", "dev",
                                                                          lab.bridge, "down")),
    Scenario("no-holder", "port-not-forwarding", breaks=_no_holder),
    Scenario("ingress-listening", "port-not-forwarding", breaks=_ingress_listening),
    Scenario("isolated", "flood-blocked", breaks=_isolated),
    Scenario("fdb-ingress", "fdb-wrong-port", breaks=lambda lab: _hv(
        lab, "bridge", "fdb", "replace", lab.guest_mac, "dev", lab.uplink, "master", "static", "sticky")),
    Scenario("iptables-rule", "netfilter-drop", LabSpec(br_netfilter=True), breaks=lambda lab: _hv(
        lab, "iptables", "-A", "FORWARD", "-d", lab.guest_ip, "-p", "icmp", "-j", "DROP")),
    Scenario("ebtables", "netfilter-drop", breaks=lambda lab: _hv(
        lab, "ebtables", "-A", "FORWARD", "-d", lab.guest_mac, "-j", "DROP")),
    Scenario("nft-bridge-policy", "netfilter-drop", breaks=_nft_bridge_policy),
    Scenario("stopped", "guest-not-reading", breaks=_pause, traffic=_flood, duration=6.0),
    Scenario("wrong-bridge", "wrong-bridge", breaks=_wrong_bridge),
)


def _programs(pid: int) -> int:
    n = 0
    for entry in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            n += "prog_id:" in entry.read_text()
        except OSError:
            pass
    return n


def follow(lab: Lab, s: Scenario) -> tuple[list[dict], dict]:
    """`tapttrace follow --json` while the scenario's traffic runs: (journey dicts, summary)."""
    argv = [sys.executable, "-m", "tracer", "follow", lab.guest_mac, "--ip", lab.guest_ip, "--json",
            "--duration", str(s.duration), "--netns", lab.hv_ns]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and _programs(proc.pid) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        s.traffic(lab)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"follow failed: {err.strip()}")
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    summary: dict = next((d for d in lines if d.get("schema") == "tapttrace.summary/1"), {})
    return [d for d in lines if d.get("schema") == "tapttrace.journey/1"], summary


def trimmed(journeys: list[dict], keep: int = 40) -> list[dict]:
    """At most `keep` journeys of each (verdict, drop reason): a flood of pings repeats itself."""
    seen: dict[tuple, int] = {}
    kept = []
    for j in journeys:
        key = (j["verdict"], tuple((c["outcome"], c.get("reason")) for c in j["copies"]))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= keep:
            kept.append(j)
    return kept


def record(s: Scenario, out: Path) -> dict:
    """Run one scenario and write its recording; returns it."""
    with Lab(s.spec, prefix=PREFIX) as lab:
        s.breaks(lab)
        journeys, summary = follow(lab, s)
        spaces = [resolve_netns(lab.hv_ns), resolve_netns(lab.remote_ns)]
        snap = collect_snapshot(spaces)
        target = locate(snap, lab.guest_mac, ips=(lab.guest_ip,))
        states = read_process_states(target.holders)
        result = diagnose(snap, target, load_journeys(json.dumps(j) for j in journeys), s.duration,
                          process_states=states, lost_events=summary.get("lost_events", 0))
        applied = []
        for command in result.fix:
            run = subprocess.run(shlex.split(command), capture_output=True, text=True)
            applied.append({"command": command, "rc": run.returncode, "stderr": run.stderr.strip()})
        if s.name == "no-holder":
            lab.start_guest()  # the printed advice: start the VM
        time.sleep(0.3)
        after = lab.ping_guest_from_remote(count=3, interval=0.2, size=1000 if s.spec.tap_mtu else None)
        data = {
            "scenario": s.name, "mac": lab.guest_mac, "ips": [lab.guest_ip], "expected": s.expected,
            "found": result.cause, "summary": result.summary, "fix": list(result.fix), "applied": applied,
            "fix_worked": after.received >= 2, "window_s": s.duration, "lost_events": summary.get("lost_events", 0),
            "process_states": {str(k): v for k, v in states.items()},
            "journeys_total": len(journeys), "snapshot": json.loads(snap.to_json()), "journeys": trimmed(journeys),
        }
    (out / f"diag-{s.name}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else ROOT / "tests" / "recordings"
    names = set(args[1:])
    failed = 0
    for s in SCENARIOS:
        if names and s.name not in names:
            continue
        d = record(s, out)
        ok = d["found"] == s.expected and (d["fix_worked"] or not d["fix"])
        failed += not ok
        print(f"{s.name}: expected {s.expected}, found {d['found']}; fix {d['fix']} worked: {d['fix_worked']}"
              f"{'' if ok else '  <-- MISMATCH'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
