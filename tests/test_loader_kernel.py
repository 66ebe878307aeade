"""The BPF variants for other kernels, put through this kernel's verifier."""
from __future__ import annotations

import dataclasses

import pytest

from tracer.features import probe_features
from tracer.loader import BPF_DIR, follow_cflags

pytestmark = pytest.mark.kernel


def test_kprobe_bridge_hook_passes_the_verifier():
    """Production kernels with kprobes get br_flood() as a hop; here kprobes can't attach, but the
    program must load (verifier) so the code path is proven before it meets such a kernel."""
    import bcc

    features = dataclasses.replace(probe_features(), bridge_hook="kprobe", bridge_hook_bcc="kprobe")
    features.headers.apply()
    b = bcc.BPF(src_file=str(BPF_DIR / "follow.c").encode(),
                cflags=follow_cflags(features, "52:54:00:00:00:01", 8))
    try:
        fn = b.load_func(b"tt_br_flood_kprobe", bcc.BPF.KPROBE)
        assert fn.fd > 0
    finally:
        b.cleanup()


def test_follow_program_without_netns_offsets_still_loads():
    """Kernels without CONFIG_NET_NS have no net_device.nd_net.net: the program must still build."""
    import bcc

    features = probe_features()
    offsets = dataclasses.replace(features.offsets, possible_net_net=None, net_ns_inum=None)
    features = dataclasses.replace(features, offsets=offsets, bridge_hook="none")
    features.headers.apply()
    b = bcc.BPF(src_file=str(BPF_DIR / "follow.c").encode(),
                cflags=follow_cflags(features, "52:54:00:00:00:01", 8))
    try:
        assert b.load_func(b"raw_tracepoint__netif_receive_skb", bcc.BPF.RAW_TRACEPOINT).fd > 0
    finally:
        b.cleanup()
