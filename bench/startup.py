"""What follow's and diagnose's start-up steps cost: parsing the running kernel's BTF, and reading
every device across namespaces (the device table follow names hops with, refreshed when an
unknown device shows up; the snapshot diagnose starts from).

    sudo python -m bench.startup [--repeats N] [--json]

Each figure is the best of N runs (the least disturbed by whatever else the machine does), and
its share of the budget it must stay within for start-up and refreshes not to stall the tracer:
a share above 1 is a regression to look at. These were assertions in the tests once
(tests/test_btf.py, tests/test_snapshot.py); on a machine shared with other test runs a timing
assertion fails for reasons that are not the code's, so they are measured here (docs/testing.md).
Root: it builds its own namespaces, ttstartup-<pid>-<n>, removed on every exit path.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Callable, Optional

# Budgets (seconds): the bounds the tests used to assert.
BTF_BUDGET_S = 1.0  # Btf.load() of vmlinux
DEVICES_BUDGET_S = 0.5  # collect_devices() of 5 namespaces, 8 devices each
NAMESPACES = 5
TAPS = 4


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return min(runs)


@contextmanager
def namespaces(count: int) -> Iterator[list]:
    """count namespaces, each with a bridge, TAPS taps in it and a veth pair: 8 devices with lo."""
    from pyroute2 import netns as pr_netns

    from tracer.netns import entered, iproute, resolve_netns

    made: list[str] = []
    try:
        for i in range(count):
            name = f"ttstartup-{os.getpid()}-{i}"
            pr_netns.create(name)
            made.append(name)
        spaces = [resolve_netns(n) for n in made]
        for ns in spaces:
            # taps are made by ioctl in the calling thread's namespace: be inside it
            with entered(ns), iproute(ns) as ipr:
                ipr.link("add", ifname="br0", kind="bridge")
                for t in range(TAPS):
                    ipr.link("add", ifname=f"vnet{t}", kind="tuntap", mode="tap")
                    ipr.link("set", index=ipr.link_lookup(ifname=f"vnet{t}")[0],
                             master=ipr.link_lookup(ifname="br0")[0])
                ipr.link("add", ifname="uplink", kind="veth", peer="peer")
        yield spaces
    finally:
        for name in made:
            try:
                pr_netns.remove(name)
            except OSError:
                pass


def measure(repeats: int) -> dict:
    from tracer.btf import Btf
    from tracer.snapshot import collect_devices, collect_snapshot

    btf_s = best_of(repeats, Btf.load)
    with ExitStack() as stack:
        spaces = stack.enter_context(namespaces(NAMESPACES))
        collect_devices(spaces)  # warm imports and caches, as a running tracer has them
        devices = len(collect_devices(spaces))
        devices_s = best_of(repeats, lambda: collect_devices(spaces))
        snapshot_s = best_of(repeats, lambda: collect_snapshot(spaces))
    return {
        "btf_load_s": round(btf_s, 4), "btf_load_of_budget": round(btf_s / BTF_BUDGET_S, 3),
        "collect_devices_s": round(devices_s, 4), "collect_devices_of_budget": round(devices_s / DEVICES_BUDGET_S, 3),
        "collect_snapshot_s": round(snapshot_s, 4),
        "namespaces": NAMESPACES, "devices": devices, "repeats": repeats,
        "budgets_s": {"btf_load": BTF_BUDGET_S, "collect_devices": DEVICES_BUDGET_S},
    }


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        print("bench.startup: --repeats must be at least 1", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench.startup: must run as root (it builds namespaces and taps)", file=sys.stderr)
        return 3
    r = measure(args.repeats)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"Btf.load(vmlinux): {r['btf_load_s'] * 1000:.0f} ms, {r['btf_load_of_budget']:.2f} of its "
              f"{BTF_BUDGET_S:g} s budget")
        print(f"collect_devices({NAMESPACES} namespaces, {r['devices']} devices): "
              f"{r['collect_devices_s'] * 1000:.1f} ms, "
              f"{r['collect_devices_of_budget']:.2f} of its {DEVICES_BUDGET_S:g} s budget")
        print(f"collect_snapshot({NAMESPACES} namespaces): {r['collect_snapshot_s'] * 1000:.1f} ms")
        print(f"(best of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
