"""Stitching and verdicts, replayed from event streams recorded on the real kernel (no root needed).

Recordings were made with `tapttrace follow --record` (or the same Recorder) against a
bridge br0 with uplink up0 and tap vnet0, the remote host in another namespace.
"""
from dataclasses import replace
from pathlib import Path

import pytest

from tracer import replay
from tracer.records import Hook
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


def test_a_frame_the_bridge_passes_up_with_no_port_chosen_is_fdb_local():
    rec = replay.load(REC / "follow-reader-local-mac.jsonl")
    evs = [e for e in rec.events if e.data[:6] != b"\xff" * 6]
    rx = next(e for e in evs if e.hook == Hook.RECEIVE and e.ifname == "up0")
    st = Stitcher(rec.devices, rec.namer)
    mine = [e for e in rec.events if e.skb == rx.skb and e.ts_ns >= rx.ts_ns]
    for e in sorted(mine + [replace(rx, hook=Hook.PASS_UP, ts_ns=rx.ts_ns + 1)], key=lambda e: e.ts_ns):
        st.feed(e)
    (j,) = [j for j in st.flush(rx.ts_ns, final=True) if j.summary.startswith("ICMP echo")]
    assert j.fdb == "local" and j.verdict == "dropped"
    assert ("to-host", "br_pass_frame_up") in [(h.event, h.location) for h in j.hops]
    from tracer.sinks.terminal import describe_fdb
    assert describe_fdb(j).startswith(f"FDB: {j.dst_mac} is br0's own address")


def test_a_unicast_flood_is_fdb_miss_and_broadcasts_have_no_fdb_decision():
    rec = replay.load(REC / "follow-reader-healthy.jsonl")
    j = _with_bridge_hops(rec, lambda rx, tx: [replace(rx, hook=Hook.FLOOD, ts_ns=rx.ts_ns + 1, reason=0)])
    assert j.fdb == "miss"
    (arp,) = [j for j in journeys_of("follow-reader-healthy.jsonl") if j.summary.startswith("ARP")]
    assert arp.fdb == ""


def test_bridge_hops_and_the_fdb_decision_go_through_json_and_match_the_schema():
    import json

    import jsonschema

    from tracer.records import PORT_KNOWN
    from tracer.sinks.jsonl import journey_from_dict, journey_to_dict
    rec = replay.load(REC / "follow-reader-healthy.jsonl")
    j = _with_bridge_hops(rec, lambda rx, tx: [
        replace(tx, hook=Hook.FORWARD, ts_ns=rx.ts_ns + 1, reason=PORT_KNOWN | 1, location=0),
        replace(tx, hook=Hook.EGRESS_NF, ts_ns=rx.ts_ns + 2, reason=576, location=0)])
    d = journey_to_dict(j, 0)
    schema = json.loads((Path(__file__).parent.parent / "docs" / "journey.schema.json").read_text())
    jsonschema.validate(d, schema)
    assert d["fdb"] == "vnet0"
    egress = next(h for h in d["hops"] if h["event"] == "egress")
    assert (egress["location"], egress["detail"]) == ("br_nf_dev_queue_xmit", "fits MTU 576")
    assert j.frame_len - 14 <= 576
    back = journey_from_dict(json.loads(json.dumps(d)))
    assert back.fdb == "vnet0" and [h.detail for h in back.hops] == [h.detail for h in j.hops]
    assert "refused: port listening" in [h.detail for h in back.hops]


def test_the_terminal_prints_macs_verbatim():
    """rich turns ":cd:" into an emoji by default: 52:54:00:cd:b4:55 printed as 52:54:00💿b4:55."""
    import io

    from tracer.sinks.terminal import TerminalSink, make_console
    console = make_console()
    console.file = io.StringIO()
    (j,) = [j for j in journeys_of("follow-reader-healthy.jsonl") if j.summary.startswith("ARP")]
    mac = "52:54:00:cd:b4:55"
    j.src_mac = mac
    TerminalSink(console, 0).journey(j)
    console.print(f"guest {mac} and 02:00:00:ab:cd:01")
    text = console.file.getvalue()
    assert mac in text and "02:00:00:ab:cd:01" in text and "💿" not in text
