"""Exporter pieces that need no kernel: label decoding, the series cap, churn pruning, the HTTP(S)
server, map layouts against bpf/exporter.h, and the Grafana/Prometheus files' structure."""
from __future__ import annotations

import ctypes
import json
import re
import shutil
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tracer.errors import EXIT_USAGE, UsageError
from tracer.exporter import maps
from tracer.exporter.collector import ExporterCollector, SeriesCap
from tracer.exporter.labels import OVERFLOW, Inventory, Namer, roles, vm_mac_key
from tracer.exporter.maps import Counts
from tracer.exporter.server import Listen, MetricsServer, Tls, WebConfig
from tracer.records import Device

ROOT = Path(__file__).resolve().parent.parent
NS = 4026531840


def dev(ifindex, name, **kw) -> Device:
    return Device(NS, "hv", ifindex, name, **kw)


BR = dev(3, "br0", kind="bridge")
UP = dev(4, "up0", kind="veth", master=3, master_name="br0")
TAP = dev(5, "vnet0", kind="tun", is_tap=True, master=3, master_name="br0", mac="fe:54:00:12:34:56")


class CountsProgram:
    """A stand-in for the exporter's program holding counts in dicts (the kernel path is in test_exporter_kernel)."""

    attached = 6

    def __init__(self):
        self.verdicts, self.drops, self.taps, self.fdb, self.decisions = {}, {}, {}, {}, {}
        self.roles = []

    def set_devices(self, roles, vm_macs):
        self.roles = list(roles)

    def read(self) -> Counts:
        return Counts(dict(self.verdicts), dict(self.drops), dict(self.taps), dict(self.fdb),
                      {"counter_map_full": 0, "frame_table_full": 0}, dict(self.decisions))

    def delete(self, name, keys):
        table = getattr(self, name)
        for k in keys:
            table.pop(k, None)


def samples(collector) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in collector.collect() for s in f.samples}


def make(inv_holder, **kw):
    namer = Namer(reason=lambda r: {77: "NETFILTER_DROP"}.get(r, f"unknown:{r}"), symbol=lambda a: "nf_hook_slow+0x9a")
    return ExporterCollector(CountsProgram(), namer, lambda: inv_holder[0], **kw)


def test_roles_and_vm_mac_keys():
    rs = {r.ifindex: r for r in roles([BR, UP, TAP, dev(9, "eth9")])}
    assert rs[3].role == maps.ROLE_BRIDGE and rs[3].bridge == 3
    assert rs[4].role == maps.ROLE_PORT and rs[4].bridge == 3
    assert rs[5].role == maps.ROLE_PORT | maps.ROLE_TAP
    assert 9 not in rs
    assert vm_mac_key("fe:54:00:12:34:56") == vm_mac_key("52:54:00:12:34:56")


def test_labels_decode_and_self_health_starts_at_zero():
    inv = [Inventory.build({NS: "hv"}, [BR, UP, TAP])]
    c = make(inv)
    c.refresh()
    c.program.verdicts[(NS, 3, 4, 5, 5)] = 7
    c.program.drops[(NS, 5, 77, 0xffffffff81000000)] = 2
    s = samples(c)
    assert s[("tapttrace_frames_total", (("bridge", "br0"), ("in_port", "up0"), ("netns", "hv"),
                                         ("out_port", "vnet0"), ("verdict", "delivered")))] == 7
    assert s[("tapttrace_drops_total", (("dev", "vnet0"), ("location", "nf_hook_slow"), ("netns", "hv"),
                                        ("reason", "NETFILTER_DROP")))] == 2
    for name in ("tapttrace_decode_errors_total", "tapttrace_refresh_errors_total", "tapttrace_series_overflow_total"):
        assert s[(name, ())] == 0
    assert s[("tapttrace_lost_events_total", (("cause", "counter_map_full"),))] == 0
    assert s[("tapttrace_programs_attached", ())] == 6


