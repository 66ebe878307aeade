"""Stitching and verdicts, replayed from event streams recorded on the real kernel (no root needed).

Recordings were made with `tapttrace follow --record` (or the same Recorder) against a
bridge br0 with uplink up0 and tap vnet0, the remote host in another namespace.
"""
from dataclasses import replace
from pathlib import Path

import pytest

from tracer import replay
from tracer.records import EGRESS_GSO, Hook
from tracer.stitch import Stitcher

REC = Path(__file__).parent / "recordings"


def journeys_of(name, **kw):
    return replay.journeys(replay.load(REC / name), **kw)


def test_healthy_echo_is_delivered_across_namespaces_as_one_journey():
    echoes = [j for j in journeys_of("follow-reader-healthy.jsonl") if j.summary.startswith("ICMP echo")]
    assert len(echoes) == 2
    for j in echoes:
        assert j.verdict == "delivered" and j.toward_guest and not j.note
        events = [(h.event, h.dev) for h in j.hops]
        assert events == [("sent", "eth0"), ("received", "up0"), ("sent", "vnet0"), ("read", "vnet0")]
        # the remote's namespace and the hypervisor's: one journey, not two
        assert len({h.netns for h in j.hops}) == 2
        assert j.bridge == "br0"
        assert [h.location.split("+")[0] for h in j.hops if h.event == "read"] == ["tun_do_read"]


def test_broadcast_from_the_host_is_flooded_to_every_port():
    (arp,) = [j for j in journeys_of("follow-reader-healthy.jsonl") if j.summary.startswith("ARP")]
    assert arp.verdict == "flooded"
    assert arp.flood_ports == ["up0", "vnet0"] and arp.flood_missed == []
    assert sorted((c.port, c.outcome) for c in arp.copies) == [("up0", "forwarded"), ("vnet0", "delivered")]


def test_tap_carrying_the_guest_mac_sends_frames_up_to_the_host():
    echoes = [j for j in journeys_of("follow-reader-local-mac.jsonl") if j.summary.startswith("ICMP echo")]
    assert echoes
    for j in echoes:
        assert j.verdict == "dropped"
        assert j.reason in ("OTHERHOST", "IP_INADDRERRORS")
        assert j.location.startswith(("ip_rcv_core", "ip_error"))
        assert [h.event for h in j.hops][-2:] == ["passed-up", "dropped"]
        assert not any(h.dev == "vnet0" for h in j.hops)
        assert j.note == "never reached vnet0"


def test_skb_address_reuse_with_other_bytes_starts_a_new_journey():
    rec = replay.load(REC / "follow-reader-healthy.jsonl")
    first = rec.events[0]
    # the skb was freed unseen (lost event) and its address reused for another frame
    other = replace(first, ts_ns=first.ts_ns + 1000, data=first.data[:20] + b"\x99" + first.data[21:])
    st = Stitcher(rec.devices, rec.namer)
    st.feed(first)
    st.feed(other)
    out = st.flush(other.ts_ns, final=True)
    assert len(out) == 2


def test_copy_with_new_address_joins_a_live_journey_only_when_it_is_not_fresh():
    rec = replay.load(REC / "follow-reader-healthy.jsonl")
    evs = [e for e in rec.events if e.data[:6] != b"\xff" * 6]
    rx = next(e for e in evs if e.hook == Hook.RECEIVE and e.ifname == "up0")
    tx = next(e for e in evs if e.hook == Hook.QUEUE and e.ifname == "vnet0" and e.skb == rx.skb)
    st = Stitcher(rec.devices, rec.namer)
    st.feed(rx)
    st.feed(replace(tx, skb=tx.skb + 0x100))  # a clone sent to a bridge port: same journey
    st.feed(replace(rx, skb=rx.skb + 0x200, ts_ns=rx.ts_ns + 5))  # the same bytes arriving again: fresh
    out = st.flush(rx.ts_ns, final=True)
    assert [len(j.copies) for j in out] == [2, 1]


