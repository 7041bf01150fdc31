"""Calls that do not wait (SPEC 11), end to end: async calls of each convention, their order and durability across
a SIGKILL, cancelling, the queue bound, callbacks to a receiver of the test's own, and schedules."""

from __future__ import annotations

import http.server
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import AUTH, Response, Server, raw_exchange


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Records each callback; answers the statuses queued in `plan` first, then 200."""

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.got.append(  # type: ignore[attr-defined]
            {"path": self.path, "headers": headers, "body": body, "at": time.monotonic()})
        plan = self.server.plan  # type: ignore[attr-defined]
        status = plan.pop(0) if plan else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[http.server.HTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    httpd.got, httpd.plan = [], []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def refused_port() -> int:
    return _free_port()  # nothing listens there


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, wheels: Path, receiver: http.server.HTTPServer,
        refused_port: int) -> Iterator[Server]:
    allow = f"http://127.0.0.1:{receiver.server_address[1]},http://127.0.0.1:{refused_port}"
    server = Server(tmp_path_factory.mktemp("async"), wheels,
                    ["--timeout", "10", "--callback-allow", allow, "--max-async-queue", "5000"]).start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.stop()


def _submit(server: Server, name: str, payload: Any = None, path: str = "", method: str = "POST",
            headers: dict[str, str] | None = None, conn: Any = None) -> Response:
    body = b"" if payload is None else json.dumps(payload).encode()
    return server.request(method, f"/async-function/{name}{path}", body, headers, conn=conn)


def _wait_done(server: Server, call_id: str, seconds: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        resp = server.request("GET", f"/admin/calls/{call_id}")
        assert resp.status == 200, resp.raw
        if "status" not in resp.json or resp.json["status"] not in ("queued", "running"):
            return resp.json
        time.sleep(0.05)
    raise AssertionError(f"call {call_id} did not finish within {seconds} s")


def test_an_async_call_of_each_convention_is_queued_then_recorded(srv: Server) -> None:
    assert srv.upload("a_args", "import time\ndef main(a, b):\n    time.sleep(0.3)\n    return a + b\n").status == 200
    assert srv.upload("a_event", "def main(event):\n    return event['n'] * 2\n",
                      fields={"calling": "event"}).status == 200
    assert srv.upload("a_http", "def main(req):\n    return {'statusCode': 201, 'body': req['method'] + req['path']}\n",
                      fields={"calling": "http"}).status == 200
    resp = _submit(srv, "a_args", [2, 3])
    assert resp.status == 202 and resp.json == {"id": resp.headers["x-call-id"], "status": "queued"}
    early = srv.request("GET", f"/admin/calls/{resp.json['id']}").json
    assert early["status"] in ("queued", "running") and early["function"] == "a_args"
    record = _wait_done(srv, resp.json["id"])
    assert (record["trigger"], record["status"], record["result"], record["args"]) == ("async", "ok", 5, [2, 3])
    event = _wait_done(srv, _submit(srv, "a_event", {"n": 21}).json["id"])
    assert (event["trigger"], event["event"], event["result"]) == ("async", {"n": 21}, 42)
    web = _wait_done(srv, _submit(srv, "a_http", None, path="/x/y", method="PUT").json["id"])
    assert web["trigger"] == "async" and web["response"]["statusCode"] == 201 and web["response"]["body"] == "PUT/x/y"
    sync = srv.call("a_args", [1, 1])
    assert [r["trigger"] for r in srv.request("GET", "/admin/logs/a_args").json] == ["async", "http"]
    assert sync.status == 200


def test_async_requests_are_checked_before_the_202(srv: Server) -> None:
    assert _submit(srv, "no-such-function").status == 404
    assert srv.upload("a_checked", "def main(x=0):\n    return x\n").status == 200
    bad = srv.request("POST", "/async-function/a_checked", b"{not json")
    assert bad.status == 400 and bad.json["error"]["code"] == "bad_json"
    assert _submit(srv, "a_checked", method="GET").status == 405
    assert _submit(srv, "a_checked", path="/sub").status == 404
    unknown = srv.request("GET", "/admin/calls/00000000-0000-4000-8000-000000000000")
    assert unknown.status == 404 and unknown.json["error"]["code"] == "call_not_found"
    assert srv.request("GET", "/admin/calls/..%2f..%2fetc").status == 404


def test_a_thousand_async_calls_to_two_workers_all_run_in_order(srv: Server) -> None:
    assert srv.upload("a_order", "def main(i):\n    return i\n", fields={"max_workers": "2"}).status == 200
    conn = srv.connect()
    ids = [_submit(srv, "a_order", [i], conn=conn).json["id"] for i in range(1000)]
    conn.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = [r for r in srv.request("GET", "/admin/logs/a_order").json if r["trigger"] == "async"]
        if len(records) == 1000:
            break
        time.sleep(0.2)
    assert len(records) == 1000 and {r["id"] for r in records} == set(ids)
    by_start = sorted(records, key=lambda r: r["start"])
    assert [r["args"][0] for r in by_start] == list(range(1000))  # taken in arrival order
    assert all(r["status"] == "ok" for r in records)
    assert _wait_done(srv, ids[-1])["result"] == 999


def test_cancel_a_queued_call_but_not_a_running_one(srv: Server) -> None:
    assert srv.upload("a_slow", "import time\ndef main(i):\n    time.sleep(1)\n    return i\n",
                      fields={"max_workers": "1"}).status == 200
    ids = [_submit(srv, "a_slow", [i]).json["id"] for i in range(3)]
    time.sleep(0.3)
    cancelled = srv.request("DELETE", f"/admin/calls/{ids[2]}")
    assert cancelled.status == 200 and cancelled.json["status"] == "cancelled"
    running = srv.request("DELETE", f"/admin/calls/{ids[0]}")
    assert running.status == 409 and running.json["error"]["code"] == "already_running"
    assert srv.request("DELETE", f"/admin/calls/{ids[2]}").status == 404
    assert _wait_done(srv, ids[1])["result"] == 1
    assert srv.request("GET", f"/admin/calls/{ids[2]}").status == 404
    assert [r["args"] for r in srv.request("GET", "/admin/logs/a_slow").json] == [[0], [1]]


def test_past_the_queue_bound_is_429(tmp_path: Path, wheels: Path) -> None:
    server = Server(tmp_path, wheels, ["--max-async-queue", "3"]).start()
    try:
        assert server.upload("a_full", "import time\ndef main():\n    time.sleep(3)\n",
                             fields={"max_workers": "1"}).status == 200
        answers = [_submit(server, "a_full") for _ in range(8)]
        statuses = [a.status for a in answers]
        assert statuses.count(202) in (4, 5) and statuses.count(429) == 8 - statuses.count(202)
        refused = next(a for a in answers if a.status == 429)
        assert refused.json["error"]["code"] == "async_queue_full" and refused.headers["retry-after"] == "1"
    finally:
        server.stop()


def test_a_call_acknowledged_before_a_sigkill_ends_with_a_record(tmp_path: Path, wheels: Path) -> None:
    server = Server(tmp_path, wheels).start()
    assert server.upload("a_durable", "import time\ndef main(i):\n    time.sleep(0.05)\n    return i\n",
                         fields={"max_workers": "2"}).status == 200
    conn = server.connect()
    ids = [_submit(server, "a_durable", [i], conn=conn).json["id"] for i in range(200)]
    conn.close()
    time.sleep(0.3)  # some have run, two are running, most are queued
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    server.start()
    try:
        records = [_wait_done(server, call_id, seconds=30) for call_id in ids]
        assert [r["result"] for r in records] == list(range(200))
        assert all(r["trigger"] == "async" for r in records)
        assert not list((tmp_path / "data" / "async" / "queue").iterdir())
    finally:
        server.stop()


def test_a_callback_is_retried_after_a_500_and_carries_the_answer(srv: Server,
                                                                  receiver: http.server.HTTPServer) -> None:
    assert srv.upload("a_cb", "def main(x):\n    return {'x': x}\n").status == 200
    receiver.got.clear()  # type: ignore[attr-defined]
    receiver.plan[:] = [500]  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook?k=1"
    resp = _submit(srv, "a_cb", [7], headers={"X-Callback-Url": url})
    record = _wait_done(srv, resp.json["id"], seconds=20)
    assert record["callback"] == {"url": url, "status": 200, "tries": 2}
    got = receiver.got  # type: ignore[attr-defined]
    assert len(got) == 2 and 0.8 < got[1]["at"] - got[0]["at"] < 3  # 1 s apart
    last = got[1]
    assert last["path"] == "/hook?k=1" and json.loads(last["body"])["result"] == {"x": 7}
    headers = last["headers"]
    assert headers["x-call-id"] == resp.json["id"] and headers["x-function-name"] == "a_cb"
    assert headers["x-function-status"] == "200" and float(headers["x-duration-seconds"]) >= 0


def test_a_callback_to_a_refused_connection_is_tried_three_times(srv: Server, refused_port: int) -> None:
    assert srv.upload("a_cb2", "def main():\n    return 1\n").status == 200
    url = f"http://127.0.0.1:{refused_port}/"
    began = time.monotonic()
    record = _wait_done(srv, _submit(srv, "a_cb2", headers={"X-Callback-Url": url}).json["id"], seconds=20)
    assert record["callback"] == {"url": url, "status": None, "tries": 3}
    assert 4.5 < time.monotonic() - began < 9  # 1 s, then 4 s apart


def test_a_callback_origin_not_allowed_is_400_and_nothing_is_queued(srv: Server) -> None:
    assert srv.upload("a_cb3", "def main():\n    return 1\n").status == 200
    for url in ("http://10.0.0.1:80/x", "http://127.0.0.1:1/x", "file:///etc/passwd", "http://127.0.0.1"):
        resp = _submit(srv, "a_cb3", headers={"X-Callback-Url": url})
        assert resp.status == 400 and resp.json["error"]["code"] in ("callback_not_allowed", "bad_callback"), url
    time.sleep(0.2)
    assert srv.request("GET", "/admin/logs/a_cb3").json == []


def _runs(server: Server, name: str) -> list[dict[str, Any]]:
    return [r for r in server.request("GET", f"/admin/logs/{name}").json if r["trigger"] == "schedule"]


def test_every_second_runs_about_once_a_second_and_stops_when_removed(srv: Server) -> None:
    resp = srv.upload("s_tick", "def main():\n    return 1\n", fields={"schedule": "@every 1s"})
    assert resp.status == 200, resp.raw
    described = srv.request("GET", "/admin/functions/s_tick").json
    assert described["schedule"] == "@every 1s" and described["next_run"].endswith("Z")
    time.sleep(10)
    count = len(_runs(srv, "s_tick"))
    assert 8 <= count <= 11, count
    assert srv.request("PATCH", "/admin/functions/s_tick", b'{"schedule": null}').status == 200
    assert srv.request("GET", "/admin/functions/s_tick").json["next_run"] is None
    after = len(_runs(srv, "s_tick"))
    time.sleep(2.5)
    assert len(_runs(srv, "s_tick")) == after


def test_a_schedule_skips_runs_while_the_previous_one_goes_on(srv: Server) -> None:
    assert srv.upload("s_slow", "import time\ndef main():\n    time.sleep(2.5)\n",
                      fields={"schedule": "@every 1s", "max_workers": "4"}).status == 200
    time.sleep(6.5)
    runs = _runs(srv, "s_slow")
    assert 1 <= len(runs) <= 3, len(runs)  # without skipping, 6 would have started
    for first, second in zip(runs, runs[1:]):
        assert second["start"] >= first["end"] - 0.05  # never two at once
    assert srv.request("DELETE", "/admin/functions/s_slow").status == 200


def test_scheduled_event_and_http_calls_and_deletion(srv: Server) -> None:
    assert srv.upload("s_event", "def main(event):\n    return event\n",
                      fields={"calling": "event", "schedule": "@every 1s"}).status == 200
    assert srv.upload("s_http", "def main(req):\n    return req['headers'].get('x-tinyfaas-trigger', '-')\n",
                      fields={"calling": "http", "schedule": "@every 1s"}).status == 200
    time.sleep(2.5)
    event = _runs(srv, "s_event")[0]["result"]
    assert event["source"] == "schedule" and event["schedule"] == "@every 1s" and event["time"].endswith("Z")
    assert _runs(srv, "s_http")[0]["response"]["body"] == "schedule"
    assert srv.request("DELETE", "/admin/functions/s_event").status == 200
    time.sleep(1.5)
    assert srv.upload("s_event", "def main(event):\n    return event\n", fields={"calling": "event"}).status == 200
    time.sleep(2)
    assert _runs(srv, "s_event") == []  # the deleted function's schedule went with it


def test_a_bad_schedule_is_400_naming_the_field(srv: Server) -> None:
    resp = srv.upload("s_bad", "def main():\n    return 1\n", fields={"schedule": "61 * * * *"})
    assert resp.status == 400 and resp.json["error"]["code"] == "bad_schedule"
    assert "minute" in resp.json["error"]["message"]
    assert srv.request("GET", "/admin/functions/s_bad").status == 404
    assert srv.upload("s_ok", "def main():\n    return 1\n").status == 200
    patch = srv.request("PATCH", "/admin/functions/s_ok", b'{"schedule": "@every 0s"}')
    assert patch.status == 400 and patch.json["error"]["code"] == "bad_schedule"


def test_calls_waiting_when_the_function_changes_all_end_with_a_record(srv: Server) -> None:
    """A PATCH that makes a waiting http call impossible (its method or sub-path) records it as an error; a
    delete records the calls it drops. No call answered 202 is left without a record."""
    assert srv.upload("a_change", "import time\ndef main(req):\n    time.sleep(0.5)\n    return req['path']\n",
                      fields={"calling": "http", "max_workers": "1"}).status == 200
    ids = [_submit(srv, "a_change", path=f"/p{i}", method="GET").json["id"] for i in range(3)]
    time.sleep(0.1)
    assert srv.request("PATCH", "/admin/functions/a_change", b'{"calling": "args"}').status == 200
    records = [_wait_done(srv, call_id) for call_id in ids]
    assert records[0]["response"]["body"] == "/p0"  # it had started: the old version answered
    if records[1]["status"] == "ok":  # it was already waiting for a worker of the old version: that one answered
        assert records[1]["response"]["body"] == "/p1"
    assert records[2]["status"] == "error"  # still queued at the PATCH: an args function has no sub-paths
    assert all(r["error"]["type"] in ("NotFound", "MethodNotAllowed") for r in records if r["status"] == "error")
    assert srv.upload("a_gone", "import time\ndef main():\n    time.sleep(1)\n",
                      fields={"max_workers": "1"}).status == 200
    gone = [_submit(srv, "a_gone").json["id"] for _ in range(3)]
    time.sleep(0.2)
    assert srv.request("DELETE", "/admin/functions/a_gone").status == 200
    waiting, dropped = (_wait_done(srv, call_id) for call_id in gone[1:])
    assert waiting["status"] == "ok" or waiting["error"]["type"] == "Deleted"  # it may have had its worker
    assert dropped["status"] == "error" and dropped["error"]["type"] == "Deleted"


def test_async_calls_wait_for_a_worker_whatever_the_sync_queue_bound(tmp_path: Path, wheels: Path) -> None:
    server = Server(tmp_path, wheels, ["--max-queue", "0"]).start()
    try:
        assert server.upload("a_wait", "import time\ndef main(i):\n    time.sleep(0.3)\n    return i\n",
                             fields={"max_workers": "1"}).status == 200
        ids = [_submit(server, "a_wait", [i]).json["id"] for i in range(3)]
        assert [_wait_done(server, call_id)["result"] for call_id in ids] == [0, 1, 2]
        queued = list((tmp_path / "data" / "async" / "done").iterdir())
        assert len(queued) == 3
    finally:
        server.stop()


def test_what_a_queued_call_keeps_on_disk_holds_no_credentials(srv: Server) -> None:
    assert srv.upload("a_private", "import time\ndef main(req):\n    time.sleep(1)\n    return req['headers']\n",
                      fields={"calling": "http", "max_workers": "1"}).status == 200
    ids = [_submit(srv, "a_private", method="GET", headers={"Cookie": "s=1", "X-Keep": "yes"}).json["id"]
           for _ in range(2)]
    queue_dir = srv.root / "data" / "async" / "queue"
    held = b"".join(p.read_bytes() for p in queue_dir.iterdir())
    assert b"x-keep" in held and b"Basic " not in held and b"s=1" not in held
    headers = json.loads(_wait_done(srv, ids[1])["response"]["body"])
    assert "authorization" not in headers and "cookie" not in headers and headers["x-keep"] == "yes"


def test_a_callback_url_that_is_not_ascii_is_400(srv: Server, receiver: http.server.HTTPServer) -> None:
    assert srv.upload("a_cb4", "def main():\n    return 1\n").status == 200
    url = f"http://127.0.0.1:{receiver.server_address[1]}/h\u00e9"
    request = (f"POST /async-function/a_cb4 HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
               f"Content-Length: 0\r\nX-Callback-Url: {url}\r\n\r\n").encode("latin-1")
    answer = raw_exchange(srv.port, request, timeout=2)
    assert answer.startswith(b"HTTP/1.1 400") and b"bad_callback" in answer


def test_a_patch_that_keeps_the_schedule_does_not_postpone_it(srv: Server) -> None:
    assert srv.upload("s_keep", "def main():\n    return 1\n", fields={"schedule": "@every 2s"}).status == 200
    began = time.monotonic()
    marks = 0
    while time.monotonic() - began < 5:  # a PATCH each second: without care every one would restart the clock
        marks += 1
        assert srv.request("PATCH", "/admin/functions/s_keep", b'{"env": {"M": "%d"}}' % marks).status == 200
        time.sleep(1)
    assert 2 <= len(_runs(srv, "s_keep")) <= 3
    assert srv.request("DELETE", "/admin/functions/s_keep").status == 200
