"""HEAD and HTTP/1.0 framing, JSON nesting depth, log retention by records and bytes, streamed log reads, and
--max-connections: end-to-end against the real server over raw sockets, and the log store on its own."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

import psutil
import pytest

from harness import AUTH, Server
from tinyfaas_std.logs import FunctionLog, LogStore, encode_record

T = TypeVar("T")
ECHO = "def main(*args, **kwargs):\n    return len(args)\n"


@pytest.fixture(scope="module", autouse=True)
def echo_function(server: Server) -> None:
    assert server.upload("echo", ECHO).status == 200
    assert server.call("echo", [1]).status == 200  # one log record, so the log route has something to stream


# -- raw HTTP helpers --------------------------------------------------------------------------------------------

def _request(method: str, path: str, version: str = "HTTP/1.1", auth: bool = True, *fields: str) -> bytes:
    lines = [f"{method} {path} {version}", "Host: x", *fields] + ([f"Authorization: {AUTH}"] if auth else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(f: BinaryIO, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One response from `f`, framed as RFC 9112 6.3 says: no body after HEAD, chunked, Content-Length, or to EOF."""
    status_line = f.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = {}
    while (line := f.readline()) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.lower()] = value.strip()
    if head_only:
        body = b""
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int(f.readline(), 16):
            parts.append(f.read(size))
            assert f.read(2) == b"\r\n"
        assert f.readline() == b"\r\n"
        body = b"".join(parts)
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    else:
        body = f.read()
    return int(status_line.split()[1]), headers, body


def _nothing_more(sock: socket.socket) -> None:
    sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        extra = sock.recv(1024)
        pytest.fail(f"unexpected bytes after the last answer: {extra!r}")


# -- 1. HEAD ------------------------------------------------------------------------------------------------------

def test_head_is_get_without_a_body_and_a_pipelining_client_stays_in_step(server: Server) -> None:
    requests = [("HEAD", "/admin/functions", True), ("GET", "/admin/functions", True),
                ("HEAD", "/function/echo", True),  # 405: POST only
                ("HEAD", "/admin/functions", False),  # 401
                ("HEAD", "/admin/logs/echo", True),  # a streamed answer
                ("HEAD", "/admin/nope", True),  # 404
                ("GET", "/admin/logs/echo", True)]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"".join(_request(method, path, "HTTP/1.1", auth) for method, path, auth in requests))
        f = sock.makefile("rb")
        answers = [_read_response(f, head_only=method == "HEAD") for method, _, _ in requests]
        _nothing_more(sock)
    (s1, h1, _), (s2, h2, b2), (s3, h3, _), (s4, h4, _), (s5, h5, _), (s6, _, _), (s7, _, b7) = answers
    assert (s1, s2) == (200, 200) and json.loads(b2) == ["echo"]
    assert h1["content-length"] == h2["content-length"] == str(len(b2))
    assert h1["content-type"] == h2["content-type"] == "application/json"
    assert s3 == 405 and h3["allow"] == "POST" and int(h3["content-length"]) > 0
    assert s4 == 401 and h4["www-authenticate"] == 'Basic realm="Login Required"'
    assert s5 == 200 and h5["transfer-encoding"] == "chunked"
    assert s6 == 404
    assert s7 == 200 and json.loads(b7)[0]["args"] == [1]


# -- 2. HTTP/1.0 and Transfer-Encoding ------------------------------------------------------------------------

def test_http10_with_transfer_encoding_is_400_and_closed_and_http10_keep_alive_works(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(_request("POST", "/function/echo", "HTTP/1.0", True, "Connection: keep-alive",
                              "Transfer-Encoding: chunked") + b"2\r\n[]\r\n0\r\n\r\n")
        f = sock.makefile("rb")
        status, headers, body = _read_response(f)
        assert status == 400 and json.loads(body)["error"]["code"] == "bad_transfer_encoding"
        assert headers["connection"] == "close" and f.read() == b""  # closed: nothing of the body is read as a request
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        f = sock.makefile("rb")
        for _ in range(2):
            sock.sendall(_request("GET", "/admin/functions", "HTTP/1.0", True, "Connection: keep-alive"))
            status, headers, body = _read_response(f)
            assert status == 200 and json.loads(body) == ["echo"] and headers["connection"] == "keep-alive"


# -- 3. nesting depth -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status", [
    ("[" * 64 + "]" * 64, 200),
    ("[" * 64 + "1" + "]" * 64, 200),
    ('{"args":' + "[" * 63 + "]" * 63 + "}", 200),  # the top-level object is level 1
    ("[" * 65 + "]" * 65, 400),
    ("[" * 65 + "1" + "]" * 65, 400),
    ('{"args":' + "[" * 64 + "]" * 64 + "}", 400),
    ("[" * 64 + "{}" + "]" * 64, 400),
])
def test_json_nested_64_levels_is_accepted_and_65_is_400(server: Server, body: str, status: int) -> None:
    resp = server.request("POST", "/function/echo", body, {"Content-Type": "application/json"})
    assert resp.status == status, resp.raw
    if status == 400:
        assert resp.json["error"]["code"] == "bad_json" and "64" in resp.json["error"]["message"]