def test_frames_still_in_the_tap_queue_are_queued_and_late_reads_are_not_new_journeys():
    rec = replay.load(REC / "follow-reader-healthy.jsonl")
    echo = [e for e in rec.events if e.data[12:14] == b"\x08\x00" and e.data[:6] != b"\xff" * 6]
    skb = echo[0].skb
    mine = [e for e in echo if e.skb == skb]
    read = mine[-1]
    assert read.hook == Hook.CONSUME
    st = Stitcher(rec.devices, rec.namer, idle_ns=1000)
    for e in mine[:-1]:
        st.feed(e)
    (j,) = st.flush(mine[-2].ts_ns + 10_000)
    assert j.verdict == "queued"
    st.feed(read)
    assert st.flush(read.ts_ns, final=True) == [] and st.stats.late_events == 1


@pytest.mark.parametrize("name", ["follow-reader-healthy.jsonl", "follow-reader-local-mac.jsonl"])
def test_every_event_lands_in_exactly_one_hop(name):
    rec = replay.load(REC / name)
    js = replay.journeys(rec)
    assert sum(len(j.hops) for j in js) == len(rec.events)
    assert [j.id for j in js] == sorted(j.id for j in js)


# -- recordings of the lab (a guest process answering ARP and ping through the tap) -----------

def test_lab_healthy_every_frame_toward_the_guest_reaches_it():
    js = journeys_of("lab-healthy.jsonl")
    toward = [j for j in js if j.toward_guest]
    assert toward and all(any(c.outcome == "delivered" and c.dev == "vnet0" for c in j.copies) for j in toward)
    replies = [j for j in js if j.summary.startswith("ICMP echo reply") and "198.51.100.1 " in j.summary + " "]
    assert [j.verdict for j in replies] == ["forwarded", "forwarded"]
    # the host's own ping: delivered, and the raw socket's copy of the reply makes it local, not a drop
    host = [j for j in js if "198.51.100.254" in j.summary and j.summary.startswith("ICMP")]
    assert [j.verdict for j in host] == ["delivered", "local"]


def test_lab_local_mac_remote_echo_dropped_host_echo_delivered():
    js = journeys_of("lab-local-mac.jsonl")
    remote = [j for j in js if j.summary.startswith("ICMP echo 198.51.100.1 ")]
    host = [j for j in js if j.summary.startswith("ICMP echo 198.51.100.254 ")]
    assert remote and all(j.verdict == "dropped" and j.reason == "OTHERHOST" for j in remote)
    assert all(j.location.startswith("ip_rcv_core") and j.note == "never reached vnet0" for j in remote)
    assert host and all(j.verdict == "delivered" for j in host)


def test_lab_guest_without_arp_leaves_flooded_requests_read_by_the_guest():
    js = journeys_of("lab-no-arp.jsonl")
    assert len(js) >= 2
    for j in js:
        assert j.summary == "ARP who-has 198.51.100.10 tell 198.51.100.1"
        assert j.verdict == "flooded" and j.flood_ports == ["vnet0"] and j.toward_guest
        assert {c.outcome for c in j.copies} == {"delivered", "local"}


# -- flush: what is due, in order, without scanning what is not -----------------------------------

def _single_copy_events(rec):
    """The events of the first unicast echo of the healthy recording (one skb, ends with a read)."""
    echo = [e for e in rec.events if e.data[12:14] == b"\x08\x00" and e.data[:6] != b"\xff" * 6]
    return [e for e in echo if e.skb == echo[0].skb]


def _shifted(evs, k, dt):
    return [replace(e, ts_ns=e.ts_ns + dt, skb=e.skb + (k << 24), data=e.data[:20] + bytes([k]) + e.data[21:])
            for e in evs]


