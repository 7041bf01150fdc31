"""Broken and hostile functions and clients cost nothing: the server answers, loses nothing, keeps serving."""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from harness import AUTH, Server, raw_exchange


def _alive_children(server: Server) -> list[psutil.Process]:
    return [p for p in psutil.Process(server.proc.pid).children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE]


MEMORY_MB = 256  # the --memory-mb of the server below: small, so "just past the limit" is far below this machine's RAM


@pytest.fixture
def small_memory_server(tmp_path_factory: pytest.TempPathFactory, wheels) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("srv"), wheels, ["--memory-mb", str(MEMORY_MB)]).start()
    yield server
    server.stop()


def test_a_huge_allocation_fails_inside_the_worker_only(small_memory_server: Server) -> None:
    server = small_memory_server
    src = "def main(mb):\n    block = bytearray(mb * 1024 ** 2)\n    return len(block)\n"
    assert server.upload("hog", src).status == 200
    below = server.call("hog", [MEMORY_MB - 128])  # the limit leaves room for this: it is not a tiny cap
    assert below.status == 200 and below.json["result"] == (MEMORY_MB - 128) * 1024 ** 2
    resp = server.call("hog", [MEMORY_MB + 64])  # past the limit: succeeds wherever no limit is applied
    assert resp.status in (500, 502), resp.raw
    if resp.status == 500:
        assert resp.json["error"]["type"] == "MemoryError"
    assert psutil.Process(server.proc.pid).memory_info().rss < 200 * 1024 * 1024
    assert server.call("hog", [0]).json["result"] == 0


def test_printing_100_mb_is_capped_in_the_record_and_the_result_still_returns(server: Server) -> None:
    src = "import sys\ndef main():\n    chunk = 'x' * (1024 * 1024)\n    for _ in range(100):\n" \
          "        sys.stdout.write(chunk)\n    print('err', file=sys.stderr)\n    return 'done'\n"
    assert server.upload("chatty", src).status == 200
    resp = server.call("chatty")
    assert resp.status == 200 and resp.json["result"] == "done"
    record = server.request("GET", "/admin/logs/chatty?limit=1").json[0]
    assert len(record["stdout"]) == 64 * 1024 and record["stdout_truncated"] is True
    assert record["stderr"] == "err\n" and record["stderr_truncated"] is False
    assert psutil.Process(server.proc.pid).memory_info().rss < 200 * 1024 * 1024


def test_a_worker_that_ignores_sigterm_is_killed_on_timeout(server: Server) -> None:
    src = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" \
          "def main(sleep):\n    time.sleep(sleep)\n    return 'ok'\n"
    assert server.upload("stubborn", src).status == 200
    assert server.call("stubborn", [0]).status == 200
    pids_before = {p.pid for p in _alive_children(server)}
    assert server.call("stubborn", [60]).status == 504
    time.sleep(0.3)
    stubborn_left = [p for p in _alive_children(server) if p.pid in pids_before and "stubborn" in " ".join(p.cmdline())]
    assert stubborn_left == []
    assert server.call("stubborn", [0]).json["result"] == "ok"


def test_a_hanging_function_never_delays_another(server: Server) -> None:
    assert server.upload("hangs", "import time\ndef main():\n    time.sleep(60)\n").status == 200
    assert server.upload("quick", "def main():\n    return 'q'\n").status == 200
    with ThreadPoolExecutor(8) as pool:
        hanging = [pool.submit(server.call, "hangs") for _ in range(6)]  # more than its 4 workers
        time.sleep(0.3)
        start = time.monotonic()
        for _ in range(20):
            assert server.call("quick").json["result"] == "q"
        assert time.monotonic() - start < 1.5  # 20 warm calls; a shared queue would wait the 2 s timeout
        statuses = sorted(f.result().status for f in hanging)
    # The four that got a worker hang and time out. The two queued behind them wait as long as the timeout (2 s)
    # that frees a worker for them: they get a worker and time out too (504), or give up their place first (429).
    assert statuses.count(504) >= 4 and set(statuses) <= {504, 429}, statuses


@pytest.fixture
def fresh_server_small_queue(tmp_path_factory, wheels):
    server = Server(tmp_path_factory.mktemp("srv"), wheels, ["--max-workers", "2", "--max-queue", "1"]).start()
    yield server
    server.stop()


SLOW = "import time\ndef main(seconds):\n    time.sleep(seconds)\n    return seconds\n"


