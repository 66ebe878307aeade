"""The original report, end to end, on a real libvirtd with real qemu guests.

One lab for the module (tracer.lab.libvirt): a bridge in the root namespace with a remote host on
a veth, and two transient domains booting the lab's guest image under TCG:
  * "br":  <interface type='bridge'>: libvirt creates vnetN (fe: + the guest MAC) and adds it;
  * "eth": <interface type='ethernet'> with <target dev=… managed='no'/> on a tap made by hand that
           carries the guest's own MAC and was added to the bridge by hand (the user's set-up).
The daemons are started by the lab unless they already run, and stopped if it started them.

Runtime: ~25 s for the lab (two ~5 s boots) plus ~4-6 s per tapttrace run.
"""
from __future__ import annotations

import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import jsonschema
import pytest

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from test_follow_kernel import Follow, pings_done, run_window  # noqa: E402

DIAG_SCHEMA = json.loads(
    (ROOT / "docs" / "causes.md").read_text().split("JSON schema:\n\n```json\n")[1].split("```")[0])


def _libvirt_missing() -> str:
    import shutil

    for tool in ("libvirtd", "virtlogd", "qemu-system-x86_64"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "python3-libvirt is not installed (scripts/setup.sh installs it)"
    return ""


@pytest.fixture(scope="module")
def lv():
    reason = _libvirt_missing()
    if reason:
        pytest.skip(reason)
    from tracer.lab.libvirt import LibvirtLab

    with LibvirtLab() as lab:
        br = lab.add_domain("br", "bridge", wait=False)
        eth = lab.add_domain("eth", "ethernet", tap_mac="guest", wait=False)
        lab.wait_ready(br)
        lab.wait_ready(eth)
        yield lab, br, eth


def run_tapttrace(*args: str, timeout: float = 90) -> tuple[int, str, str]:
    return run_window([sys.executable, "-m", "tracer", *args], timeout=timeout)


def diagnose_vm(lab, name: str, traffic, *extra: str) -> tuple[int, dict]:
    """diagnose --vm, its window ended (SIGINT) once traffic() is done."""
    code, out, err = run_window([sys.executable, "-m", "tracer", "diagnose", "--vm", name, "--duration", "600",
                                 "--json", *extra], traffic)
    assert code in (0, 1) and out.strip(), err
    report = json.loads(out)
    jsonschema.validate(report, DIAG_SCHEMA)
    assert 0 < report["window_s"] < 600
    return code, report


# ---------------------------------------------------------------------------- type='bridge'


def test_bridge_interface_gets_a_libvirt_tap_and_works(lv):
    lab, br, _ = lv
    assert br.tap.startswith("vnet")
    mac = Path(f"/sys/class/net/{br.tap}/address").read_text().strip()
    assert mac == "fe" + br.mac[2:]  # libvirt's convention, the reason type='bridge' works
    assert lab.ping_from_remote(br).received == 3
    assert lab.ping_from_host(br).received == 3


def test_diagnose_vm_of_a_bridge_interface_says_ok(lv):
    lab, br, _ = lv

    def traffic():  # done once every reply came back: the guest has read each request by then
        assert lab.ping_from_remote(br).received == 3

    code, r = diagnose_vm(lab, br.name, traffic)
    assert code == 0 and r["cause"] == "ok", (r["summary"], r["counts"], r["evidence"])
    assert r["mac"] == br.mac and r["vm"] == br.name and r["libvirt_domain"] == br.name
    assert r["tap"] == br.tap and r["netns"] == "root" and r["bridge"] == lab.bridge
    assert r["tap_found_by"] == "libvirt-xml"
    iface = r["libvirt_interface"]
    assert iface["type"] == "bridge" and iface["target_dev"] == br.tap and iface["running"]
    assert iface["from"] == "qemu:///system" and f"<source bridge=\"{lab.bridge}\"" in iface["xml"]
    # who holds the tap: libvirtd opened it and handed the fd to qemu
    (holder,) = r["holders"]
    assert holder["pid"] == br.qemu_pid() and holder["comm"].startswith("qemu") and holder["fd"] > 2
    assert r["counts"].get("delivered", 0) >= 3


def test_follow_vm_shows_journeys_delivered_to_vnet(lv):
    lab, br, _ = lv
    f = Follow("--vm", br.name)
    lab.ping_from_remote(br)
    journeys, summary, err = f.stop(until=pings_done(br.mac, 3, 3))
    assert summary["lost_events"] == 0
    requests = [j for j in journeys if j["summary"].startswith("ICMP echo 203") and j["toward_guest"]]
    assert len(requests) == 3, [j["summary"] for j in journeys]
    for j in requests:
        assert j["verdict"] == "delivered" and j["vm"] == br.name
        last = j["hops"][-1]
        assert last["event"] == "read" and last["dev"] == br.tap
        assert f"pid {br.qemu_pid()}" in last["reader"] and f"vm {br.name}" in last["reader"]
    # This test's replies: the guest (a qemu under TCG, shared by the module's tests) may answer an
    # earlier test's probe late, after that probe gave up, and inside this window: not one of these.
    first = min(j["start_ns"] for j in requests)
    replies = [j for j in journeys if j["summary"].startswith("ICMP echo reply") and j["src_mac"] == br.mac
               and j["start_ns"] > first]
    assert len(replies) == 3 and all(j["verdict"] == "forwarded" for j in replies), [j["summary"] for j in journeys]


def test_follow_with_a_mac_names_the_domain_libvirt_knows(lv):
    lab, br, _ = lv
    f = Follow(br.mac)
    lab.ping_from_remote(br, count=1)
    journeys, _, _ = f.stop(until=pings_done(br.mac, 1, 1))
    assert journeys and all(j["vm"] == br.name for j in journeys)


# ---------------------------------------------------------------------------- type='ethernet'


def test_ethernet_tap_carrying_the_guest_mac_fails_as_reported(lv):
    lab, _, eth = lv
    assert Path(f"/sys/class/net/{eth.tap}/address").read_text().strip() == eth.mac
    assert lab.ping_from_remote(eth, count=2, timeout=0.5).received == 0  # other hosts: nothing
    assert lab.ping_from_host(eth).received == 3  # the host itself: fine, as in the report


def test_vm_errors_are_one_line_with_meaningful_exit_codes(lv):
    lab, br, _ = lv
    code, _, err = run_tapttrace("diagnose", "--vm", "no-such-domain-here")
    assert code == 2 and "no such domain" in err and br.name in err and len(err.strip().splitlines()) == 1
    code, _, err = run_tapttrace("follow", "--vm", br.name, "02:00:00:00:00:09")
    assert code == 2 and "no interface with MAC" in err
    bad_uri = "qemu+unix:///system?socket=/nonexistent"
    for command in ("follow", "diagnose", "exporter"):
        args = (command, "--vm", br.name) if command != "exporter" else (command,)
        code, _, err = run_tapttrace(*args, "--connect", bad_uri, timeout=30)
        assert code == 3 and "cannot connect to libvirt" in err and len(err.strip().splitlines()) == 1, (command, err)


def test_exporter_labels_taps_with_their_domains(lv, tmp_path):
    from test_exporter_prometheus import prometheus, query, until

    from tracer.exporter.collector import Filters
    from tracer.exporter.server import Listen
    from tracer.exporter.service import ExporterConfig, exporter_session

    lab, br, eth = lv
    with ExitStack() as stack:
        session = stack.enter_context(exporter_session(ExporterConfig(
            listen=Listen("127.0.0.1", 0), filters=Filters(bridges=frozenset({lab.bridge})), refresh_seconds=1.0)))
        url = stack.enter_context(prometheus(tmp_path, {"tapttrace": session.server.port}))
        lab.ping_from_remote(br)
        until(lambda: query(url, f'tapttrace_tap_frames_total{{tap="{br.tap}",event="delivered"}} >= 3'),
              "delivered frames scraped")
        info = {r["metric"]["tap"]: r["metric"]["vm"] for r in query(url, "tapttrace_tap_info")}
        (delivered,) = query(url, f'tapttrace_tap_frames_total{{tap="{br.tap}",event="delivered"}}')
    assert info[br.tap] == br.name and info[eth.tap] == eth.name
    assert delivered["metric"]["vm"] == br.name


def test_diagnose_vm_of_the_ethernet_interface_names_local_mac_and_its_fix_works(lv):
    """Last in the module: it applies the fix."""
    lab, _, eth = lv
    code, r = diagnose_vm(lab, eth.name, lambda: lab.ping_from_remote(eth, count=3, timeout=0.5))
    assert code == 1 and r["cause"] == "local-mac", (r["summary"], r["counts"], r["evidence"])
    assert eth.name in r["summary"] and eth.tap in r["summary"] and lab.bridge in r["summary"]
    assert r["vm"] == eth.name and r["tap"] == eth.tap and r["tap_found_by"] == "libvirt-xml"
    iface = r["libvirt_interface"]
    assert iface["type"] == "ethernet" and not iface["managed"] and iface["target_dev"] == eth.tap
    (holder,) = r["holders"]
    qemu = eth.qemu_pid()
    assert holder["pid"] == qemu
    evidence = "\n".join(r["evidence"])
    assert f"pid {qemu}, fd {holder['fd']}" in evidence  # who holds the tap, through which fd
    assert "type='bridge' works" in evidence and "fe" + eth.mac[2:] in evidence
    assert r["facts"]["interface_type"] == "ethernet" and r["facts"]["vm"] == eth.name
    # both fixes: the tap's MAC now, and XML that lets libvirt manage the tap
    assert r["fix"] == [f"ip link set dev {eth.tap} address fe{eth.mac[2:]}"]
    assert "<interface type='bridge'>" in r["libvirt_xml"] and eth.mac in r["libvirt_xml"]
    # handed to the host's IP stack, which drops them (not addressed to it)
    assert r["facts"]["passed_up"] >= 2, (r["counts"], r["evidence"], r["lost_events"])
    for command in r["fix"]:
        subprocess.run(command, shell=True, check=True)
    pings = [lab.ping_from_remote(eth) for _ in range(3)]  # the first may wait for the bridge to relearn
    assert pings[-1].received == 3, pings
    code, r = diagnose_vm(lab, eth.name, lambda: lab.ping_from_remote(eth))
    assert code == 0 and r["cause"] == "ok", (r["summary"], r["counts"], r["evidence"])