def test_flush_returns_ended_journeys_after_the_grace_period_and_idle_ones_after_the_idle_time():
    rec = replay.load(REC / "follow-reader-healthy.jsonl")
    mine = _single_copy_events(rec)
    idle = 10 * (mine[-1].ts_ns - mine[0].ts_ns) + 10
    st = Stitcher(rec.devices, rec.namer, grace_ns=100, idle_ns=idle)
    t0 = mine[0].ts_ns
    ended = _shifted(mine, 1, 0)
    unfinished = _shifted(mine[:-1], 2, 0)
    for e in ended + unfinished:
        st.feed(e)
    end = ended[-1].ts_ns
    assert st.flush(end + 99) == []  # still within the grace period: a clone may show up
    (j,) = st.flush(end + 100)
    assert j.verdict == "delivered"
    last = unfinished[-1].ts_ns
    assert st.flush(last + idle - 1) == [] and st.open_journeys == 1
    (j,) = st.flush(last + idle)
    assert j.verdict == "queued" and st.open_journeys == 0
    assert t0 <= j.first_ns


def test_flush_of_many_due_journeys_is_by_first_event_and_limit_takes_the_earliest_due():
    rec = replay.load(REC / "follow-reader-healthy.jsonl")
    mine = _single_copy_events(rec)
    span = mine[-1].ts_ns - mine[0].ts_ns
    st = Stitcher(rec.devices, rec.namer, grace_ns=0, idle_ns=10 * span + 10)
    evs = []
    for k in range(1, 9):
        evs += _shifted(mine if k % 2 else mine[:-1], k, k * (span + 1))
    for e in evs:
        st.feed(e)
    now = evs[-1].ts_ns
    first = st.flush(now, limit=3)  # the ended ones are due at once (no grace), the others not yet
    assert [j.verdict for j in first] == ["delivered"] * 3
    rest = st.flush(now)
    assert [j.verdict for j in rest] == ["delivered"]
    assert [j.first_ns for j in first] == sorted(j.first_ns for j in first)
    assert st.open_journeys == 4
    later = st.flush(now + 10 * span + 10)
    assert [j.verdict for j in later] == ["queued"] * 4
    assert [j.first_ns for j in later] == sorted(j.first_ns for j in later)
    assert sorted(j.id for j in first + rest + later) == list(range(1, 9))


def test_a_journey_that_sees_events_again_is_not_idle_and_a_shorter_idle_time_applies_at_once():
    rec = replay.load(REC / "follow-reader-healthy.jsonl")
    mine = _single_copy_events(rec)
    st = Stitcher(rec.devices, rec.namer, idle_ns=1000)
    for e in mine[:-2]:
        st.feed(e)
    late = replace(mine[-2], ts_ns=mine[-3].ts_ns + 900)
    st.feed(late)
    assert st.flush(mine[-3].ts_ns + 1000) == []  # its heap entry comes up, but it saw an event since
    st.idle_ns = 100  # e.g. while events are being lost
    (j,) = st.flush(late.ts_ns + 100)
    assert j.verdict == "queued" and st.open_journeys == 0


# -- hops from inside the bridge and the tap (fentry/kprobe kernels) ---------------------------------


def _with_bridge_hops(rec, make):
    """The recording's first ICMP echo toward the guest, with events from inside the bridge added
    after its arrival on up0 (make(rx, tx) -> extra events)."""
    evs = [e for e in rec.events if e.data[:6] != b"\xff" * 6]
    rx = next(e for e in evs if e.hook == Hook.RECEIVE and e.ifname == "up0")
    mine = [e for e in rec.events if e.skb == rx.skb and e.ts_ns >= rx.ts_ns]
    tx = next((e for e in mine if e.hook == Hook.QUEUE and e.ifname == "vnet0"), rx)
    st = Stitcher(rec.devices, rec.namer)
    for e in sorted(mine + make(rx, tx), key=lambda e: e.ts_ns):
        st.feed(e)
    (j,) = [j for j in st.flush(rx.ts_ns, final=True) if j.summary.startswith("ICMP echo")]
    return j


