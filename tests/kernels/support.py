"""What each kernel of the matrix lacks, in one table: the README's "Supported kernels" table is
made from it and from the matrix's results. A kernel test the matrix does not run on a kernel is
listed in NOT_RUN with the reason; anything else that fails there fails the matrix."""
from __future__ import annotations

# (feature key of tests/kernels/facts.py, how it is missing, what the user loses)
LOSSES = (
    ("kfree_skb_has_reason", False, "drop reasons (5.17+): drops are named by function"),
    ("consume_skb_has_location", False, "where a frame was consumed (6.3+)"),
    ("bpf_atomics", False, "journeys stitched in the kernel (5.12+): stitched in user space; follow behind the traffic "
     "counts lost events, not every frame's verdict"),
    ("fentry", False, "fentry: kprobes instead"),
    ("kprobes", False, "kprobes"),
)

# Kernel tests the matrix does not run on a kernel, and why (none today: with virtiofs, 5.10's
# Python starts as fast as 6.x's; tests/kernels/bin/virtiofsd). Where the bridge is a module
# (every Debian kernel) the bcc exporter, the fallback of a fallback, refuses to start with one
# line (it reads the bridge's struct offsets from vmlinux's BTF only); the libbpf exporter, the
# chain's first choice, works there and is what the matrix proves.
NOT_RUN: dict[str, str] = {}


def lost_features(facts: dict) -> list[str]:
    """What this kernel makes tapttrace give up, in words, from facts.json."""
    lost = [words for key, missing, words in LOSSES if key in facts and bool(facts[key]) == missing]
    if "fentry: kprobes instead" in lost and "kprobes" in lost:
        lost = [w for w in lost if w not in ("fentry: kprobes instead", "kprobes")]
        lost.append("the bridge's own decisions (no fentry, no kprobes): inferred from tracepoints")
    plan = facts.get("bridge_plan") or {}
    if plan.get("nft_do_chain") == "none" and any(kind != "none" for kind in plan.values()):
        lost.append("the netfilter verdict hop (nf_tables' BTF, 5.11+): netfilter drops named by function")
    return lost
