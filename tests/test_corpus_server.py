"""gunicorn's request corpus replayed against the real server, whole and in small writes, with and without
valid credentials: an invalid request never gets a 2xx or 5xx (4xx or a closed connection), a valid one never
gets 400/431/5xx (501 only for content codings before chunked, which we do not decode), and the server keeps
serving after each."""

from __future__ import annotations

import re
import socket
import time

import pytest

from harness import AUTH, Server
from tinyfaas_std.errors import FaasError
from tinyfaas_std.http11 import parse_head
from test_http11 import EXCLUDED, GUNICORN, MANIFEST

# Past the parser-level exclusions: cases whose raw file cannot be replayed over a socket as a whole request.
SERVER_EXCLUDED = {
    "valid/099": "the corpus file is cut short: it holds 8599 of the 17914 body bytes its Content-Length declares",
}
CODINGS_501 = {"valid/025", "valid/025_line", "valid/rfc9112_smuggle_gzip_chunked_01"}

CASES = sorted(k for k in MANIFEST if k not in EXCLUDED and k not in SERVER_EXCLUDED)
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def _with_credentials(raw: bytes) -> bytes:
    """Give the first request valid credentials and, when its request line is sound on its own (so the fault, if
    any, lies elsewhere), aim it at a route that answers 200, keeping its HTTP version; framing is untouched."""
    end = raw.find(b"\r\n")
    if end < 0:
        return raw
    line = raw[:end]
    try:
        version = parse_head(line + b"\r\n\r\n").version
        line = b"GET /admin/functions HTTP/1.%d" % version[1]
    except FaasError:
        pass
    return line + b"\r\nAuthorization: " + AUTH.encode() + raw[end:]


def _statuses(stream: bytes) -> list[int]:
    """The final status of every response in a byte stream (interim 100 Continue skipped)."""
    statuses, pos = [], 0
    while True:
        match = _STATUS.match(stream, pos)
        if not match:
            return statuses
        head_end = stream.find(b"\r\n\r\n", pos)
        length = re.search(rb"\r\nContent-Length: (\d+)", stream[pos:head_end + 2])
        pos = head_end + 4 + (int(length.group(1)) if length else 0)
        if match.group(1) != b"100":
            statuses.append(int(match.group(1)))


def _replay(port: int, raw: bytes, piece: int | None) -> list[int]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if piece is None:
                sock.sendall(raw)
            else:
                for i in range(0, len(raw), piece):
                    sock.sendall(raw[i:i + piece])
                    if i // piece % 16 == 15:
                        time.sleep(0.0005)  # let the server see the request in separate reads
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed before we finished: what it said is read below
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
    return _statuses(data)


@pytest.fixture(scope="module")
def corpus_server(tmp_path_factory, wheels):
    if not MANIFEST:
        pytest.skip(f"gunicorn corpus not found: looked for {GUNICORN}")
    server = Server(tmp_path_factory.mktemp("srv"), wheels, ["--client-timeout", "2"]).start()
    yield server
    server.stop()


@pytest.mark.parametrize("piece", [None, 3], ids=["whole", "3-byte-writes"])
@pytest.mark.parametrize("credentials", [False, True], ids=["anonymous", "authorized"])
@pytest.mark.parametrize("key", CASES)
def test_corpus_case(corpus_server: Server, key: str, credentials: bool, piece: int | None) -> None:
    raw = (GUNICORN / MANIFEST[key]["raw"]).read_bytes()
    if credentials:
        raw = _with_credentials(raw)
    statuses = _replay(corpus_server.port, raw, piece)
    if key.startswith("invalid/"):
        assert all(400 <= s < 500 for s in statuses), statuses
        if credentials and statuses:
            assert statuses[0] != 200
    else:
        allowed_5xx = {501} if key in CODINGS_501 else set()
        assert statuses, "a valid request got no answer"
        assert all(s not in (400, 431) and (s < 500 or s in allowed_5xx) for s in statuses), statuses
        if credentials and key not in CODINGS_501:
            assert statuses[0] == 200
    assert corpus_server.request("GET", "/admin/functions").status == 200
