"""Health and the access log (SPEC 12), on the real server."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
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
    conn = server.connect()  # a body sent anyway is read and dropped: the connection stays in step
    try:
        assert server.request("GET", "/healthz", b"x" * 1000, auth=None, conn=conn).json == {"status": "ok"}
        assert server.request("GET", "/healthz", auth=None, conn=conn).json == {"status": "ok"}
        assert server.request("GET", "/healthz", b"x" * (64 * 1024 + 1), auth=None, conn=conn).status == 413
    finally:
        conn.close()


def test_healthz_says_stopping_during_shutdown(tmp_path: Path, wheels: Path) -> None:
    server = Server(tmp_path, wheels, ["--grace", "5"]).start()
    try:
        assert server.upload("slow", "import time\ndef main():\n    time.sleep(2)\n    return 1\n").status == 200
        conn = server.connect()
        assert server.request("GET", "/healthz", auth=None, conn=conn).status == 200
        results: list[int] = []
        call = threading.Thread(target=lambda: results.append(server.call("slow").status))
        call.start()
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        resp = server.request("GET", "/healthz", auth=None, conn=conn)
        assert (resp.status, resp.json) == (503, {"status": "stopping"})
        # a load balancer's new connections are still answered while the call drains, not refused or reset
        assert server.request("GET", "/healthz", auth=None).json == {"status": "stopping"}
        refused = server.call("slow")
        assert (refused.status, refused.json["error"]["code"]) == (503, "shutting_down")
        upload = server.upload("late", "def main():\n    return 1\n")
        assert (upload.status, upload.json["error"]["code"]) == (503, "shutting_down")
        call.join()
        assert results == [200]
        assert server.proc.wait(10) == 0
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


def _metrics(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    resp = server.request("GET", "/metrics")
    assert resp.status == 200 and resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    if shutil.which("promtool"):
        done = subprocess.run(["promtool", "check", "metrics"], input=resp.raw, capture_output=True)
        assert done.returncode == 0, done.stderr + done.stdout
    samples = {}
    for family in text_string_to_metric_families(resp.raw.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_parse_and_move_by_exactly_the_calls_made(server: Server) -> None:
    assert server.upload("metered", "def main(x):\n    return 1 / x\n").status == 200
    server.call("metered", [1])
    before = _metrics(server)
    assert [server.call("metered", [x]).status for x in (1, 2, 3, 0)] == [200, 200, 200, 500]
    after = _metrics(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("tinyfaas_function_invocations_total", function="metered", status="ok") == 3
    assert delta("tinyfaas_function_invocations_total", function="metered", status="error") == 1
    assert delta("tinyfaas_function_duration_seconds_count", function="metered") == 4
    assert delta("tinyfaas_function_duration_seconds_bucket", function="metered", le="+Inf") == 4
    assert delta("tinyfaas_http_requests_total", code="200") == 4  # three calls and the first /metrics
    assert delta("tinyfaas_http_requests_total", code="500") == 1
    assert after[("tinyfaas_function_workers", (("function", "metered"),))] >= 1
    assert after[("tinyfaas_functions", ())] == len(server.request("GET", "/admin/functions").json)
    assert after[("process_resident_memory_bytes", ())] > 10e6 and after[("process_cpu_seconds_total", ())] > 0
