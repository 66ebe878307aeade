"""--web.config.file without the kernel: the file's checks (exporter-toolkit's format), basic auth
against bcrypt, and the HTTPS server with real sockets, real certificates and real TLS clients.
The same against a real Prometheus and a running exporter: test_exporter_auth_prometheus.py."""
from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
import yaml
from test_exporter import BR, NS, make
from tls_helpers import certificates

from tracer.errors import UsageError
from tracer.exporter import auth as auth_mod
from tracer.exporter import server as server_mod
from tracer.exporter.auth import BasicAuth, parse_basic
from tracer.exporter.labels import Inventory
from tracer.exporter.privileges import KEEP, mask, names
from tracer.exporter.server import Listen, MetricsServer
from tracer.exporter.webconfig import Tls, WebConfig, load_web_config, parse_web_config

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60  # seconds: a bound on a request that should answer at once, never a claim about speed


def hashed(password: bytes, prefix: str = "$2b$") -> str:
    h = bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()  # cost 4: the cheapest bcrypt allows
    return prefix + h[4:]


# -- the file ---------------------------------------------------------------------------------


def test_tls_and_users_with_paths_relative_to_the_file():
    h = hashed(b"pw")
    web = parse_web_config({"tls_server_config": {"cert_file": "c.pem", "key_file": "/abs/k.pem"},
                            "basic_auth_users": {"prometheus": h}}, "/etc/tapttrace")
    assert web.tls == Tls("/etc/tapttrace/c.pem", "/abs/k.pem", "NoClientCert", None, "TLS12", "TLS13")
    assert web.users == {"prometheus": h}


def test_an_empty_file_or_empty_tls_values_mean_plain_http():
    assert parse_web_config(None, "/x") == WebConfig()
    assert parse_web_config({"tls_server_config": {"cert_file": "", "key_file": ""}}, "/x").tls is None


def test_mutual_tls_and_versions():
    web = parse_web_config({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_ca_file": "ca",
                                                  "client_auth_type": "RequireAndVerifyClientCert",
                                                  "min_version": "TLS13"}}, "/d")
    assert web.tls == Tls("/d/c", "/d/k", "RequireAndVerifyClientCert", "/d/ca", "TLS13", "TLS13")


BAD = [
    ({"tls_server_confg": {}}, "unknown key tls_server_confg"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
     "tls_server_config.cipher_suites is not supported by tapttrace"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "certfile": "x"}},
     "unknown key tls_server_config.certfile"),
    ({"http_server_config": {"http2": False}}, "http_server_config is not supported by tapttrace"),
    ({"tls_server_config": {"cert_file": "c"}}, "tls_server_config needs key_file"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_ca_file": "ca"}},
     "client_ca_file is set but client_auth_type is NoClientCert"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_auth_type": "RequireAndVerifyClientCert"}},
     "needs client_ca_file"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_auth_type": "RequireAnyClientCert",
                            "client_ca_file": "ca"}}, "RequireAnyClientCert is not supported"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_auth_type": "Always"}},
     "invalid client_auth_type 'Always'"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "min_version": "TLS14"}}, "invalid min_version 'TLS14'"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "min_version": "TLS13", "max_version": "TLS12"}},
     "min_version TLS13 is above max_version TLS12"),
    ({"tls_server_config": {"cert_file": 3, "key_file": "k"}}, "tls_server_config.cert_file must be a string"),
    ({"basic_auth_users": {"prometheus": "secret"}}, "user 'prometheus': not a bcrypt hash"),
    ({"basic_auth_users": {"prometheus": "$2b$03$" + "a" * 53}}, "not a bcrypt hash"),  # cost below 4
    ({"basic_auth_users": {"a:b": "$2b$10$" + "a" * 53}}, "':' in a user name"),
    ({"basic_auth_users": ["prometheus"]}, "basic_auth_users must be a mapping"),
    (["tls_server_config"], "the file must be a mapping"),
]


@pytest.mark.parametrize("data,words", BAD, ids=[w for _, w in BAD])
def test_a_bad_file_is_refused_with_one_line_naming_the_problem(data, words):
    with pytest.raises(UsageError) as err:
        parse_web_config(data, "/d", "web.yml")
    assert words in err.value.message
    assert err.value.message.startswith("--web.config.file web.yml: ") and "\n" not in err.value.message
    assert err.value.exit_code == 2