def _overfill(server: Server, name: str) -> tuple[list, list]:
    """Against --max-workers 2 --max-queue 1: two calls busy for 2 s, one queued behind them, then three more while
    all of that is certainly still true. Returns (the first three answers, the last three answers)."""
    with ThreadPoolExecutor(2) as pool:  # warm both workers, so the busy calls below are busy at once
        assert [f.result().status for f in [pool.submit(server.call, name, [0.3]) for _ in range(2)]] == [200, 200]
    with ThreadPoolExecutor(6) as pool:
        busy = [pool.submit(server.call, name, [2]) for _ in range(2)]
        time.sleep(0.3)
        queued = pool.submit(server.call, name, [0])
        time.sleep(0.3)  # the queued call has its place; the busy ones have 1.4 s to go
        late = [pool.submit(server.call, name, [0]) for _ in range(3)]
        late_answers = [f.result() for f in late]
        first_answers = [f.result() for f in [*busy, queued]]
    return first_answers, late_answers


def test_queue_beyond_the_workers_is_bounded_with_429(fresh_server_small_queue: Server) -> None:
    server = fresh_server_small_queue
    assert server.upload("narrow", SLOW).status == 200
    accepted, rejected = _overfill(server, "narrow")
    assert [r.status for r in accepted] == [200, 200, 200]
    assert [r.status for r in rejected] == [429, 429, 429]
    for r in rejected:
        assert r.json["error"]["code"] == "queue_full" and r.headers["retry-after"] == "1"


def test_lone_surrogates_and_control_characters_never_corrupt_the_log(server: Server) -> None:
    assert server.upload("echo", "def main(x):\n    print(x)\n    return x\n").status == 200
    resp = server.request("POST", "/function/echo", b'["\\ud800 \\u0000 \\u001b[31m"]')
    assert resp.status == 200 and resp.json["result"] == "\ud800 \x00 \x1b[31m"
    for record in server.request("GET", "/admin/logs/echo").json:
        assert record["args"] == ["\ud800 \x00 \x1b[31m"]
    logfile = next((server.root / "data" / "logs" / "echo").glob("*.jsonl"))
    for line in logfile.read_bytes().splitlines():
        assert line.isascii()
        json.loads(line)


def test_request_data_in_the_server_log_is_escaped(server: Server) -> None:
    raw_exchange(server.port, b"GET /admin/\x1b[31mred HTTP/1.1\r\nHost: x\r\nAuthorization: Basic d3Jvbmc=\r\n\r\n", 2)
    raw_exchange(server.port, b"GET /admin/%1b[31mred HTTP/1.1\r\nHost: x\r\nAuthorization: Basic d3Jvbmc=\r\n\r\n", 2)
    time.sleep(0.2)
    log = server.log()
    assert "\x1b" not in log
    assert "failed authentication from 127.0.0.1" in log


def test_expect_100_continue_comes_only_after_auth_and_size_checks(server: Server) -> None:
    def head(auth: str, length: int) -> bytes:
        return (f"POST /function/quick HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                f"Expect: 100-continue\r\nContent-Length: {length}\r\n\r\n").encode()

    assert server.upload("quick", "def main():\n    return 'q'\n").status == 200
    assert raw_exchange(server.port, head("Basic d3Jvbmc=", 2), 2).startswith(b"HTTP/1.1 401 ")
    assert raw_exchange(server.port, head(AUTH, 100 * 1024 * 1024), 2).startswith(b"HTTP/1.1 413 ")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head(AUTH, 2))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"[]")
        assert sock.recv(1000).startswith(b"HTTP/1.1 200 ")


def test_300_idle_and_half_sent_connections_do_not_block_a_fresh_client(server: Server) -> None:
    socks = []
    try:
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if i % 2:
                sock.sendall(b"POST /function/quick HTTP/1.1\r\nHost: x\r\nContent-Len")
            socks.append(sock)
        start = time.monotonic()
        resp = server.request("GET", "/admin/functions")
        assert resp.status == 200
        assert time.monotonic() - start < 1.0
    finally:
        for sock in socks:
            sock.close()


def test_pip_past_its_time_limit_is_422(tmp_path_factory, wheels) -> None:
    server = Server(tmp_path_factory.mktemp("srv"), wheels, ["--pip-timeout", "0.05"]).start()
    try:
        resp = server.upload("slowpip", "import greetlib\ndef main():\n    return 1\n", requirements="greetlib")
        assert resp.status == 422 and resp.json["error"]["code"] == "requirements_timeout"
        assert server.request("GET", "/admin/functions").json == []
    finally:
        server.stop()