def test_bridge_hops_say_the_fdb_port_and_the_mtu_it_fits():
    from tracer.records import PORT_KNOWN
    rec = replay.load(REC / "follow-reader-healthy.jsonl")
    j = _with_bridge_hops(rec, lambda rx, tx: [
        replace(tx, hook=Hook.FORWARD, ts_ns=rx.ts_ns + 1, reason=PORT_KNOWN | 3, location=0),
        replace(tx, hook=Hook.EGRESS, ts_ns=rx.ts_ns + 2, reason=1500, location=0),
        replace(tx, hook=Hook.TAP_XMIT, ts_ns=tx.ts_ns + 1, reason=0, location=0)])
    assert j.verdict == "delivered" and j.fdb == "vnet0"
    hops = [(h.event, h.dev, h.location, h.detail) for h in j.hops]
    assert ("to-port", "vnet0", "br_forward", "") in hops
    assert ("egress", "vnet0", "br_dev_queue_push_xmit", "fits MTU 1500") in hops
    assert ("tap-xmit", "vnet0", "tun_net_xmit", "") in hops


def test_bridge_hops_say_a_port_refused_for_its_state_or_as_the_way_in():
    from tracer.records import BR_HAIRPIN_MODE, PORT_FLAGS_SHIFT, PORT_INGRESS, PORT_KNOWN
    from tracer.stitch import port_refusal
    assert port_refusal(0) == ""  # no facts (5.10: no BTF of the bridge's port)
    assert port_refusal(PORT_KNOWN | 3) == ""
    assert port_refusal(PORT_KNOWN | 1) == "refused: port listening"
    assert port_refusal(PORT_KNOWN | 4) == "refused: port blocking"
    assert port_refusal(PORT_KNOWN | 3 | PORT_INGRESS).endswith("(hairpin off)")
    assert port_refusal(PORT_KNOWN | 3 | PORT_INGRESS | BR_HAIRPIN_MODE << PORT_FLAGS_SHIFT) == ""
    rec = replay.load(REC / "follow-reader-healthy.jsonl")
    j = _with_bridge_hops(rec, lambda rx, tx: [
        replace(tx, hook=Hook.FLOOD_PORT, ts_ns=rx.ts_ns + 1, reason=PORT_KNOWN | 2, location=0)])
    assert [h.detail for h in j.hops if h.event == "flood-port"] == ["refused: port learning"]
    assert [h.fault for h in j.hops if h.event == "flood-port"] == ["port-learning"]


def test_port_faults_are_codes_for_the_same_decisions():
    from tracer.records import BR_HAIRPIN_MODE, PORT_FLAGS_SHIFT, PORT_INGRESS, PORT_KNOWN
    from tracer.stitch import port_fault, port_refusal
    assert [port_fault(PORT_KNOWN | s) for s in (0, 1, 2, 3, 4, 9)] == [
        "port-disabled", "port-listening", "port-learning", "", "port-blocking", "port-state-9"]
    assert port_refusal(PORT_KNOWN | 9) == "refused: port in STP state 9"
    assert port_fault(PORT_KNOWN | 1 | PORT_INGRESS) == "hairpin"  # the way in is refused first
    assert port_fault(PORT_KNOWN | 3 | PORT_INGRESS | BR_HAIRPIN_MODE << PORT_FLAGS_SHIFT) == ""
    assert port_fault(1) == ""  # facts not read


IPV4_DF = bytes(12) + b"\x08\x00" + bytes([0x45, 0, 0, 0, 0, 0, 0x40, 0])
IPV4_NO_DF = bytes(12) + b"\x08\x00" + bytes([0x45, 0, 0, 0, 0, 0, 0x00, 0])
ARP = bytes(12) + b"\x08\x06" + bytes(28)
GSO_FITS = "fits: a GSO frame (65212 bytes), segmented for MTU 1500 later"