def test_fdb_decision_keys_decode_to_bounded_labels():
    """bpf/exporter.c's `decisions` keys (netns, bridge, in_port, out_port, decision, pkt_type):
    forward names its port, local the bridge, flood none; pkt_type is br_flood's enum br_pkt_type."""
    inv = [Inventory.build({NS: "hv"}, [BR, UP, TAP])]
    c = make(inv)
    c.refresh()
    c.program.decisions.update({(NS, 3, 4, 5, 1, 0): 7, (NS, 3, 5, 4, 1, 0): 6, (NS, 3, 4, 3, 2, 0): 2,
                                (NS, 3, 4, 0, 3, 2): 3, (NS, 3, 4, 0, 3, 1): 4, (NS, 3, 4, 0, 3, 0): 5,
                                (NS, 3, 3, 0, 3, 2): 1})  # the last: the host flooding through br0
    got = {tuple(dict(k[1])[n] for n in ("in_port", "decision", "pkt_type", "out_port")): v
           for k, v in samples(c).items() if k[0] == "tapttrace_fdb_decisions_total"}
    assert got == {("up0", "forward", "unicast", "vnet0"): 7, ("vnet0", "forward", "unicast", "up0"): 6,
                   ("up0", "local", "unicast", "br0"): 2, ("up0", "flood", "broadcast", ""): 3,
                   ("up0", "flood", "multicast", ""): 4, ("up0", "flood", "unicast", ""): 5,
                   ("br0", "flood", "broadcast", ""): 1}
    assert {dict(k[1])["netns"] for k in samples(c) if k[0] == "tapttrace_fdb_decisions_total"} == {"hv"}
    assert {dict(k[1])["bridge"] for k in samples(c) if k[0] == "tapttrace_fdb_decisions_total"} == {"br0"}
    c.program.decisions[(NS, 3, 4, 0, 9, 0)] = 1  # an unknown decision
    c.program.decisions[(NS, 3, 4, 0, 3, 7)] = 1  # an unknown pkt_type
    assert samples(c)[("tapttrace_decode_errors_total", ())] == 2


def test_fdb_decisions_of_a_vanished_port_go_with_it():
    inv = [Inventory.build({NS: "hv"}, [BR, UP, TAP])]
    c = make(inv, grace_refreshes=1)
    c.refresh()
    c.program.decisions[(NS, 3, 4, 5, 1, 0)] = 3  # up0 -> vnet0
    c.program.decisions[(NS, 3, 4, 0, 3, 2)] = 1  # up0 floods
    inv[0] = Inventory.build({NS: "hv"}, [BR, UP])  # the VM stopped
    for _ in range(3):
        c.refresh()
    assert c.program.decisions == {(NS, 3, 4, 0, 3, 2): 1}


def test_unknown_codes_are_decode_errors_not_exceptions():
    inv = [Inventory.build({NS: "hv"}, [BR, UP, TAP])]
    c = make(inv)
    c.program.verdicts[(NS, 3, 4, 5, 99)] = 1
    assert samples(c)[("tapttrace_decode_errors_total", ())] == 1


def test_vanished_port_keeps_its_name_then_its_series_go():
    inv = [Inventory.build({NS: "hv"}, [BR, UP, TAP])]
    c = make(inv, grace_refreshes=1)
    c.refresh()
    c.program.verdicts[(NS, 3, 4, 5, 5)] = 3
    inv[0] = Inventory.build({NS: "hv"}, [BR, UP])  # the VM stopped
    c.refresh()
    s = samples(c)
    assert any(dict(k[1]).get("out_port") == "vnet0" for k in s)  # last known name, not a crash
    c.refresh()
    c.refresh()
    assert c.program.verdicts == {}
    assert not any(dict(k[1]).get("out_port") == "vnet0" for k in samples(c))


def test_names_of_vms_gone_without_counts_are_not_kept_for_ever():
    """Found by the soak (a VM a second): every device of every namespace that vanished was
    remembered, counted or not."""
    inv = [Inventory.build({NS: "hv"}, [BR, UP, TAP])]
    c = make(inv, grace_refreshes=1)
    c.refresh()
    c.program.verdicts[(NS, 3, 4, 5, 5)] = 3  # only vnet0 and up0 counted anything
    for k in range(100):  # VMs come and go: a namespace with its lo, and a port of br0
        vm_ns = NS + 1 + k
        inv[0] = Inventory.build({NS: "hv", vm_ns: f"vm{k}"}, [BR, UP, TAP, dev(100 + k, f"v{k}", master=3,
                                 master_name="br0"), Device(vm_ns, f"vm{k}", 1, "lo")])
        c.refresh()
    inv[0] = Inventory.build({NS: "hv"}, [BR, UP])  # and vnet0's VM stops too
    c.refresh()
    assert set(c.namer._gone_dev) == {(NS, 5)} and c.namer._gone_ns == {}
    assert any(dict(k[1]).get("out_port") == "vnet0" for k in samples(c))  # a counted one keeps its name
    for _ in range(3):
        c.refresh()
    assert c.namer._gone_dev == {}


