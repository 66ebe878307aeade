"""Least privilege after attach: once the BPF programs are attached and the socket is bound, the
exporter keeps only the capabilities its refreshes and scrapes still use (docs/exporter.md,
"Capabilities"), in its effective, permitted and bounding sets."""
from __future__ import annotations

import os
from collections.abc import Iterable

from ..errors import EnvironmentProblem, KernelError

# Capability numbers are kernel ABI (include/uapi/linux/capability.h, by position): stable, so the
# set can be stated and checked (tests, /proc/PID/status) without the library that applies it.
CAPABILITIES = {name: number for number, name in enumerate((
    "cap_chown", "cap_dac_override", "cap_dac_read_search", "cap_fowner", "cap_fsetid", "cap_kill", "cap_setgid",
    "cap_setuid", "cap_setpcap", "cap_linux_immutable", "cap_net_bind_service", "cap_net_broadcast",
    "cap_net_admin", "cap_net_raw", "cap_ipc_lock", "cap_ipc_owner", "cap_sys_module", "cap_sys_rawio",
    "cap_sys_chroot", "cap_sys_ptrace", "cap_sys_pacct", "cap_sys_admin", "cap_sys_boot", "cap_sys_nice",
    "cap_sys_resource", "cap_sys_time", "cap_sys_tty_config", "cap_mknod", "cap_lease", "cap_audit_write",
    "cap_audit_control", "cap_setfcap", "cap_mac_override", "cap_mac_admin", "cap_syslog", "cap_wake_alarm",
    "cap_block_suspend", "cap_audit_read", "cap_perfmon", "cap_bpf", "cap_checkpoint_restore"))}

# What a refresh and a scrape do after attach, and the capability each needs. Measured by dropping
# one at a time against a lab (scripts/exporter-capabilities.py; docs/exporter.md, "Capabilities"):
# - setns() into each network namespace to dump its links over rtnetlink: CAP_SYS_ADMIN (EPERM
#   without). On kernels before 6.5 every bpf() call (reading and updating the maps through the fds
#   already held) needs bpf_capable() too, which CAP_SYS_ADMIN satisfies: CAP_BPF adds nothing.
# - /proc/PID/ns/net of other processes (the root namespace is found through pid 1 or 2, unnamed
#   ones through the processes holding them), /proc/PID/fd and fdinfo of tap holders, and
#   pidfd_getfd() of a tap fd: ptrace access to processes with more capabilities or of other
#   users: CAP_SYS_PTRACE (without it not even the root namespace can be read).
# - /proc/PID/fd of a process of another user (qemu run by libvirt as libvirt-qemu) is mode 0500:
#   CAP_DAC_READ_SEARCH (without it such a tap loses its vm label).
# - TUNGETDEVNETNS on the duplicated tap fd, the namespace a tap lives in once moved away from its
#   holder's: CAP_NET_ADMIN (without it such a tap's vm label goes to the wrong namespace).
# Not kept: CAP_SYSLOG (kernel addresses in /proc/kallsyms) is only needed to read the symbol
# table, which the exporter reads before the drop; CAP_BPF and CAP_PERFMON (loading, attaching).
KEEP = ("cap_dac_read_search", "cap_net_admin", "cap_sys_ptrace", "cap_sys_admin")


def mask(names: Iterable[str]) -> int:
    """The bit mask /proc/PID/status shows for these capabilities."""
    return sum(1 << CAPABILITIES[n] for n in set(names))


def status_sets(pid: str = "self") -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process (or "self", "thread-self") as masks."""
    base = "/proc/thread-self" if pid == "thread-self" else f"/proc/{pid}"
    out = {}
    with open(f"{base}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Cap"):
                out[key] = int(value.strip(), 16)
    return out


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def drop_capabilities(keep: Iterable[str] = KEEP) -> tuple[str, ...]:
    """Keep only `keep` (those of it held) in the effective, permitted and bounding sets; clear
    inheritable and ambient. Returns what was kept.

    Must run while the process has one thread: capabilities belong to each thread, and threads
    started earlier would keep the full set. The bounding set is what stops a program exec'd by
    root (uid 0 gains every capability the bounding set allows) from getting them back."""
    before = status_sets("thread-self")
    held = before.get("CapPrm", 0)
    # Only what is held: under a unit or container that already withheld one, keep the rest.
    keep = tuple(n for n in keep if held >> CAPABILITIES[n] & 1)
    if threads() != 1:
        raise KernelError(f"cannot drop capabilities: {threads()} threads already run and would keep theirs "
                          "(--no-drop-capabilities runs with all of root's)")
    try:
        import capng
    except ImportError:
        raise EnvironmentProblem("dropping capabilities after attach needs libcap-ng's Python bindings "
                                 "(apt install python3-cap-ng), or run with --no-drop-capabilities") from None
    # Narrowing the bounding set takes CAP_SETPCAP; a service manager that withheld it has narrowed
    # the bounding set itself (the unit in deploy/systemd gives it, and NoNewPrivileges).
    bounds = bool(before.get("CapEff", 0) >> CAPABILITIES["cap_setpcap"] & 1)
    capng.capng_clear(capng.CAPNG_SELECT_BOTH)
    for name in keep:
        capng.capng_update(capng.CAPNG_ADD, capng.CAPNG_EFFECTIVE | capng.CAPNG_PERMITTED | capng.CAPNG_BOUNDING_SET,
                           CAPABILITIES[name])
    # libcap-ng narrows the bounding set first (while CAP_SETPCAP is still held), then capset()s.
    rc = capng.capng_apply(capng.CAPNG_SELECT_BOTH if bounds else capng.CAPNG_SELECT_CAPS)
    if hasattr(capng, "CAPNG_SELECT_AMBIENT"):
        capng.capng_apply(capng.CAPNG_SELECT_AMBIENT)  # empty after capng_clear; libcap-ng 0.8+
    want = mask(keep)
    got = status_sets("thread-self")
    if rc != 0 or got.get("CapEff") != want or got.get("CapPrm") != want or (bounds and got.get("CapBnd") != want):
        raise KernelError(f"cannot drop capabilities (libcap-ng said {rc}): effective {got.get('CapEff', 0):#x}, "
                          f"bounding {got.get('CapBnd', 0):#x}, wanted {want:#x}")
    return keep


def names(bits: int) -> list[str]:
    """The capability names a mask holds, as far as CAPABILITIES knows them; others as cap_<n>."""
    by_number = {v: k for k, v in CAPABILITIES.items()}
    return [by_number.get(i, f"cap_{i}") for i in range(64) if bits >> i & 1]
