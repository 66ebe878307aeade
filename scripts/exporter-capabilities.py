"""Which capabilities does `tapttrace exporter` still need once its programs are attached?

Measured, not guessed: build a lab (a bridge and a tap held by a root process in a named
namespace) plus a tap opened by root in a namespace of its own and then held by a process of
uid nobody (as libvirt hands qemu its tap), the tap moved into the lab's namespace afterwards;
load and attach the exporter's programs; take one inventory and one scrape with every capability
as the baseline; then, in a fresh process each, drop to a candidate set and compare. Prints, for
each capability of the candidate set, what is lost without it, and what is lost with the kept set
(tracer/exporter/privileges.py). Run as root from the repository:

    .venv/bin/python scripts/exporter-capabilities.py

docs/exporter.md, "Capabilities", has its outcome on kernel 6.18 with the libbpf loader.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracer.exporter import privileges  # noqa: E402
from tracer.lab import Lab, LabSpec  # noqa: E402

CANDIDATES = ("cap_dac_read_search", "cap_net_admin", "cap_sys_ptrace", "cap_sys_admin", "cap_syslog",
              "cap_bpf", "cap_perfmon")
# Opens the tap as root, then becomes nobody and execs (so /proc/PID is nobody's, mode 0500 where
# it matters, as for qemu started by libvirt), keeping the tap fd.
HOLDER = """
import fcntl, os, struct, subprocess, sys
subprocess.run(["ip", "tuntap", "add", "dev", sys.argv[1], "mode", "tap"], check=True)
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", sys.argv[1].encode(), 0x0002 | 0x1000))  # TUNSETIFF, IFF_TAP|IFF_NO_PI
os.set_inheritable(fd, True)
os.setgroups([]); os.setgid(65534); os.setuid(65534)
os.execv("/usr/bin/python3", ["python3", "-c", "import sys; print('ready', flush=True); sys.stdin.read()"] + sys.argv[1:])
"""


def observe(lab: Lab, tag: str, holder: int) -> dict:
    """What the exporter sees of this run's lab, holder and the root namespace (other people's
    labs come and go meanwhile): namespaces, devices, VM names, a scrape's series."""
    from tracer.exporter.collector import ExporterCollector
    from tracer.exporter.service import kernel_namer, machine_inventory, open_program
    from tracer.kallsyms import Kallsyms
    from tracer.runtime import machine_features

    ours = ("root", lab.hv_ns, lab.remote_ns, f"pid:{holder}")
    features = machine_features()
    with open_program(features) as program:
        collector = ExporterCollector(program, kernel_namer(features), machine_inventory)
        collector.refresh()
        # Before the drop: ping is exec'd by this process, and would get only the kept set.
        lab.ping_guest_from_remote(count=2, timeout=0.5)
        if drop := os.environ.get("TX_DROP_TO"):
            privileges.drop_capabilities(tuple(c for c in drop.split(",") if c))
        inv = machine_inventory()
        collector.refresh()
        scrape = sorted(f"{m.name} {s.labels}" for m in collector.collect() for s in m.samples
                        if m.name in ("tapttrace_tap_info", "tapttrace_frames") and s.labels["netns"] in ours)
        names = inv.netns_names
        return {"netns": sorted(n for n in names.values() if n in ours),
                "devices": sorted((names[ns], d.name) for (ns, _), d in inv.devices.items() if names.get(ns) in ours),
                "vms": sorted((names.get(ns, "?"), tap, vm) for (ns, tap), vm in inv.vms.items()
                              if names.get(ns) in ours),
                "kallsyms_hidden": Kallsyms.load().restricted, "refresh_errors": collector.refresh_errors,
                "scrape": scrape}


def child(lab: Lab, tag: str, holder: int, drop_to: tuple[str, ...]) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            if drop_to is not None:
                os.environ["TX_DROP_TO"] = ",".join(drop_to) or ","
            out = repr(observe(lab, tag, holder))
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            out = repr({"error": f"{type(err).__name__}: {err}"})
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    return eval(data)  # our own repr


def diff(base: dict, got: dict) -> dict:
    """What `got` lacks (or has more) compared with the baseline, key by key."""
    out = {}
    for k in sorted(set(base) | set(got)):
        a, b = base.get(k), got.get(k)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            out[k] = {"lost": sorted(set(map(str, a)) - set(map(str, b))),
                      "extra": sorted(set(map(str, b)) - set(map(str, a)))}
        else:
            out[k] = (a, b)
    return out


def main() -> None:
    tag = f"txcap{os.getpid() % 100000}"
    with Lab(LabSpec()) as lab:
        holder = subprocess.Popen(
            ["unshare", "--net", "/usr/bin/python3", "-c", HOLDER, tag, "-name", f"guest={tag}vm"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "ready"
            # A tap moved after it was opened: only the kernel (TUNGETDEVNETNS) knows where it is now.
            subprocess.run(["nsenter", "-t", str(holder.pid), "-n", "ip", "link", "set", tag, "netns", lab.hv_ns],
                           check=True)
            subprocess.run(["ip", "-n", lab.hv_ns, "link", "set", tag, "up"], check=True)
            # No ARP broadcast (a flood) in the first run only: every run sees the same frames.
            lab.run(lab.remote_ns, "ip", "neigh", "replace", lab.guest_ip, "lladdr", lab.guest_mac, "dev",
                    lab.remote_dev, "nud", "permanent")
            base = child(lab, tag, holder.pid, None)
            print("baseline:", base)
            assert (lab.hv_ns, tag, f"{tag}vm") in base["vms"], "with every capability, the moved tap's VM is known"
            full = child(lab, tag, holder.pid, CANDIDATES)
            print("candidate set kept:", diff(base, full) or "nothing lost")
            for cap in CANDIDATES:
                got = child(lab, tag, holder.pid, tuple(c for c in CANDIDATES if c != cap))
                lost = diff(base, got)
                print(f"without {cap}:", "nothing lost" if not lost else lost)
            minimal = tuple(c for c in privileges.KEEP)
            got = child(lab, tag, holder.pid, minimal)
            # kallsyms_hidden here is expected: the exporter reads the table before it drops (service.py).
            print("KEEP", minimal, ":", diff(base, got) or "nothing lost")
        finally:
            holder.kill()
            holder.wait()


if __name__ == "__main__":
    main()