def test_kill_loop_loses_no_answered_call(tmp_path_factory, wheels) -> None:
    """10 times: SIGKILL the server while 4 clients call and one uploads; restart; check everything."""
    server = Server(tmp_path_factory.mktemp("srv"), wheels, ["--log-retention", "0"]).start()
    assert server.upload("loop", "def main(i):\n    return i\n").status == 200
    answered: list[str] = []
    uploaded: set[str] = {"loop"}
    rng = random.Random(7)
    try:
        for round_no in range(10):
            stop = threading.Event()

            def caller() -> None:
                conn = server.connect(timeout=5)
                while not stop.is_set():
                    try:
                        resp = server.request("POST", "/function/loop", "[1]", conn=conn)
                    except Exception:  # the server was killed under us: this client is done
                        return
                    if resp.status == 200:
                        answered.append(resp.json["id"])

            def uploader() -> None:
                n = 0
                while not stop.is_set():
                    name = f"up{round_no}_{n}"
                    try:
                        if server.upload(name, f"def main():\n    return {n}\n").status == 200:
                            uploaded.add(name)
                    except Exception:
                        return
                    n += 1

            with ThreadPoolExecutor(5) as pool:
                clients = [pool.submit(caller) for _ in range(4)] + [pool.submit(uploader)]
                try:
                    time.sleep(rng.uniform(0.3, 0.8))
                    server.proc.send_signal(signal.SIGKILL)
                    server.proc.wait()
                finally:
                    stop.set()
                for c in clients:
                    c.result()  # an error past the expected disconnect fails the test here
            json.loads((server.root / "data" / "functions.json").read_text())
            server.start()
            names = set(server.request("GET", "/admin/functions").json)
            assert uploaded <= names
            for name in rng.sample(sorted(names), min(5, len(names))):
                assert server.call(name, [0] if name == "loop" else None).status == 200
        logged = {r["id"] for r in server.request("GET", "/admin/logs/loop").json}
        assert len(answered) > 100
        missing = set(answered) - logged
        assert not missing, (len(answered), len(logged), len(missing))
    finally:
        server.stop()


def test_busy_workers_die_with_a_sigkilled_server(tmp_path_factory, wheels) -> None:
    server = Server(tmp_path_factory.mktemp("srv"), wheels).start()
    assert server.upload("spin", "def main():\n    while True:\n        pass\n").status == 200
    def call_and_ignore_the_disconnect() -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            server.call("spin")

    threading.Thread(target=call_and_ignore_the_disconnect, daemon=True).start()
    time.sleep(0.5)
    workers = _alive_children(server)
    assert workers
    server.proc.kill()
    server.proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []


def test_a_429_is_logged_too(fresh_server_small_queue: Server) -> None:
    server = fresh_server_small_queue
    assert server.upload("narrow2", SLOW).status == 200
    accepted, rejected = _overfill(server, "narrow2")
    assert [r.status for r in accepted + rejected] == [200] * 3 + [429] * 3
    records = server.request("GET", "/admin/logs/narrow2").json
    assert len(records) == 2 + 6  # the two warm-up calls too
    assert sorted((r["status"], (r.get("error") or {}).get("type")) for r in records) \
        == [("error", "TooManyRequests")] * 3 + [("ok", None)] * 5


def test_a_client_that_resets_mid_body_is_not_a_server_bug(server: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /function/quick HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH.encode()
                 + b"\r\nContent-Length: 1000\r\n\r\n[1,")
    time.sleep(0.2)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST
    time.sleep(0.3)
    assert "bug while serving" not in server.log()
    assert server.request("GET", "/admin/functions").status == 200


