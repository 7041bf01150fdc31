"""Health and the access log (SPEC 12), on the real server."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

from harness import Server


def test_healthz_needs_no_credentials_and_nothing_else_does(server: Server) -> None:
    resp = server.request("GET", "/healthz", auth=None)
    assert (resp.status, resp.json) == (200, {"status": "ok"})
    head = server.request("HEAD", "/healthz", auth=None)
    assert head.status == 200 and head.raw == b""
    assert server.request("POST", "/healthz", auth=None).status == 401
    assert server.request("GET", "/healthz/", auth=None).status == 401
    assert server.request("GET", "/admin/status", auth=None).status == 401


def test_healthz_says_stopping_during_shutdown(tmp_path: Path, wheels: Path) -> None:
    server = Server(tmp_path, wheels, ["--grace", "5"]).start()
    try:
        assert server.upload("slow", "import time\ndef main():\n    time.sleep(2)\n    return 1\n").status == 200
        conn = server.connect()
        assert server.request("GET", "/healthz", auth=None, conn=conn).status == 200
        call = threading.Thread(target=server.call, args=("slow",))
        call.start()
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        resp = server.request("GET", "/healthz", auth=None, conn=conn)
        assert (resp.status, resp.json) == (503, {"status": "stopping"})
        call.join()
    finally:
        server.stop()


def test_the_access_log_has_a_line_per_request_only_when_asked(tmp_path: Path, wheels: Path) -> None:
    (tmp_path / "quiet").mkdir()
    (tmp_path / "loud").mkdir()
    quiet = Server(tmp_path / "quiet", wheels).start()
    try:
        assert quiet.upload("f", "def main():\n    return 'x'\n").status == 200
        quiet.call("f")
    finally:
        quiet.stop()
    assert " access " not in quiet.log()
    loud = Server(tmp_path / "loud", wheels, env={"TINYFAAS_ACCESS_LOG": "1"}).start()
    try:
        assert loud.upload("f", "def main():\n    return 'x'\n").status == 200
        resp = loud.call("f")
        loud.request("GET", "/nope?secret=1")
    finally:
        loud.stop()
    lines = [line for line in loud.log().splitlines() if " access " in line]
    call_id = resp.headers["x-call-id"]
    assert any(re.search(rf"access 127\.0\.0\.1 POST /function/f 200 {len(resp.raw) - 1} [0-9.]+ms {call_id}$", line)
               for line in lines), lines
    assert any(re.search(r"access 127\.0\.0\.1 GET /nope 404 \d+ [0-9.]+ms -$", line) for line in lines), lines
    assert not any("secret" in line for line in lines)  # the query string is not logged