@pytest.mark.parametrize("hook,facts,frame_len,data,fault,words", [
    # is_skb_forwardable(): MTU + Ethernet header + a VLAN tag's 4 bytes pass (the kernel's own slack)
    (Hook.EGRESS, 576, 576 + 14, IPV4_DF, "", "fits MTU 576"),
    (Hook.EGRESS, 576, 576 + 18, IPV4_DF, "", "fits MTU 576"),
    (Hook.EGRESS, 576, 576 + 19, IPV4_DF, "too-big", "too big: 581 bytes > MTU 576"),
    (Hook.EGRESS, 576, 1042, IPV4_DF, "too-big", "too big: 1028 bytes > MTU 576"),
    # a GSO skb is never too big there: segmented later
    (Hook.EGRESS, 1500 | EGRESS_GSO, 65226, IPV4_DF, "", GSO_FITS),
    (Hook.EGRESS_NF, 1500 | EGRESS_GSO, 65226, IPV4_DF, "", GSO_FITS),
    # br_nf_dev_queue_xmit(): an IP packet against the MTU itself; IPv4 without DF is fragmented
    (Hook.EGRESS_NF, 576, 576 + 14, IPV4_DF, "", "fits MTU 576"),
    (Hook.EGRESS_NF, 576, 576 + 15, IPV4_DF, "too-big", "too big: 577 bytes > MTU 576"),
    (Hook.EGRESS_NF, 576, 1042, IPV4_NO_DF, "", "too big for MTU 576 (1028 bytes): br_netfilter fragments it"),
    (Hook.EGRESS_NF, 576, 1042, ARP, "", ""),  # not br_netfilter's to judge: the next hop says
])
def test_egress_hop_weighs_the_frame_as_the_kernel_does(hook, facts, frame_len, data, fault, words):
    from tracer.stitch import egress_fit
    assert egress_fit(hook, facts, frame_len, data) == (fault, words)


def test_tap_xmit_hop_says_what_tun_finds_for_the_frame():
    from tracer.records import TAP_FULL, TAP_KNOWN, TAP_NO_READER
    from tracer.stitch import tap_queue
    assert tap_queue(0) == ("", "")  # no facts (5.10: tun has no BTF)
    assert tap_queue(TAP_KNOWN | 500) == ("", "room in its queue of 500")
    assert tap_queue(TAP_KNOWN | TAP_FULL | 500) == (
        "queue-full", "its queue is full (500 frames): the holder is not reading")
    assert tap_queue(TAP_KNOWN | TAP_NO_READER)[0] == "no-reader"


def test_bridge_hop_constants_match_the_bpf_header():
    import re

    from tracer import records
    text = (Path(__file__).resolve().parent.parent / "bpf" / "tapttrace.h").read_text()
    defines = {}
    for name, value in re.findall(r"#define TT_((?:PORT|EGRESS|TAP|NF)_\w+)\s+(\(1u << \d+\)|0x[0-9a-f]+u?|\d+)", text):
        shift = re.fullmatch(r"\(1u << (\d+)\)", value)
        defines[name] = 1 << int(shift.group(1)) if shift else int(value.rstrip("u"), 0)
    assert defines == {"PORT_STATE_MASK": records.PORT_STATE_MASK, "PORT_INGRESS": records.PORT_INGRESS,
                       "PORT_LOCAL_RCV": records.PORT_LOCAL_RCV, "PORT_KNOWN": records.PORT_KNOWN,
                       "PORT_FLAGS_SHIFT": records.PORT_FLAGS_SHIFT, "EGRESS_MTU_MASK": records.EGRESS_MTU_MASK,
                       "EGRESS_GSO": records.EGRESS_GSO, "TAP_SIZE_MASK": records.TAP_SIZE_MASK,
                       "TAP_NO_READER": records.TAP_NO_READER, "TAP_FULL": records.TAP_FULL,
                       "TAP_KNOWN": records.TAP_KNOWN, "NF_VERDICT_MASK": records.NF_VERDICT_MASK,
                       "NF_HOOK_SHIFT": records.NF_HOOK_SHIFT, "NF_PF_SHIFT": records.NF_PF_SHIFT,
                       "NF_KNOWN": records.NF_KNOWN, "NF_NAME": 32}
    # struct tt_nf_chain as the loader unpacks it
    from tracer.libbpf_loader import NF_CHAIN
    assert NF_CHAIN.size == 4 + 4 + 2 * defines["NF_NAME"]
    assert re.search(r"#define TT_HOOK_NF_CHAIN (\d+)", text).group(1) == str(int(Hook.NF_CHAIN))


