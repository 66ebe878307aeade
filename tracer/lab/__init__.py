"""Throwaway lab topologies on the real kernel, for the tests, the demo and the benchmarks."""
from .topology import GuestFailed, Lab, LabCommandFailed, LabSpec, PingResult, libvirt_tap_mac, remove_stale

__all__ = ["GuestFailed", "Lab", "LabCommandFailed", "LabSpec", "PingResult", "libvirt_tap_mac", "remove_stale"]