@pytest.mark.parametrize("levels, status", [(64, 200), (65, 500)])
def test_results_obey_the_same_nesting_rule(server: Server, levels: int, status: int) -> None:
    src = "def main(n):\n    value = 1\n    for _ in range(n):\n        value = [value]\n    return value\n"
    assert server.upload("nester", src).status == 200
    resp = server.call("nester", [levels])
    assert resp.status == status, resp.raw
    if status == 500:
        assert "nested deeper than 64" in resp.json["error"]["message"]


# -- 4 and 5. the log store: one kept window, bounded by records and by bytes ------------------------------------

def _record(i: int, status: str = "ok", pad: int = 0) -> bytes:
    outcome = b'"result":"%s"' % (b"x" * pad) if status == "ok" else b'"error":{}'
    return encode_record(id=f"00000000-0000-4000-8000-{i:012d}", status=status, function="f", trigger="http",
                         start=1.0, end=2.0, rest=b'"args":[%d],"kwargs":{},"stdout":"","stderr":"",' % i + outcome)


def _window(log: FunctionLog) -> tuple[int, int]:
    records = [json.loads(line) for line in log.read()]
    return len(records), sum(r["status"] != "ok" for r in records)


def test_counts_describe_exactly_the_records_read(tmp_path: Path) -> None:
    log = FunctionLog(tmp_path / "f", retention=10)
    for i in range(60):
        log.append(_record(i, "error" if i % 7 < 3 else "ok"), is_error=i % 7 < 3)
        assert log.counts() == _window(log), i
        if i == 30:  # a reopened log recounts its segments from the files
            log.close()
            log = FunctionLog(tmp_path / "f", retention=10)
    assert log.counts()[0] == 10
    bounded = FunctionLog(tmp_path / "g", retention=10, retention_bytes=2000)  # both bounds at once
    for i in range(60):
        bounded.append(_record(i, "error" if i % 5 == 0 else "ok", pad=i * 3), is_error=i % 5 == 0)
        assert bounded.counts() == _window(bounded), i


def test_log_retention_mb_keeps_the_files_within_the_byte_bound(tmp_path: Path) -> None:
    bound = int(0.05 * 1024 * 1024)
    log = LogStore(tmp_path, retention=0, retention_mb=0.05).open("f")
    size = len(_record(0, pad=900))
    for i in range(400):
        log.append(_record(i, pad=900), is_error=False)
        on_disk = sum(p.stat().st_size for p in (tmp_path / "f").glob("*.jsonl"))
        assert on_disk <= bound, i
    assert on_disk >= bound * 3 // 4 - size  # whole segments of a quarter of the bound: little more is dropped
    kept = [json.loads(line)["args"][0] for line in log.read()]
    assert kept == list(range(400 - len(kept), 400)) and log.counts() == (len(kept), 0)
    log.close()
    smaller = LogStore(tmp_path, retention=0, retention_mb=0.02).open("f")  # a lower bound applies on opening
    assert smaller.counts()[0] < len(kept)
    assert sum(p.stat().st_size for p in (tmp_path / "f").glob("*.jsonl")) <= int(0.02 * 1024 * 1024)


# -- 6. reading a whole log costs bounded server memory -------------------------------------------------------------

BIG_LINES, BIG_LINE = 64, 1024 * 1024  # records far beyond the 64 KiB per value a record keeps


@pytest.fixture(scope="module")
def big_log(server: Server) -> list[dict]:
    """A function whose log holds BIG_LINES records of BIG_LINE bytes, written by the store itself before the
    server first opens that log (it opens a log on first use)."""
    assert server.upload("big", ECHO).status == 200
    log = FunctionLog(server.root / "data" / "logs" / "big", retention=10000, retention_bytes=100 * 1024 * 1024)
    lines = [_record(i, "error" if i == 3 else "ok", pad=BIG_LINE) for i in range(BIG_LINES)]
    for i, line in enumerate(lines):
        log.append(line, is_error=i == 3)
    log.close()
    assert len(list((server.root / "data" / "logs" / "big").glob("*.jsonl"))) > 1
    return [json.loads(line) for line in lines]


def _peak_rss_while(pid: int, read: Callable[[], T]) -> tuple[int, T]:
    """How far the process's RSS rose above its level before `read()` ran, sampled every 2 ms; and its result."""
    proc, peak, done = psutil.Process(pid), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    before = proc.memory_info().rss
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = read()
    finally:
        done.set()
        sampler.join()
    return peak[0] - before, result


