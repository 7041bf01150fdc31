"""HTTPS (SPEC 12): the real server with a certificate the test makes with `openssl`, reached with http.client and
with curl; TLS 1.1 and plain HTTP refused; a key that does not load stops the start with a clear message."""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import AUTH, Server, multipart_body

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command makes the certificate")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    crt, key = folder / "server.crt", folder / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return crt, key


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, wheels: Path, cert: tuple[Path, Path]) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("tlssrv"), wheels,
                    ["--tls-cert", str(cert[0]), "--tls-key", str(cert[1])]).start()
    assert server.upload  # started: its first line said https://
    yield server
    server.stop()


def _https(server: Server, cert: Path, context: ssl.SSLContext | None = None) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10,
                                       context=context or ssl.create_default_context(cafile=str(cert)))


def test_https_end_to_end_with_http_client(tls_server: Server, cert: tuple[Path, Path]) -> None:
    conn = _https(tls_server, cert[0])
    body, ctype = multipart_body({"name": "hello", "file": ("f.py", b"def main(x):\n    return x * 2\n")})
    conn.request("POST", "/admin/upload", body, {"Authorization": AUTH, "Content-Type": ctype})
    uploaded = conn.getresponse()
    assert uploaded.status == 200 and json.loads(uploaded.read())["status"] == "ready"
    for _ in range(3):  # keep-alive over TLS
        conn.request("POST", "/function/hello", b"[21]", {"Authorization": AUTH})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["result"] == 42
    assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    conn.close()


def test_https_with_curl_cacert(tls_server: Server, cert: tuple[Path, Path]) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    done = subprocess.run(["curl", "-sS", "--cacert", str(cert[0]), "-u", "admin:1234", "-d", "[5]",
                           f"https://127.0.0.1:{tls_server.port}/function/hello"], capture_output=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == 10


def test_tls_1_1_and_plain_http_are_refused(tls_server: Server, cert: tuple[Path, Path]) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(cert[0]))
    old.set_ciphers("DEFAULT@SECLEVEL=0")  # let this client offer TLS 1.1 at all: the server must refuse it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: that is the point
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError) as refused:
        conn = _https(tls_server, cert[0], old)
        conn.request("GET", "/healthz")
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value).upper(), refused.value  # the server's alert: it refused
    plain = http.client.HTTPConnection("127.0.0.1", tls_server.port, timeout=5)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        plain.request("GET", "/healthz")
        plain.getresponse().read()
    conn = _https(tls_server, cert[0])  # the server still serves
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200


def test_a_bad_key_stops_the_start_with_a_message(tmp_path: Path, wheels: Path, cert: tuple[Path, Path]) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    server = Server(tmp_path, wheels, ["--tls-cert", str(cert[0]), "--tls-key", str(bad)])
    with pytest.raises(RuntimeError):
        server.start()
    assert server.proc.wait(10) == 2 and "--tls-cert/--tls-key" in server.log()


def test_plain_http_on_a_public_address_warns(tmp_path: Path, wheels: Path) -> None:
    server = Server(tmp_path, wheels, ["--host", "0.0.0.0"])
    server.start()
    server.stop()
    assert "plain HTTP on a non-loopback address" in server.log()
