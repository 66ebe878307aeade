"""The running kernel's features as one JSON object (for the matrix's table): python -m tests.kernels.facts"""
import json
import sys

from tracer.features import bridge_plan
from tracer.runtime import machine_features


def main() -> None:
    f = machine_features()
    json.dump({
        "release": f.kernel_release,
        "follow_loader": f.follow_loader,
        "exporter_loader": f.exporter_loader,
        "tp_btf": f.tp_btf.ok,
        "hook": f.hook,
        "bridge_hook": f.bridge_hook,
        "bridge_hook_bcc": f.bridge_hook_bcc,
        "bridge_btf": f.bridge_btf,
        "bridge_plan": bridge_plan(f),
        "kfree_skb_has_reason": f.kfree_skb_has_reason,
        "consume_skb_has_location": f.consume_skb_has_location,
        "bpf_atomics": f.bpf_atomics.ok,
        "fentry": f.fentry.ok,
        "kprobes": f.kprobes.ok,
    }, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