def test_the_example_in_the_docs_is_a_valid_file():
    text = (ROOT / "docs" / "exporter.md").read_text()
    example = text.split("# /etc/tapttrace/web.yml")[1].split("\n", 1)[1].split("```")[0]
    web = parse_web_config(yaml.safe_load(example), "/etc/tapttrace")
    assert web.tls == Tls("/etc/tapttrace/tls.crt", "/etc/tapttrace/tls.key")
    assert BasicAuth(web.users).allows(basic("prometheus", "change-me"))


def test_unreadable_or_broken_files(tmp_path):
    with pytest.raises(UsageError, match="No such file or directory"):
        load_web_config(str(tmp_path / "absent.yml"))
    bad = tmp_path / "bad.yml"
    bad.write_text("tls_server_config:\n  cert_file: [unclosed\n")
    with pytest.raises(UsageError, match=r"not valid YAML \(line \d+\)") as err:
        load_web_config(str(bad))
    assert "\n" not in err.value.message


def test_a_certificate_that_will_not_load_is_one_line(tmp_path):
    (tmp_path / "c.pem").write_text("not a certificate\n")
    tls = Tls(str(tmp_path / "c.pem"), str(tmp_path / "c.pem"))
    with pytest.raises(UsageError, match="cannot load cert_file") as err:
        tls.context()
    assert "\n" not in err.value.message


def run_exporter_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer.exporter", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_command_with_a_bad_web_config_file_says_one_line_and_exits_2(tmp_path):
    """Checked before anything is loaded, so this needs no root."""
    bad = tmp_path / "web.yml"
    bad.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": "c", "key_file": "k", "curve_preferences": []}}))
    res = run_exporter_cli("--web.config.file", str(bad))
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [f"tapttrace: --web.config.file {bad}: tls_server_config.curve_preferences is "
                                       "not supported by tapttrace (it takes: tls_server_config.cert_file, "
                                       "tls_server_config.client_auth_type, tls_server_config.client_ca_file, "
                                       "tls_server_config.key_file, tls_server_config.max_version, "
                                       "tls_server_config.min_version)"]
    res = run_exporter_cli("--web.config.file", str(tmp_path / "absent.yml"))
    assert (res.returncode, res.stderr) == (2, f"tapttrace: --web.config.file {tmp_path / 'absent.yml'}: "
                                               "No such file or directory\n")


def test_command_refuses_web_config_file_and_tls_flags_together(tmp_path):
    (tmp_path / "web.yml").write_text("")
    (tmp_path / "c.pem").write_text("")
    res = run_exporter_cli("--web.config.file", str(tmp_path / "web.yml"), "--tls-cert", str(tmp_path / "c.pem"),
                           "--tls-key", str(tmp_path / "c.pem"))
    assert res.returncode == 2
    assert len(res.stderr.splitlines()) == 1 and "don't go together" in res.stderr


# -- basic auth -------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_checks_bcrypt_once_per_credentials():
    auth = BasicAuth({"prometheus": hashed(b"s3cret")})
    assert auth.allows(basic("prometheus", "s3cret"))
    assert auth.bcrypt_checks == 1
    for _ in range(3):  # every scrape after the first: from the cache
        assert auth.allows(basic("prometheus", "s3cret"))
    assert auth.bcrypt_checks == 1
    assert not auth.allows(basic("prometheus", "wrong"))
    assert not auth.allows(basic("prometheus", "wrong"))  # a refusal is remembered as well
    assert auth.bcrypt_checks == 2
    assert not auth.allows(basic("intruder", "s3cret"))  # an unknown user pays bcrypt too
    assert auth.bcrypt_checks == 3


def test_htpasswd_hash_forms_are_accepted():
    """htpasswd -B writes $2y$; other tools $2a$ or $2b$: the same algorithm."""
    for prefix in ("$2y$", "$2a$", "$2b$"):
        h = hashed(b"pw", prefix)
        parse_web_config({"basic_auth_users": {"u": h}}, "/d")
        assert BasicAuth({"u": h}).allows(basic("u", "pw")), prefix