def test_the_refresher_trims_the_heap_after_each_refresh():
    from tracer.exporter.collector import _malloc_trim

    assert _malloc_trim()() is None  # glibc here; a no-op elsewhere


def test_counts_of_a_reused_namespace_inode_are_not_inherited():
    inv = [Inventory.build({NS: "hv"}, [BR, UP, TAP])]
    c = make(inv)
    c.refresh()
    c.program.verdicts[(NS, 3, 4, 5, 5)] = 3
    inv[0] = Inventory.build({}, [])  # the namespace is gone...
    c.refresh()
    inv[0] = Inventory.build({NS: "new-vm-ns"}, [Device(NS, "new-vm-ns", 3, "br9", kind="bridge")])  # ...inode reused
    c.refresh()
    assert c.program.verdicts == {}
    assert not [k for k in samples(c) if k[0] == "tapttrace_frames_total"]


def test_never_seen_device_is_a_stable_placeholder():
    inv = [Inventory.build({NS: "hv"}, [BR])]
    c = make(inv)
    c.refresh()
    c.program.verdicts[(NS, 3, 42, 0, 4)] = 1
    labels = [dict(k[1]) for k in samples(c) if k[0] == "tapttrace_frames_total"]
    assert labels == [{"netns": "hv", "bridge": "br0", "in_port": "ifindex:42", "out_port": "", "verdict": "dropped"}]


def test_reused_ifindex_series_add_up():
    inv = [Inventory.build({NS: "hv"}, [BR, UP])]
    c = make(inv)
    c.refresh()
    # Two kernel keys that name the same label set (e.g. a device re-created under its name).
    c.program.drops[(NS, 4, 77, 1)] = 2
    c.program.drops[(NS, 4, 77, 2)] = 3
    s = samples(c)
    assert [v for k, v in s.items() if k[0] == "tapttrace_drops_total"] == [5]


def test_series_cap_puts_the_rest_into_one_overflow_series():
    cap = SeriesCap(2)
    out: dict = {}
    for i in range(5):
        cap.add("f", out, (str(i),), 1)
    assert out == {("0",): 1, ("1",): 1, (OVERFLOW,): 3}
    assert cap.overflowed == 3
    out2: dict = {}
    cap.add("f", out2, ("1",), 1)  # admitted series stay themselves
    assert out2 == {("1",): 1}


def test_listen_parsing():
    assert Listen.parse("127.0.0.1:9477") == Listen("127.0.0.1", 9477)
    assert Listen.parse("[::1]:9477") == Listen("::1", 9477)
    assert Listen.parse(":9477") == Listen("0.0.0.0", 9477)
    for bad in ("9477", "host:", "h:70000"):
        with pytest.raises(UsageError):
            Listen.parse(bad)


