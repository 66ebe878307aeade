"""The records diagnose works with: where the guest is (Target), what a rule found (Finding), the answer (Diagnosis)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ..libvirt_xml import LibvirtInterface
from ..records import Device
from ..snapshot import Bridge, BridgePort, FdbHit, NetnsSnapshot
from ..taps import TapHolder, qemu_guest_name

# The stable vocabulary of causes (docs/causes.md). Order: the order the rules try them in.
CAUSES: dict[str, str] = {
    "tap-not-found": "no tap on this host belongs to the MAC",
    "port-not-in-bridge": "the guest's tap is not a port of any bridge",
    "wrong-bridge": "the guest's tap is a port of another bridge than the one its frames cross",
    "local-mac": "the bridge holds the guest's MAC as its own address, so its frames go to the host's stack",
    "port-not-forwarding": "a port on the way is down, has no carrier, or is not in STP state forwarding",
    "fdb-wrong-port": "the bridge's FDB sends the guest's MAC to another port",
    "flood-blocked": "the tap does not get flooded frames (flood flags off, or isolated)",
    "tap-filter": "the tap's own filter (set by the process holding it) drops the frames",
    "netfilter-drop": "a netfilter rule or chain policy drops the frames on the bridge path",
    "mtu": "the frames are larger than the tap's MTU",
    "guest-link-down": "libvirt has the guest NIC's link down: qemu reads the frames and discards them",
    "guest-not-reading": "the process holding the tap does not read it; its queue fills",
    "unknown-drop": "frames for the guest are lost and no rule explains why",
    "ok": "frames for the guest reach the tap and are read",
    "no-traffic": "nothing for the guest crossed a bridge during the window",
}

# How the guest's tap was found, most trusted first.
FOUND_BY = ("--tap", "libvirt-xml", "libvirt-convention", "carries-guest-mac", "fdb", "none")


@dataclass(frozen=True)
class Target:
    """Where the guest should be: its tap, the bridge port it is (or isn't), who holds it open."""

    mac: str
    tap: Optional[Device]
    found_by: str  # one of FOUND_BY
    ns: Optional[NetnsSnapshot] = None  # the tap's namespace
    bridge: Optional[Bridge] = None  # the bridge the tap is a port of
    port: Optional[BridgePort] = None  # the tap as a port of that bridge
    holders: tuple[TapHolder, ...] = ()  # processes holding the tap open (qemu)
    ips: tuple[str, ...] = ()  # the guest's addresses given with --ip
    libvirt: Optional[LibvirtInterface] = None  # the domain <interface> carrying the guest MAC
    fdb: tuple[FdbHit, ...] = ()  # FDB entries naming the guest MAC, in every bridge and namespace
    candidates: tuple[Device, ...] = ()  # other taps that could have been the guest's
    notes: tuple[str, ...] = ()  # what locating noticed on the way (stale XML, ambiguity)

    @property
    def netns(self) -> str:
        """The tap's namespace name, "" when there is no tap."""
        return self.ns.name if self.ns is not None else ""

    @property
    def domain(self) -> str:
        """The libvirt domain (or qemu -name) the guest is, "" when unknown."""
        if self.libvirt is not None:
            return self.libvirt.domain
        return next((n for n in (qemu_guest_name(h.cmdline) for h in self.holders) if n), "")

    @property
    def vm(self) -> str:
        """The VM's name as tapttrace shows it: the domain, else the command of the process holding the tap."""
        return self.domain or next((h.comm for h in self.holders if h.comm), "")


@dataclass(frozen=True)
class Finding:
    """What one rule concluded: a cause, the proof and the fix."""

    cause: str
    summary: str  # one sentence
    evidence: tuple[str, ...] = ()
    fix: tuple[str, ...] = ()  # shell commands, exactly pasteable, in order
    advice: tuple[str, ...] = ()  # what to do where no command can be given (inside the guest, ...)
    libvirt_xml: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict)  # the same proof, machine-readable
    journeys: tuple[int, ...] = ()  # ids of the journeys that show it
    basis: str = "configuration"  # configuration | traffic | configuration+traffic | none


@dataclass(frozen=True)
class Diagnosis:
    """The answer of `tapttrace diagnose`: the cause, its proof, the fix."""

    mac: str
    cause: str
    summary: str
    evidence: tuple[str, ...] = ()
    fix: tuple[str, ...] = ()
    libvirt_xml: str = ""
    counts: Mapping[str, int] = field(default_factory=dict)  # verdict -> journeys toward the guest
    sample: Optional[int] = None  # id of a journey that shows the cause
    advice: tuple[str, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)
    basis: str = "none"
    also: tuple[str, ...] = ()  # codes of other rules that fired too (fix these next)
    remarks: tuple[str, ...] = ()  # configuration worth knowing that is not the cause
    journeys_used: tuple[int, ...] = ()  # journeys toward the guest, through its namespace
    window_s: float = 0.0
    lost_events: int = 0  # kernel events the ring buffer lost during the window: journeys may be incomplete
    target: Optional[Target] = None

    @property
    def exit_code(self) -> int:
        """0 when nothing is wrong, 1 when a cause was found (usage errors exit 2 before this)."""
        return 0 if self.cause == "ok" else 1
