"""`tapttrace exporter --web.config.file` as a real process, scraped by a real Prometheus (Debian's
package) over TLS with basic auth: with the right password the target is up and its metrics
arrive, with a wrong one it is down on a 401. The same process has dropped its capabilities
after attaching: /proc shows only the documented set in every thread, and a lab built after the
drop is still found and counted (setns, /proc and the maps all work with what is left)."""
from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import bcrypt
import pytest
import yaml
from test_exporter_prometheus import _get, query, run_prometheus, until
from tls_helpers import Certs, certificates

from tracer.exporter.privileges import KEEP, mask, names, status_sets
from tracer.lab import Lab, LabSpec

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parent.parent
START = 180  # seconds an exporter may take to attach on a loaded machine: a bound, not a measure
PASSWORD = "tx-scrape-password"


def web_config(c: Certs) -> Path:
    path = c.dir / "web.yml"
    path.write_text(yaml.safe_dump({
        # relative to the file's directory, as in exporter-toolkit
        "tls_server_config": {"cert_file": c.server_cert.name, "key_file": c.server_key.name},
        "basic_auth_users": {"prometheus": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()},
    }))
    return path


@contextmanager
def exporter(c: Certs) -> Iterator[tuple[subprocess.Popen, int, Path]]:
    """The exporter command on a free port; stopped with SIGTERM (killed on any failure)."""
    log = c.dir / "exporter.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tracer.exporter", "--listen", "127.0.0.1:0", "--refresh", "1",
                                 "--web.config.file", str(web_config(c))], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        deadline = time.monotonic() + START
        while "capabilities reduced" not in log.read_text():
            assert proc.poll() is None, f"exporter exited {proc.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, f"exporter did not start: {log.read_text()}"
            time.sleep(0.2)
        serving = next(line for line in log.read_text().splitlines() if "serving" in line)
        port = int(serving.split("https://127.0.0.1:")[1].split("/")[0])
        yield proc, port, log
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 0, log.read_text()
        assert "programs detached" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextmanager
def prometheus(tmp: Path, port: int, c: Certs) -> Iterator[str]:
    (tmp / "right.pass").write_text(PASSWORD)
    (tmp / "wrong.pass").write_text("not-" + PASSWORD)
    tls = {"ca_file": str(c.ca)}
    target = {"targets": [f"127.0.0.1:{port}"]}
    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [
                  {"job_name": "right", "scheme": "https", "tls_config": tls, "static_configs": [target],
                   "basic_auth": {"username": "prometheus", "password_file": str(tmp / "right.pass")}},
                  {"job_name": "wrong", "scheme": "https", "tls_config": tls, "static_configs": [target],
                   "basic_auth": {"username": "prometheus", "password_file": str(tmp / "wrong.pass")}},
                  {"job_name": "anonymous", "scheme": "https", "tls_config": tls, "static_configs": [target]}]}
    with run_prometheus(tmp, config) as url:
        yield url


def targets(url: str) -> dict[str, dict]:
    raw = _get(url + "/api/v1/targets")
    return {t["labels"]["job"]: t for t in json.loads(raw)["data"]["activeTargets"]} if raw else {}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with ExitStack() as stack:
        c = stack.enter_context(certificates())
        proc, port, log = stack.enter_context(exporter(c))
        url = stack.enter_context(prometheus(tmp_path_factory.mktemp("prom-auth"), port, c))
        yield url, proc, port, log, c


def test_prometheus_with_the_right_password_scrapes_metrics(world):
    url, *_ = world
    until(lambda: [r["value"][1] for r in query(url, 'up{job="right"}')] == ["1"], "target up")
    until(lambda: query(url, 'tapttrace_build_info{job="right"}'), "a tapttrace metric scraped")
    assert targets(url)["right"]["health"] == "up"


@pytest.mark.parametrize("job", ["wrong", "anonymous"])
def test_prometheus_without_the_right_password_is_refused_with_401(world, job):
    url, *_ = world
    until(lambda: targets(url).get(job, {}).get("health") == "down", f"target {job} down")
    assert "401" in targets(url)[job]["lastError"], targets(url)[job]
    assert query(url, f'tapttrace_build_info{{job="{job}"}}') == []


def test_a_client_without_credentials_gets_401_with_a_challenge(world):
    _, _, port, _, c = world
    req = urllib.request.Request(f"https://127.0.0.1:{port}/metrics")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(c.ca)), timeout=60)
    assert err.value.code == 401
    assert err.value.headers["WWW-Authenticate"].startswith("Basic")


def test_every_thread_keeps_only_the_documented_capabilities(world):
    _, proc, _, log, _ = world
    want = mask(KEEP) & status_sets("self")["CapPrm"]  # what this (root) test process could hand over
    tasks = os.listdir(f"/proc/{proc.pid}/task")
    assert len(tasks) >= 2  # the HTTP server and the refresher run in threads of their own
    for tid in tasks:
        sets = status_sets(f"{proc.pid}/task/{tid}")
        for s in ("CapEff", "CapPrm", "CapBnd"):
            assert sets[s] == want, f"thread {tid} {s}: {names(sets[s])}, documented: {list(KEEP)}"
        assert sets["CapInh"] == sets["CapAmb"] == 0
    assert f"capabilities reduced to {', '.join(KEEP)}" in log.read_text()


def test_after_the_drop_a_new_lab_is_found_and_counted(world):
    """The lab's namespace, bridge and tap appear after the exporter dropped its capabilities:
    only a refresh with what is left (setns, /proc, map updates) can find and count them."""
    url, *_ = world
    with Lab(LabSpec()) as lab:
        until(lambda: query(url, f'tapttrace_tap_info{{job="right", netns="{lab.hv_ns}", tap="vnet0"}}'),
              "the new lab's tap in tapttrace_tap_info")
        lab.run(lab.remote_ns, "ip", "neigh", "replace", lab.guest_ip, "lladdr", lab.guest_mac, "dev",
                lab.remote_dev, "nud", "permanent")
        assert lab.ping_guest_from_remote(count=3).received == 3
        until(lambda: sum(float(r["value"][1]) for r in query(
            url, f'tapttrace_frames_total{{job="right", netns="{lab.hv_ns}", verdict="delivered"}}')) >= 3,
            "the pings counted as delivered")