def test_tls_serves_metrics_over_https(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("needs openssl to make a test certificate")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    c = make([Inventory.build({NS: "hv"}, [BR])])
    server = MetricsServer(c, Listen("127.0.0.1", 0), WebConfig(Tls(str(cert), str(key)))).start()
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        body = urllib.request.urlopen(f"https://127.0.0.1:{server.port}/metrics", context=ctx, timeout=10).read()
        assert b"tapttrace_build_info" in body
    finally:
        server.close()


@pytest.mark.parametrize("given", ["--tls-cert", "--tls-key"])
def test_tls_cert_and_key_go_together(tmp_path, given):
    pem = tmp_path / "x.pem"
    pem.write_text("")
    r = subprocess.run([sys.executable, "-m", "tracer", "exporter", given, str(pem)], cwd=ROOT,
                       capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (EXIT_USAGE, "tapttrace: --tls-cert and --tls-key go together\n")


def _header_structs() -> dict[str, list[tuple[str, str]]]:
    text = (ROOT / "bpf" / "exporter.h").read_text()
    out = {}
    for name, body in re.findall(r"struct (ttx_\w+) \{(.*?)\};", text, re.S):
        out[name] = re.findall(r"(__u\d+) (\w+);", body)
    return out


@pytest.mark.parametrize("cname,ctype", [("ttx_dev_key", maps.DevKey),
                                         ("ttx_verdict_key", maps.VerdictKey), ("ttx_drop_key", maps.DropKey),
                                         ("ttx_tap_key", maps.TapKey), ("ttx_fdb_key", maps.FdbKey),
                                         ("ttx_decision_key", maps.DecisionKey),
                                         ("ttx_dev_ent", maps.DevEnt), ("ttx_dev_counts", maps.DevCounts),
                                         ("ttx_pair_counts", maps.PairCounts)])
def test_ctypes_mirror_the_header(cname, ctype):
    sizes = {"__u32": ctypes.c_uint32, "__u64": ctypes.c_uint64}
    fields = _header_structs()[cname]
    assert [(n, sizes[t]) for t, n in fields] == [(n, t) for n, t in ctype._fields_]


def test_header_codes_match_python():
    text = (ROOT / "bpf" / "exporter.h").read_text()
    defs = {k: int(v) for k, v in re.findall(r"#define (TTX_\w+) (\d+)", text)}
    assert defs["TTX_DEV_BITS"] == maps.DEV_BITS
    assert (defs["TTX_V_FORWARDED"], defs["TTX_V_FLOODED"], defs["TTX_V_LOCAL"], defs["TTX_V_DROPPED"],
            defs["TTX_V_DELIVERED"]) == (maps.V_FORWARDED, maps.V_FLOODED, maps.V_LOCAL,
                                         maps.V_DROPPED, maps.V_DELIVERED)
    assert (defs["TTX_TAP_QUEUED"], defs["TTX_TAP_DELIVERED"]) == (maps.TAP_QUEUED, maps.TAP_DELIVERED)
    assert {defs[f"TTX_V_{v.upper()}"]: v for v in maps.VERDICTS.values()} == maps.VERDICTS
    assert {defs[f"TTX_TAP_{v.upper()}"]: v for v in maps.TAP_EVENTS.values()} == maps.TAP_EVENTS
    assert {defs[f"TTX_FDB_{v.upper()}"]: v for v in maps.FDB_EVENTS.values()} == maps.FDB_EVENTS
    assert {defs[f"TTX_D_{v.upper()}"]: v for v in maps.DECISIONS.values()} == maps.DECISIONS
    assert {defs[f"TTX_PKT_{v.upper()}"]: v for v in maps.PKT_TYPES.values()} == maps.PKT_TYPES


@pytest.mark.parametrize("path", sorted((ROOT / "grafana" / "dashboards").glob("*.json")), ids=lambda p: p.name)
def test_dashboards_are_provisionable_and_templated(path):
    d = json.loads(path.read_text())
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance"} <= names and ({"bridge"} & names or {"tap"} & names)
    assert d["uid"].startswith("tapttrace-") and d["panels"]
    for p in d["panels"]:
        assert p["datasource"]["uid"] == "${datasource}"
        for t in p["targets"]:
            assert 'instance=~"$instance"' in t["expr"]


def test_dashboard_uids_are_unique_and_provisioning_parses():
    uids = [json.loads(p.read_text())["uid"] for p in (ROOT / "grafana" / "dashboards").glob("*.json")]
    assert len(uids) == len(set(uids)) == 3
    for f in (ROOT / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(f.read_text())["apiVersion"] == 1


def test_promtool_check_rules():
    if not shutil.which("promtool"):
        pytest.skip("needs Debian's prometheus package (promtool)")
    res = subprocess.run(["promtool", "check", "rules", str(ROOT / "deploy/prometheus/tapttrace-rules.yml")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# -- the device indices of the array counters (tracer/exporter/maps.IndexTable) ----------------

P, T, B = maps.ROLE_PORT, maps.ROLE_TAP, maps.ROLE_BRIDGE
LAB = {(NS, 3): (B, 3), (NS, 4): (P, 3), (NS, 5): (P | T, 3), (NS, 9): (T, 0)}


def test_every_watched_device_gets_an_index_and_every_pair_of_a_bridge_a_slot():
    table = maps.IndexTable(max_devs=16, max_pairs=64)
    ch = table.assign(LAB, lambda idx: True)
    assert sorted(table.idx) == [(NS, 3, 3), (NS, 4, 3), (NS, 5, 3), (NS, 9, 0)]
    assert sorted(ch.new_devs) == [1, 2, 3, 4]
    br, up, tap = (table.of(NS, i, 3) for i in (3, 4, 5))
    # in: a port or the bridge itself (the host sending); out: a port. A tap outside bridges: none.
    assert set(table.pairs) == {(br, up), (br, tap), (up, tap), (tap, up)}
    assert sorted(slot for *_, slot in ch.new_pairs) == [1, 2, 3, 4]
    again = table.assign(LAB, lambda idx: True)
    assert again == maps.IndexChanges()  # nothing new when nothing changed


def test_a_vanished_device_keeps_its_index_until_its_counts_are_gone():
    table = maps.IndexTable(max_devs=16, max_pairs=64)
    table.assign(LAB, lambda idx: True)
    tap = table.of(NS, 5, 3)
    without_tap = {k: v for k, v in LAB.items() if k != (NS, 5)}
    counted = {tap}
    ch = table.assign(without_tap, lambda idx: idx not in counted)
    assert table.retired == {tap} and table.owner[tap] == (NS, 5, 3) and not ch.freed_pairs
    table.assign(without_tap, lambda idx: idx not in counted)  # counts left: still kept
    assert table.owner[tap] == (NS, 5, 3)
    counted.clear()  # the collector deleted its series
    ch = table.assign(without_tap, lambda idx: idx not in counted)
    assert (NS, 5, 3) not in table.idx and not table.retired
    assert sorted((i, o) for i, o, _ in ch.freed_pairs) == sorted(p for p in [(table.of(NS, 3, 3), tap),
                                                                            (table.of(NS, 4, 3), tap),
                                                                            (tap, table.of(NS, 4, 3))])
    # A device that comes back before release keeps counting under its old index; one freed is
    # reused last (a late count of the old device must not land on a new one at once).
    ch = table.assign(LAB, lambda idx: True)
    assert table.of(NS, 5, 3) not in (0, tap) and ch.new_devs == [table.of(NS, 5, 3)]


def test_a_device_that_changes_bridge_gets_a_new_index_and_the_old_stays_readable():
    table = maps.IndexTable(max_devs=16, max_pairs=64)
    table.assign(LAB, lambda idx: True)
    old = table.of(NS, 4, 3)
    moved = {**LAB, (NS, 4): (P, 9), (NS, 9): (B, 9)}
    table.assign(moved, lambda idx: False)
    assert table.of(NS, 4, 9) not in (0, old) and table.owner[old] == (NS, 4, 3) and old in table.retired
    # its flooded verdicts, under bridge 3
    assert [k for _, i, series in table.series() if i == old for _, k in series][2] == (NS, 3, 4, 0, 2)


def test_full_tables_leave_the_rest_to_the_hash_maps():
    table = maps.IndexTable(max_devs=3, max_pairs=2)  # indices 1, 2; one pair slot
    table.assign(LAB, lambda idx: True)
    assert len(table.idx) == 2 and len(table.pairs) == 1
    assert sum(table.of(NS, i, br) == 0 for (_, i), (_, br) in LAB.items()) == 2


def test_array_fields_name_the_same_keys_as_the_hash_maps():
    assert maps.dev_series((NS, 5, 3)) == [
        ("taps", (NS, 5, 1, 0)), ("taps", (NS, 5, 2, 0)), ("verdicts", (NS, 3, 5, 0, 2)),
        ("verdicts", (NS, 3, 5, 3, 3)), ("verdicts", (NS, 3, 5, 0, 4))]
    assert maps.pair_series((NS, 4, 3), (NS, 5, 3)) == [("verdicts", (NS, 3, 4, 5, 1)),
                                                            ("verdicts", (NS, 3, 4, 5, 5))]
    assert [name for name, _ in maps.DevCounts._fields_] == ["tap_queued", "tap_delivered", "flooded",
                                                                  "local", "dropped"]
