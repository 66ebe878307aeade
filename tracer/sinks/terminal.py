"""Human output: one block per journey, in words, with rich for colour and alignment."""
from __future__ import annotations

import datetime as dt

from rich.console import Console
from rich.text import Text

from ..records import Hop, Journey


def make_console(stderr: bool = False) -> Console:
    """The terminal every command writes to. emoji=False: rich would turn ":cd:" in a MAC such as
    52:54:00:cd:b4:55 into an emoji; a tool whose output is MACs prints them verbatim."""
    return Console(stderr=stderr, emoji=False)


_VERDICT_STYLE = {
    "delivered": "bold green", "forwarded": "bold cyan", "flooded": "bold blue",
    "local": "bold yellow", "dropped": "bold red", "queued": "bold magenta", "unfinished": "bold",
}


def describe_hop(h: Hop) -> str:
    """A hop in plain words."""
    where = f"{h.dev} ({h.role})" if h.role and h.role not in ("bridge", "tap") else h.dev
    if h.event == "received":
        return f"arrived on {where}" if h.role.startswith(("port of", "tap, port")) else \
            f"received by the host stack on {where}"
    if h.event == "passed-up":
        return f"passed up to {h.dev}'s own host stack"
    if h.event == "sent":
        if h.role == "bridge":
            return f"sent by the host through {h.dev}"
        return f"sent to {h.dev} (tap)" if h.role == "tap" else f"sent to {where}"
    if h.event == "flood-decision":
        return f"{h.dev} floods it ({h.reason})"
    if h.event in _BRIDGE_WORDS:  # a decision inside the bridge or the tap
        return _BRIDGE_WORDS[h.event].format(dev=h.dev) + (f": {h.detail}" if h.detail else "") + \
            (f" [{h.location}]" if h.location else "")
    if h.event == "read":
        who = f" by {h.reader}" if h.reader else " by the process holding the tap"
        return f"read from {h.dev}{who}"
    on = f" (on {h.dev})" if h.dev else ""
    if h.event == "dropped":  # no reason before 5.17, nor a location for a consume before 6.3: not said
        return f"dropped{': ' + h.reason if h.reason else ''} at {h.location or '?'}" + on
    if h.event == "consumed":
        return "consumed" + (f" at {h.location}" if h.location else "") + on
    return h.event


_BRIDGE_WORDS = {"to-port": "the bridge sends it to {dev}", "flood-port": "the flood offers it to {dev}",
                 "to-host": "the bridge passes it up to the host", "egress": "leaves by {dev}",
                 "tap-xmit": "{dev} takes it for its queue", "netfilter": "netfilter decides"}


def describe_fdb(j: Journey) -> str:
    """The bridge's FDB decision in words ("" when the bridge's own hops are not there to say)."""
    br = j.bridge or "the bridge"
    if j.fdb == "local":
        on = f" on {j.fdb_local}" if j.fdb_local else ""
        return f"FDB: {j.dst_mac} is {br}'s own address (local entry{on}) → passed up to the host"
    if j.fdb == "miss":
        return f"FDB: {br} has no entry for {j.dst_mac} → flooded"
    if j.fdb:
        return f"FDB: {j.dst_mac} is on {j.fdb} → sent there"
    return ""


def describe_verdict(j: Journey) -> str:
    if j.verdict == "dropped":
        text = f"DROPPED{': ' + j.reason if j.reason else ''} at {j.location}"
    elif j.verdict == "flooded":
        text = f"FLOODED to {', '.join(j.flood_ports) or 'no port'}"
        if any(c.outcome == "local" for c in j.copies):
            text += " and the host"
        if j.flood_missed:
            text += f"; not to {', '.join(j.flood_missed)}"
    elif j.verdict == "delivered":
        dev = next((c.dev for c in j.copies if c.outcome == "delivered"), "")
        text = f"DELIVERED to {dev}"
    elif j.verdict == "local":
        text = "LOCAL: consumed by the host stack"
    elif j.verdict == "queued":
        text = "QUEUED: sitting in the tap's queue, unread"
    else:
        text = j.verdict.upper()
    if j.note:
        text += f" — {j.note}"
    return text


class TerminalSink:
    def __init__(self, console: Console, wall_offset_ns: int):
        self.console = console
        self.wall_offset_ns = wall_offset_ns

    def journey(self, j: Journey) -> None:
        when = dt.datetime.fromtimestamp((j.first_ns + self.wall_offset_ns) / 1e9).strftime("%H:%M:%S.%f")
        head = Text(f"#{j.id} {when}  ", style="dim")
        head.append(f"{j.src_mac} > {j.dst_mac}  ", style="cyan")
        head.append(j.summary, style="bold")
        head.append(f"  ({j.frame_len} B)", style="dim")
        self.console.print(head, soft_wrap=True)
        multi = len(j.copies) > 1
        for h in j.hops:
            line = Text(f"  +{(h.ts_ns - j.first_ns) / 1000:9.1f}µs  ", style="dim")
            if h.netns:
                line.append(f"[{h.netns}] ", style="magenta")
            if multi:
                line.append(f"copy {h.copy}: ", style="dim")
            bad = h.event == "dropped" or bool(h.fault)
            line.append(describe_hop(h), style="red" if bad else "")
            self.console.print(line, soft_wrap=True)
        fdb = describe_fdb(j)
        if fdb:
            self.console.print(Text(f"  {fdb}", style="bold"), soft_wrap=True)
        verdict = Text("  ⇒ ")
        verdict.append(describe_verdict(j), style=_VERDICT_STYLE.get(j.verdict, "bold"))
        self.console.print(verdict)

    def summary(self, s) -> None:
        self.console.print(Text(s.line(), style="bold"))

    def close(self) -> None:
        pass
