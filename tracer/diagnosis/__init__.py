"""Why don't frames for this MAC reach the guest? Snapshot + journeys in, one cause out (docs/causes.md).

Pure: locate() finds the guest's tap in a Snapshot, diagnose() runs the rules (rules.RULES, most
specific first) over the snapshot and the journeys `follow` produced. Nothing here reads the
system except read_process_states(), which the caller runs (libvirt's domains come from tracer.vms).
"""
from ..libvirt_xml import LibvirtInterface, parse_domain_xml
from .commands import in_ns
from .engine import diagnose, read_process_states, remarks
from .journeys import load_journeys
from .locate import libvirt_tap_mac, locate
from .model import CAUSES, FOUND_BY, Diagnosis, Finding, Target
from .render import SCHEMA_ID, journey_path, render_text, to_json
from .rules import RULES

__all__ = [
    "CAUSES", "FOUND_BY", "RULES", "SCHEMA_ID", "Diagnosis", "Finding", "LibvirtInterface", "Target", "diagnose",
    "in_ns", "journey_path", "libvirt_tap_mac", "load_journeys", "locate", "parse_domain_xml",
    "read_process_states", "remarks", "render_text", "to_json",
]