def test_basic_auth_refuses_what_is_not_good_credentials():
    auth = BasicAuth({"prometheus": hashed(b"pw")})
    for header in (None, "", "Bearer abc", "Basic", "Basic !!!notbase64",
                   "Basic " + base64.b64encode(b"nocolon").decode(),
                   basic("prometheus", "x" * 100)):  # bcrypt takes 72 bytes at most: refused, not an error
        assert not auth.allows(header), header
    assert parse_basic("basic " + base64.b64encode(b"u:p:q").decode()) == (b"u", b"p:q")


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(auth_mod, "CACHE_SIZE", 5)
    auth = BasicAuth({"prometheus": hashed(b"pw")})
    for i in range(8):
        auth.allows(basic("prometheus", f"guess{i}"))
    assert len(auth._cache) == 5


def test_capability_masks_as_proc_shows_them():
    assert mask(KEEP) == 0x281004  # cap_dac_read_search 2, cap_net_admin 12, cap_sys_ptrace 19, cap_sys_admin 21
    assert names(0x281004) == ["cap_dac_read_search", "cap_net_admin", "cap_sys_ptrace", "cap_sys_admin"]


# -- the server -------------------------------------------------------------------------------


def serve(web: WebConfig) -> MetricsServer:
    return MetricsServer(make([Inventory.build({NS: "hv"}, [BR])]), Listen("127.0.0.1", 0), web).start()


def get(url: str, *, context=None, authorization=None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(req, context=context, timeout=WAIT) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_https_with_basic_auth():
    with certificates() as c:
        server = serve(WebConfig(Tls(str(c.server_cert), str(c.server_key)), {"prometheus": hashed(b"pw")}))
        try:
            url, ctx = f"https://127.0.0.1:{server.port}/metrics", ssl.create_default_context(cafile=str(c.ca))
            status, headers, _ = get(url, context=ctx)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
            assert get(url, context=ctx, authorization=basic("prometheus", "nope"))[0] == 401
            status, _, body = get(url, context=ctx, authorization=basic("prometheus", "pw"))
            assert status == 200 and b"tapttrace_build_info" in body
        finally:
            server.close()


def test_plain_http_with_basic_auth_still_asks_for_credentials():
    server = serve(WebConfig(None, {"prometheus": hashed(b"pw")}))
    try:
        status, headers, body = get(f"http://127.0.0.1:{server.port}/metrics")
        assert (status, body) == (401, b"Unauthorized\n") and "WWW-Authenticate" in headers
        assert get(f"http://127.0.0.1:{server.port}/metrics", authorization=basic("prometheus", "pw"))[0] == 200
    finally:
        server.close()


def test_mutual_tls_needs_a_client_certificate_signed_by_the_ca():
    with certificates() as c:
        server = serve(WebConfig(Tls(str(c.server_cert), str(c.server_key), "RequireAndVerifyClientCert", str(c.ca))))
        try:
            url = f"https://127.0.0.1:{server.port}/metrics"
            anonymous = ssl.create_default_context(cafile=str(c.ca))
            with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
                get(url, context=anonymous)
            signed = ssl.create_default_context(cafile=str(c.ca))
            signed.load_cert_chain(str(c.client_cert), str(c.client_key))
            status, _, body = get(url, context=signed)
            assert status == 200 and b"tapttrace_build_info" in body
        finally:
            server.close()


def test_a_silent_client_does_not_hold_up_the_others(monkeypatch):
    """The handshake happens in the connection's own thread: a client that connects and sends
    nothing waits alone (for CLIENT_TIMEOUT_S, here longer than the test's patience)."""
    monkeypatch.setattr(server_mod, "CLIENT_TIMEOUT_S", 10 * WAIT)
    with certificates() as c:
        server = serve(WebConfig(Tls(str(c.server_cert), str(c.server_key))))
        try:
            with socket.create_connection(("127.0.0.1", server.port)):
                status, _, _ = get(f"https://127.0.0.1:{server.port}/metrics",
                                   context=ssl.create_default_context(cafile=str(c.ca)))
                assert status == 200
        finally:
            server.close()