def test_reading_a_large_log_streams_it_in_bounded_memory(server: Server, big_log: list[dict]) -> None:
    def read() -> tuple[int, dict[str, str], bytes]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(_request("GET", "/admin/logs/big"))
            f = sock.makefile("rb")
            status_line = f.readline()
            headers = {}
            while (line := f.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            return int(status_line.split()[1]), headers, _dechunk_slowly(f)

    growth, (status, headers, body) = _peak_rss_while(server.proc.pid, read)
    log_size = BIG_LINES * BIG_LINE
    assert status == 200 and headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert json.loads(body) == big_log
    assert growth < log_size / 6, f"the server grew by {growth / 2**20:.0f} MiB reading a {log_size / 2**20:.0f} MiB log"


def _dechunk_slowly(f: BinaryIO) -> bytes:
    """A chunked body, read by a client slower than the disk: a server that held the whole log meanwhile shows."""
    parts = []
    while size := int(f.readline(), 16):
        parts.append(f.read(size))
        assert f.read(2) == b"\r\n"
        time.sleep(0.002 * size / 2**20)
    assert f.readline() == b"\r\n"
    return b"".join(parts)


def test_a_log_streams_to_http10_until_close_and_limit_picks_the_newest(server: Server, big_log: list[dict]) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_request("GET", "/admin/logs/big?limit=5", "HTTP/1.0", True, "Connection: keep-alive"))
        status, headers, body = _read_response(sock.makefile("rb"))
    assert status == 200 and headers["connection"] == "close"
    assert "content-length" not in headers and "transfer-encoding" not in headers
    assert json.loads(body) == big_log[-5:]


# -- 7. --max-connections -------------------------------------------------------------------------------------------

@pytest.fixture
def limited_server(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("srv"), wheels, ["--max-connections", "20"]).start()
    try:
        yield server
    finally:
        server.stop()


def test_past_max_connections_the_next_gets_503_at_once_without_a_thread(limited_server: Server) -> None:
    proc = psutil.Process(limited_server.proc.pid)
    threads = proc.num_threads()
    idle = [socket.create_connection(("127.0.0.1", limited_server.port), timeout=5) for _ in range(20)]
    try:
        deadline = time.monotonic() + 2
        while proc.num_threads() < threads + 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.num_threads() == threads + 20  # each served connection has its thread
        for _ in range(30):
            began = time.monotonic()
            with socket.create_connection(("127.0.0.1", limited_server.port), timeout=2) as extra:
                status, headers, body = _read_response(extra.makefile("rb"))
            assert time.monotonic() - began < 0.5
            assert status == 503 and headers["connection"] == "close"
            assert json.loads(body)["error"]["code"] == "too_many_connections"
        assert proc.num_threads() == threads + 20
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 1
    while (resp := limited_server.request("GET", "/admin/functions")).status != 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert resp.status == 200 and resp.json == []


def test_a_record_that_cannot_be_written_whole_leaves_no_torn_line(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk writes a record in part: the part is cut off again, the error is raised (the call is then
    answered 503, not 200 without a record), and the next record starts clean."""
    import os

    from tinyfaas_std import logs as state

    log = FunctionLog(tmp_path / "f", retention=100)
    log.append(_record(0), False)
    real_write = os.write
    monkeypatch.setattr(state.os, "write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(OSError):
        log.append(_record(1), False)
    monkeypatch.setattr(state.os, "write", real_write)
    log.append(_record(2), False)
    assert [json.loads(line)["args"] for line in log.read()] == [[0], [2]]
    assert all(line.endswith(b"\n") for line in (tmp_path / "f").glob("*.jsonl").__next__().read_bytes().splitlines(True))


# -- ?after=<id>: what a follower asks -------------------------------------------------------------------------------

def test_logs_after_a_call_are_the_records_that_came_after_it(server: Server) -> None:
    assert server.upload("follow", "def main(i):\n    return i\n").status == 200
    ids = [server.call("follow", [i]).json["id"] for i in range(5)]
    after = server.request("GET", f"/admin/logs/follow?after={ids[1]}").json
    assert [r["id"] for r in after] == ids[2:]
    assert server.request("GET", f"/admin/logs/follow?after={ids[-1]}").json == []
    assert [r["id"] for r in server.request("GET", f"/admin/logs/follow?after={ids[0]}&limit=2").json] == ids[3:]
    unknown = server.request("GET", "/admin/logs/follow?after=00000000-0000-4000-8000-000000000000")
    assert unknown.status == 400 and unknown.json["error"]["code"] == "unknown_after"
    assert server.request("GET", "/admin/logs/follow?after=nope").status == 400


def test_after_finds_a_call_deep_in_a_long_log(tmp_path: Path) -> None:
    log = LogStore(tmp_path, retention=0).open("f")
    for i in range(3000):
        log.append(_record(i), is_error=False)
    found = log.read_after("00000000-0000-4000-8000-000000000100")
    assert found is not None and len(found) == 2899 and json.loads(found[0])["args"] == [101]
    assert log.read_after("00000000-0000-4000-8000-999999999999") is None