NF_BRIDGE_FORWARD = (7 << 16) | (2 << 8)  # NFPROTO_BRIDGE, NF_BR_FORWARD
NF_IPV4_FORWARD = (2 << 16) | (2 << 8)  # NFPROTO_IPV4 (br_netfilter's), NF_INET_FORWARD


@pytest.mark.parametrize("facts,chain,fault,words", [
    (NF_BRIDGE_FORWARD, ("bridge", "tt_filter", "forward"), "netfilter-drop",
     "drop: chain forward of table bridge tt_filter (bridge forward hook)"),
    (NF_IPV4_FORWARD | 1, ("ip", "filter", "FORWARD"), "",
     "accept: chain FORWARD of table ip filter (ip forward hook)"),
    # an inet table's chain runs at the ipv4/ipv6 hooks: the hook is the family the frame is in
    ((10 << 16) | (1 << 8) | 1, ("inet", "fw", "input"), "", "accept: chain input of table inet fw (ip6 input hook)"),
    (NF_BRIDGE_FORWARD | 2, None, "", "stolen: an nf_tables chain (bridge forward hook)"),  # chain gone from the map
    ((9 << 16) | (7 << 8), ("", "t", "c"), "netfilter-drop", "drop: chain c of table t (family 9, hook 7)"),
])
def test_netfilter_hop_says_which_chain_decided_what(facts, chain, fault, words):
    from tracer.records import NF_KNOWN
    from tracer.stitch import nf_verdict
    assert nf_verdict(NF_KNOWN | facts, chain) == (fault, words)
    assert nf_verdict(facts, chain) == ("", "")  # nothing read


def test_netfilter_hop_names_the_chain_from_the_kernels_map():
    from tracer.records import NF_KNOWN
    rec = replay.load(REC / "follow-reader-healthy.jsonl")
    chain_at = 0xFFFF888001234500
    rec = replace(rec, namer=replace(rec.namer, nf_chain={chain_at: ("bridge", "tt_filter", "forward")}.get))
    j = _with_bridge_hops(rec, lambda rx, tx: [
        replace(tx, hook=Hook.NF_CHAIN, ts_ns=tx.ts_ns - 1, reason=NF_KNOWN | NF_BRIDGE_FORWARD | 1,
                location=chain_at)])
    (hop,) = [h for h in j.hops if h.event == "netfilter"]
    assert (hop.dev, hop.location, hop.fault) == ("vnet0", "nft_do_chain", "")
    assert hop.detail == "accept: chain forward of table bridge tt_filter (bridge forward hook)"
    assert j.verdict == "delivered"


def test_a_recording_keeps_the_netfilter_hops_chain_names(tmp_path):
    """follow --record writes each netfilter hop's chain (the kernel's map is gone at replay)."""
    from tracer.config import FollowConfig
    from tracer.follow import Recorder
    from tracer.records import NF_KNOWN
    from tracer.stitch import Namer
    rec = replay.load(REC / "follow-reader-healthy.jsonl")
    chain_at = 0xFFFF888001234500
    nf = replace(rec.events[0], hook=Hook.NF_CHAIN, reason=NF_KNOWN | NF_IPV4_FORWARD, location=chain_at)
    out = tmp_path / "r.jsonl"
    recorder = Recorder(open(out, "w"), FollowConfig(mac=rec.mac), rec.devices)
    for e in (*rec.events[:3], nf):
        recorder.event(e)
    recorder.close(Namer(nf_chain={chain_at: ("ip", "filter", "FORWARD")}.get))
    back = replay.load(out)
    assert back.namer.nf_chain(chain_at) == ("ip", "filter", "FORWARD")
    assert back.namer.nf_chain(1) is None
    assert str(chain_at) not in out.read_text().split('"symbols"')[1].split('"reasons"')[0]  # not a code address