def test_chunked_without_credentials_is_401_and_unknown_names_are_404(server: Server) -> None:
    raw = raw_exchange(server.port, b"POST /function/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"0\r\n\r\n", 2)
    assert raw.startswith(b"HTTP/1.1 401 ")
    assert server.request("DELETE", "/admin/functions/a.b").status == 404
    assert server.request("GET", "/admin/functions/a.b").status == 404


@pytest.mark.parametrize("head, status", [
    (b"POST /function/quick HTTP/1.1\r\nContent-Length: +1\r\n", 400),
    (b"POST /function/quick HTTP/1.1\r\nContent-Length: 0_1\r\n", 400),
    (b"POST /function/quick HTTP/1.1\r\nContent-Length: \xd9\xa1\r\n", 400),
    (b"POST /function/quick HTTP/1.1\r\nContent-Length: -1\r\n", 400),
    (b"POST /function/quick HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n", 400),
    (b"POST /function/quick HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n", 400),
    (b"GET /admin/functions HTTP/1.1\r\nHost: a\r\nHost: b\r\n", 400),
    (b"GET /admin/functions HTTP/1.1\r\nX: a\r\n folded\r\n", 400),
    (b"GET /admin/functions HTTP/1.1\r\nX: a\x00b\r\n", 400),
    (b"GET /admin/functions HTTP/1.1\r\nBad Name: a\r\n", 400),
    (b"GET /admin/functions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz", 400),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n", 414),
    (b"GET /admin/functions HTTP/1.1\r\n" + b"X: y\r\n" * 200, 431),
])
def test_broken_framing_is_a_4xx_and_closes_even_with_credentials(server: Server, head: bytes, status: int) -> None:
    request = head.replace(b"\r\n", b"\r\nAuthorization: " + AUTH.encode() + b"\r\n", 1)
    if not request.endswith(b"zz"):
        request += b"\r\n"
    answer = raw_exchange(server.port, request + b"[]GET /admin/functions HTTP/1.1\r\n\r\n", timeout=3)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert answer.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in answer  # nothing smuggled after it
    assert server.request("GET", "/admin/functions").status == 200


def test_a_body_shorter_than_announced_is_a_400_not_a_hang(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /function/quick HTTP/1.1\r\nAuthorization: " + AUTH.encode()
                     + b"\r\nContent-Length: 10\r\n\r\n[1]")
        sock.shutdown(socket.SHUT_WR)
        start = time.monotonic()
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
        assert time.monotonic() - start < 2


def test_two_authorization_headers_are_a_401(server: Server) -> None:
    answer = raw_exchange(server.port, b"GET /admin/functions HTTP/1.1\r\nAuthorization: " + AUTH.encode()
                          + b"\r\nAuthorization: " + AUTH.encode() + b"\r\n\r\n", timeout=2)
    assert answer.startswith(b"HTTP/1.1 401 ")


def test_a_function_that_forges_a_frame_kills_only_its_worker(server: Server) -> None:
    src = ("import os, struct, sys\n\ndef main(forge):\n    if forge:\n"
           "        fake = b'o' + struct.pack('!I', 2) + b'42' + b'\"args\":[],\"kwargs\":{}'\n"
           "        os.write(int(sys.argv[1]), struct.pack('!II', len(fake), 999) + fake)\n"
           "    return 'real'\n")
    assert server.upload("forger", src).status == 200
    resp = server.call("forger", [True])
    assert resp.status == 502
    for _ in range(3):  # the channel never runs one answer behind
        assert server.call("forger", [False]).json["result"] == "real"
    for line in next((server.root / "data" / "logs" / "forger").glob("*.jsonl")).read_bytes().splitlines():
        json.loads(line)


def test_a_capture_file_swapped_for_a_fifo_cannot_hang_the_server(server: Server) -> None:
    src = "import os, sys\n\ndef main():\n    os.unlink(sys.argv[4])\n    os.mkfifo(sys.argv[4])\n    os._exit(3)\n"
    assert server.upload("fifo", src).status == 200
    start = time.monotonic()
    assert server.call("fifo").status == 502
    assert time.monotonic() - start < 1.5  # not the 2 s timeout of this module's server
    assert server.request("GET", "/admin/functions").status == 200


def test_a_function_that_changes_its_arguments_is_logged_with_what_was_sent(server: Server) -> None:
    src = "def main(d):\n    d['s'] = {1}\n    d['self'] = d\n    return 'fine'\n"
    assert server.upload("mutator", src).status == 200
    resp = server.call("mutator", [{"a": 1}])
    assert resp.status == 200 and resp.json["result"] == "fine"
    assert server.request("GET", "/admin/logs/mutator?limit=1").json[0]["args"] == [{"a": 1}]


def test_large_non_ascii_arguments_fit_the_channel(server: Server) -> None:
    assert server.upload("measure", "def main(s):\n    return len(s)\n").status == 200
    body = json.dumps(["é" * (1024 * 1024)], ensure_ascii=False).encode()  # 2 MiB as UTF-8, 6 MiB escaped
    resp = server.request("POST", "/function/measure", body)
    assert resp.status == 200 and resp.json["result"] == 1024 * 1024


def test_an_exit_that_leaves_a_child_behind_is_a_502_at_once(server: Server) -> None:
    src = "import os, subprocess\n\ndef main():\n    subprocess.Popen(['sleep', '20'])\n    os._exit(4)\n"
    assert server.upload("orphaner", src).status == 200
    start = time.monotonic()
    assert server.call("orphaner").status == 502
    assert time.monotonic() - start < 1.5  # not the 2 s timeout of this module's server


def test_calls_queued_at_shutdown_get_an_answer(tmp_path_factory, wheels) -> None:
    server = Server(tmp_path_factory.mktemp("srv"), wheels, ["--max-workers", "1", "--grace", "0.5"]).start()
    assert server.upload("slow", "import time\ndef main():\n    time.sleep(3)\n").status == 200
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(server.call, "slow")
        time.sleep(0.3)
        queued = pool.submit(server.call, "slow")
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        statuses = {first.result(timeout=20).status, queued.result(timeout=20).status}
    assert statuses <= {502, 503} and 503 in statuses
    assert server.proc.wait(20) == 0
