"""The terminal prints MACs, addresses and names as they are. rich reads "[bold]" as markup and
":cd:" as an emoji code; a device, bridge or domain may be called anything, and a MAC's octets
make every ":xx:" pair. So: a recorded diagnosis whose guest MAC, tap and bridge are renamed,
run through the real rules and printed by the real terminal (make_console), must show each
name and MAC verbatim, as must follow's journeys and doctor's lines."""
from __future__ import annotations

import json
import shlex

import pytest
from test_diagnosis import LAB_GUEST_IP, REC

from tracer.cli import print_doctor_lines
from tracer.diagnosis import diagnose, locate, render_text
from tracer.features import DoctorLine
from tracer.sinks.jsonl import journey_from_dict
from tracer.sinks.terminal import TerminalSink, make_console
from tracer.snapshot import Snapshot

PAIRS = [f"{i:02x}" for i in range(256)]
# Octets 2-5 sit between colons: each MAC carries four ":xx:" pairs, 64 MACs carry all 256.
MACS = [f"52:{':'.join(PAIRS[i:i + 4])}:8c" for i in range(0, 256, 4)]
# Markup tags, a closing tag, a link, an emoji code and an escaped bracket, as device names
# (15 bytes at most, no '/', ':' or blank: what the kernel allows) and as a libvirt domain name.
TAPS = ["[bold]x", "[/]", "[red]t[/red]", "t[link=a]b", "\\[x]", "[i]v"]
BRIDGES = ["[b]br", "br[/b]", "[blink]br0", "br\\[x]", "[u]br", "[dim]b"]
DOMAINS = ["[bold]vm:cd:", ":smile:[/]", "vm[link=http://x]y"]
RECORDED_MAC, RECORDED_TAP, RECORDED_BRIDGE = "52:54:00:53:4c:8c", "vnet0", "br0"
HV = "ttlab-31121-1-hv"  # the recording's hypervisor namespace


def renamed(mac: str, tap: str, bridge: str):
    """diag-local-mac.json with the guest's MAC, its tap and its bridge renamed everywhere."""
    text = (REC / "diag-local-mac.json").read_text()
    assert RECORDED_MAC in text and f'"{RECORDED_TAP}"' in text and f'"{RECORDED_BRIDGE}"' in text
    text = text.replace(RECORDED_MAC, mac).replace("fe:54:00:53:4c:8c", "fe" + mac[2:])
    for old, new in ((RECORDED_TAP, tap), (RECORDED_BRIDGE, bridge)):
        text = text.replace(old, json.dumps(new)[1:-1])  # inside JSON strings: a backslash doubled
    d = json.loads(text)
    return d, Snapshot.from_json(json.dumps(d["snapshot"])), [journey_from_dict(j) for j in d["journeys"]]


def printed(capsys, monkeypatch, show) -> str:
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping in the middle of a name
    console = make_console()
    show(console)
    return capsys.readouterr().out


@pytest.mark.parametrize("mac", MACS)
def test_diagnosis_and_journeys_print_macs_and_names_verbatim(mac, capsys, monkeypatch):
    n = MACS.index(mac)
    tap, bridge = TAPS[n % len(TAPS)], BRIDGES[n % len(BRIDGES)]
    _, snap, journeys = renamed(mac, tap, bridge)
    target = locate(snap, mac, ips=LAB_GUEST_IP)
    result = diagnose(snap, target, journeys, 3.0)
    assert result.cause == "local-mac"

    def show(console):
        console.print(render_text(result, journeys))
        sink = TerminalSink(console, 0)
        for j in journeys:
            sink.journey(j)

    out = printed(capsys, monkeypatch, show)
    assert f"tapttrace diagnose {mac}" in out
    assert f"$ ip -n {HV} link set dev {shlex.quote(tap)} address fe{mac[2:]} " in out
    assert f"FDB of {bridge} (namespace {HV}): {mac} is a local (permanent) entry on {tap}" in out
    assert f"{tap}'s MAC is {mac}; libvirt gives the taps it creates fe{mac[2:]}" in out
    assert f"> {mac}" in out and f"arrived on {tap} (tap, port of {bridge})" in out  # follow's journeys
    assert f"passed up to {bridge}'s own host stack" in out


@pytest.mark.parametrize("domain", DOMAINS)
def test_doctor_lines_print_verbatim(domain, capsys, monkeypatch):
    lines = [DoctorLine("bridge decision hops", True, f"dropped at tun_net_xmit [tun] on {TAPS[0]} of {domain}"),
             DoctorLine(f"tracepoint {domain}", False, f"{MACS[51]} :cd: [/]", fix=f"ip link del {TAPS[1]}")]
    out = printed(capsys, monkeypatch, lambda console: print_doctor_lines(console, lines))
    assert f"✓ bridge decision hops: dropped at tun_net_xmit [tun] on {TAPS[0]} of {domain}\n" in out
    assert f"✗ tracepoint {domain}: {MACS[51]} :cd: [/]\n    fix: ip link del {TAPS[1]}\n" in out