def test_an_echo_reply_a_raw_socket_took_is_local_on_kernels_without_drop_reasons():
    """5.10 frees an echo reply no ping socket wanted (`ping`'s raw socket took a clone) with no
    reason, at icmp_rcv: the host's stack had it, as NO_SOCKET says on 5.17+."""
    rec = replay.load(REC / "lab-healthy.jsonl")
    host_replies = lambda rec: [j for j in replay.journeys(rec)  # noqa: E731
                                if j.summary.startswith("ICMP echo reply 198.51.100.10 > 198.51.100.254")]
    assert [j.verdict for j in host_replies(rec)] == ["local"]  # NO_SOCKET, with a reason (6.18)
    old = replace(rec, namer=replace(rec.namer, reason=lambda r: "", symbol=lambda a: "icmp_rcv+0x1c0" if a else ""))
    assert [j.verdict for j in host_replies(old)] == ["local"]
    elsewhere = replace(old, namer=replace(old.namer, symbol=lambda a: "ip_rcv_core+0x236" if a else ""))
    assert [(j.verdict, j.location) for j in host_replies(elsewhere)] == [("dropped", "ip_rcv_core+0x236")]


def test_a_61_recording_shows_the_bridges_own_hops_and_the_netfilter_verdicts():
    """Recorded on Debian 12's 6.1 in the kernel matrix (fentry through the bridge's, tun's and
    nf_tables' module BTF): an nft bridge table's forward chain accepts two echoes, then a rule in
    it drops the third. nf_tables frees the dropped skb itself (NF_DROP_REASON): its verdict hop
    comes just before the drop."""
    rec = replay.load(REC / "follow-6.1-netfilter.jsonl")
    echoes = [j for j in replay.journeys(rec) if j.summary.startswith("ICMP echo 198.51.100.1 >")]
    assert [j.verdict for j in echoes] == ["delivered", "delivered", "dropped"]
    accept = "accept: chain forward of table bridge tt_filter (bridge forward hook)"
    for j in echoes[:2]:
        assert j.fdb == "vnet0"
        assert [h.event for h in j.hops] == ["sent", "received", "to-port", "netfilter", "egress", "sent", "tap-xmit",
                                             "read"]
        assert [(h.dev, h.detail) for h in j.hops if h.detail] == [
            ("vnet0", accept), ("vnet0", "fits MTU 1500"), ("vnet0", "room in its queue of 1000")]
    dropped = echoes[2]
    assert [h.event for h in dropped.hops] == ["sent", "received", "to-port", "netfilter", "dropped"]
    nf = dropped.hops[3]
    assert (nf.fault, nf.detail, nf.location) == (
        "netfilter-drop", "drop: chain forward of table bridge tt_filter (bridge forward hook)", "nft_do_chain")
    assert dropped.reason == "NETFILTER_DROP" and dropped.location.startswith("nft_do_chain+")


def test_an_echo_reply_whose_raw_socket_clone_is_read_late_is_still_local():
    """The pinging process reads its raw socket's clone of the host's echo reply 60 ms after
    ping_rcv() dropped the original with NO_SOCKET (a loaded machine: seen once on 6.12 in the
    kernel matrix, where follow said "dropped" and the exporter "local"): past the grace and the
    clone window, the clone still makes it local. Without any clone it stays a drop."""
    rec = replay.load(REC / "lab-healthy.jsonl")

    def host_replies(events):
        return [j for j in replay.journeys(replace(rec, events=sorted(events, key=lambda e: e.ts_ns)))
                if j.summary.startswith("ICMP echo reply 198.51.100.10 > 198.51.100.254")]

    (reply,) = host_replies(rec.events)
    (clone,) = [e for e in rec.events if e.hook == Hook.CONSUME and e.data[:60] == reply.frame[:60]]
    late = [replace(e, ts_ns=e.ts_ns + 60_000_000) if e is clone else e for e in rec.events]
    assert [(j.verdict, [(h.event, h.copy) for h in j.hops][-1]) for j in host_replies(late)] == [
        ("local", ("consumed", 1))]
    alone = [e for e in rec.events if e is not clone]
    assert [(j.verdict, j.reason) for j in host_replies(alone)] == [("dropped", "NO_SOCKET")]
