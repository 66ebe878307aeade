"""What every rule looks at: the snapshot, the target and the journeys, with the questions they ask of them."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

from ..records import Journey
from ..snapshot import Bridge, BridgePort, NetnsSnapshot, Snapshot
from ..taps import TapHolder
from . import journeys as jv
from .commands import in_ns, ns_phrase
from .model import Target


@dataclass(frozen=True)
class Context:
    """One diagnosis' inputs. Pure: process states come in as data, nothing is read from the system."""

    snapshot: Snapshot
    target: Target
    journeys: tuple[Journey, ...] = ()
    window_s: float = 0.0
    process_states: Mapping[int, str] = field(default_factory=dict)  # pid -> /proc/PID/stat state letter
    lost_events: int = 0  # events lost in the window: a missing "read" may just be a lost event

    # -- the target, shortened -----------------------------------------------------------------

    @property
    def mac(self) -> str:
        return self.target.mac

    @property
    def tap(self) -> str:
        """The tap's name ("" when there is none)."""
        return self.target.tap.name if self.target.tap is not None else ""

    @property
    def ns(self) -> Optional[NetnsSnapshot]:
        return self.target.ns

    @property
    def netns(self) -> str:
        return self.target.netns

    @property
    def bridge(self) -> Optional[Bridge]:
        return self.target.bridge

    @property
    def port(self) -> Optional[BridgePort]:
        return self.target.port

    def where(self) -> str:
        """' (namespace X)' unless the tap lives in the root namespace."""
        return ns_phrase(self.netns)

    def cmd(self, *argv: str) -> str:
        """A pasteable command run in the tap's namespace."""
        return in_ns(self.netns, *argv)

    def holders_text(self) -> str:
        """'qemu-system-x86 (pid 812, fd 31)' for every holder, or 'no process'."""
        return holders_text(self.target.holders, self.process_states)

    # -- journeys --------------------------------------------------------------------------------

    @cached_property
    def toward(self) -> list[Journey]:
        """Journeys toward the guest that went through its tap's namespace (others reuse its address)."""
        return [j for j in self.journeys if j.toward_guest and (not self.netns or jv.touches(j, self.netns))]

    def reached(self, j: Journey) -> bool:
        """Did the journey get to the guest's tap?"""
        tap = self.target.tap
        return tap is not None and jv.reached(j, tap.name, self.netns, tap.is_tap)

    @cached_property
    def got(self) -> list[Journey]:
        """Toward the guest, and into the tap's queue."""
        return [j for j in self.toward if self.reached(j)]

    @cached_property
    def lost(self) -> list[Journey]:
        """Toward the guest, and never into the tap's queue."""
        return [j for j in self.toward if not self.reached(j)]

    @cached_property
    def lost_dropped(self) -> list[Journey]:
        """Lost, and the kernel says where it dropped them."""
        return [j for j in self.lost if jv.dropped_copies(j)]

    @cached_property
    def from_guest(self) -> list[Journey]:
        """Frames the guest sent (it is alive and its tap works outbound)."""
        return [j for j in self.journeys if j.src_mac == self.mac and (not self.netns or jv.touches(j, self.netns))]

    def in_namespace(self) -> list[Journey]:
        """Every journey through the tap's namespace (broadcasts from others fill a tap's queue too)."""
        return [j for j in self.journeys if not self.netns or jv.touches(j, self.netns)]


def holders_text(holders: tuple[TapHolder, ...], states: Mapping[int, str] = {}) -> str:
    """The processes holding a tap, as a person reads them."""
    parts = []
    for h in holders:
        state = states.get(h.pid, "")
        extra = ", stopped" if state in ("T", "t") else ""
        parts.append(f"{h.comm or '?'} (pid {h.pid}, fd {h.fd}{extra})")
    return ", ".join(parts) or "no process"
