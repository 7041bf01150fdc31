"""End-to-end tests of every endpoint and status code, against the real server over real sockets."""

from __future__ import annotations

import base64
import json
import socket
import time

import pytest

from harness import AUTH, Server, multipart_body, raw_exchange

ADD = "def main(a, b=0):\n    print('adding', a, b)\n    return a + b\n"


@pytest.fixture(scope="module", autouse=True)
def add_function(server: Server) -> None:
    assert server.upload("add", ADD).status == 200


def _error_code(resp) -> str:
    assert resp.headers["content-type"] == "application/json"
    return resp.json["error"]["code"]


# -- authentication ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [
    None, "Basic", "Basic !!!notbase64", "Basic " + base64.b64encode(b"nocolon").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), "Bearer abc",
    "Basic " + base64.b64encode(b"admin:wrong").decode(), "Basic " + base64.b64encode(b"root:1234").decode(),
])
def test_every_bad_credential_is_a_401_with_a_challenge(server: Server, header: str | None) -> None:
    for method, path in [("GET", "/admin/functions"), ("GET", "/no/such/path"), ("POST", "/function/add")]:
        resp = server.request(method, path, auth=header)
        assert resp.status == 401
        assert resp.headers["www-authenticate"] == 'Basic realm="Login Required"'
        assert resp.json["error"]["code"].startswith("auth_")


def test_failed_logins_are_logged_with_the_client_address(server: Server) -> None:
    server.request("GET", "/admin/functions", auth="Basic " + base64.b64encode(b"admin:nope").decode())
    time.sleep(0.2)
    assert "failed authentication from 127.0.0.1" in server.log()


# -- routing ---------------------------------------------------------------------------------------------------

def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(server: Server) -> None:
    assert _error_code(server.request("GET", "/nope")) == "path_not_found"
    resp = server.request("PUT", "/admin/functions/add")
    assert resp.status == 405
    assert set(resp.headers["allow"].split(", ")) == {"GET", "DELETE", "PATCH"}
    assert server.request("GET", "/function/add").status == 405


def test_keep_alive_serves_many_requests_on_one_connection(server: Server) -> None:
    conn = server.connect()
    try:
        for i in range(20):
            resp = server.request("POST", "/function/add", json.dumps([i, 1]), conn=conn)
            assert resp.status == 200 and resp.json["result"] == i + 1
            assert resp.raw.endswith(b"}\n")  # one line for curl; Content-Length counts the newline
        assert server.request("GET", "/admin/functions", conn=conn).json == ["add"]
    finally:
        conn.close()


# -- upload ---------------------------------------------------------------------------------------------------

def test_upload_answers_ready_and_lists_sorted(server: Server) -> None:
    resp = server.upload("zeta", "def main():\n    return 'z'\n")
    assert resp.status == 200
    body = resp.json
    assert body["name"] == "zeta" and body["status"] == "ready" and body["created"] is True
    assert body["requirements"] == [] and body["build_seconds"] >= 0
    assert server.upload("alpha_1", "def main():\n    return 'a'\n").status == 200
    names = server.request("GET", "/admin/functions").json
    assert names == sorted(names) and {"add", "zeta", "alpha_1"} <= set(names)
    assert server.call("zeta").json["result"] == "z"


@pytest.mark.parametrize("name", ["", "-lead", "a" * 65, "has space", "dot.dot", "../etc", "ü", "a/b"])
def test_bad_names_are_400(server: Server, name: str) -> None:
    resp = server.upload(name, ADD)
    assert resp.status == 400 and _error_code(resp) == "bad_name"


@pytest.mark.parametrize("source, line", [
    ("def main(:\n    pass\n", 1),
    ("x = 1\n\ndef main()\n    return 1\n", 3),
    ("def helper():\n    return 1\n", None),
    ("main = 42\n", None),
    ("import module_that_does_not_exist\ndef main():\n    pass\n", 1),
    ("def main():\n    pass\nraise RuntimeError('boom at import')\n", 3),
])
def test_rejected_code_is_422_with_line(server: Server, source: str, line: int | None) -> None:
    resp = server.upload("bad", source)
    assert resp.status == 422
    err = resp.json["error"]
    assert err["code"] == "function_rejected" and err["message"]
    if line is not None:
        assert err["line"] == line
    assert "bad" not in server.request("GET", "/admin/functions").json


def test_non_utf8_source_is_422(server: Server) -> None:
    resp = server.upload("latin", b"def main():\n    return '\xe9'\n")
    assert resp.status == 422 and "UTF-8" in resp.json["error"]["message"]


def test_missing_fields_are_400_and_non_multipart_is_415(server: Server) -> None:
    body, ctype = multipart_body({"name": "x"})
    resp = server.request("POST", "/admin/upload", body, {"Content-Type": ctype})
    assert resp.status == 400 and resp.json["error"]["fields"] == ["file"]
    body, ctype = multipart_body({"file": ("f.py", ADD.encode())})
    assert server.request("POST", "/admin/upload", body, {"Content-Type": ctype}).status == 400
    resp = server.request("POST", "/admin/upload", '{"name": "x"}', {"Content-Type": "application/json"})
    assert resp.status == 415
    resp = server.request("POST", "/admin/upload", b"--x\r\n", {"Content-Type": "multipart/form-data; boundary=y"})
    assert resp.status == 400 and _error_code(resp) == "bad_multipart"


def test_filename_is_never_used_as_a_path(server: Server) -> None:
    body, ctype = multipart_body({"name": "pathy", "file": ("../../../../tmp/evil.py", b"def main():\n  return 1\n")})
    assert server.request("POST", "/admin/upload", body, {"Content-Type": ctype}).status == 200
    assert (server.root / "functions" / "pathy" / "func.py").exists()
    assert not (server.root / "evil.py").exists()


def test_requirements_may_be_a_text_field(server: Server) -> None:
    body, ctype = multipart_body({"name": "textreq", "file": ("f.py", b"def main():\n  return 1\n"),
                                  "requirements": "# nothing needed\n\n"})
    resp = server.request("POST", "/admin/upload", body, {"Content-Type": ctype})
    assert resp.status == 200 and resp.json["requirements"] == []


def test_upload_without_content_length_is_411(server: Server) -> None:
    raw = raw_exchange(server.port, b"POST /admin/upload HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH.encode()
                       + b"\r\nContent-Type: multipart/form-data; boundary=x\r\n\r\n", timeout=2)
    assert raw.startswith(b"HTTP/1.1 411 ")


# -- invocation -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("payload, expected", [
    ([2, 3], 5), ({"args": [2], "kwargs": {"b": 7}}, 9), ({"args": [4]}, 4), ({"kwargs": {"a": 1, "b": 1}}, 2),
])
def test_invoke_shapes(server: Server, payload, expected) -> None:
    resp = server.call("add", payload)
    assert resp.status == 200
    body = resp.json
    assert body["result"] == expected and len(body["id"]) == 36 and body["duration"] >= 0


def test_empty_body_calls_main_without_arguments(server: Server) -> None:
    assert server.upload("noargs", "def main():\n    return {'ok': True}\n").status == 200
    assert server.request("POST", "/function/noargs").json["result"] == {"ok": True}


@pytest.mark.parametrize("body", [b"{", b"[1,", b"42", b'"s"', b'{"args": 1}', b'{"kwargs": []}',
                                  b'{"other": 1}', b"[NaN]", b"\xff\xfe", b"[" * 100 + b"]" * 100])
def test_bad_invocation_bodies_are_400(server: Server, body: bytes) -> None:
    resp = server.request("POST", "/function/add", body, {"Content-Type": "application/json"})
    assert resp.status == 400 and _error_code(resp) in {"bad_json", "bad_arguments"}


def test_function_exception_is_500_with_traceback_and_stdout_is_logged_not_returned(server: Server) -> None:
    src = "def main(x):\n    print('about to fail')\n    raise ValueError(f'bad {x}')\n"
    assert server.upload("fails", src).status == 200
    resp = server.call("fails", [7])
    assert resp.status == 500
    err = resp.json["error"]
    assert err["type"] == "ValueError" and err["message"] == "bad 7" and "ValueError" in err["traceback"]
    assert "about to fail" not in resp.raw.decode()
    record = server.request("GET", "/admin/logs/fails").json[-1]
    assert record["id"] == resp.json["id"] and record["status"] == "error"
    assert record["stdout"] == "about to fail\n" and record["error"]["type"] == "ValueError"


def test_unserialisable_result_is_a_function_error(server: Server) -> None:
    assert server.upload("setret", "def main():\n    return {1, 2}\n").status == 200
    resp = server.call("setret")
    assert resp.status == 500 and resp.json["error"]["type"] == "TypeError"
    assert server.upload("nanret", "def main():\n    return float('nan')\n").status == 200
    assert server.call("nanret").status == 500


def test_unknown_function_is_404(server: Server) -> None:
    assert _error_code(server.call("ghost", [1])) == "function_not_found"


def test_body_over_the_limit_is_413(server: Server) -> None:
    big = b"[" + b"1," * (3 * 1024 * 1024) + b"1]"  # > 6 MiB
    raw = raw_exchange(server.port, b"POST /function/add HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH.encode()
                       + b"\r\nContent-Length: %d\r\n\r\n" % len(big), timeout=3)
    assert raw.startswith(b"HTTP/1.1 413 ") and b"payload_too_large" in raw


# -- logs, detail, status, delete -----------------------------------------------------------------------------

def test_logs_record_every_field_and_limit_returns_the_newest(server: Server) -> None:
    assert server.upload("logged", "def main(i):\n    return i * 2\n").status == 200
    ids = [server.call("logged", [i]).json["id"] for i in range(5)]
    records = server.request("GET", "/admin/logs/logged").json
    assert [r["id"] for r in records] == ids
    first = records[0]
    assert set(first) >= {"id", "function", "start", "end", "duration", "status", "args", "kwargs", "result",
                          "stdout", "stderr"}
    assert first["function"] == "logged" and first["args"] == [0] and first["result"] == 0
    assert first["end"] >= first["start"] and first["status"] == "ok"
    newest = server.request("GET", "/admin/logs/logged?limit=2").json
    assert [r["id"] for r in newest] == ids[-2:]
    assert server.request("GET", "/admin/logs/logged?limit=zero").status == 400
    assert server.request("GET", "/admin/logs/ghost").status == 404


def test_function_detail(server: Server) -> None:
    assert server.upload("detailed", "def main():\n    return 1\n").status == 200
    server.call("detailed")
    info = server.request("GET", "/admin/functions/detailed").json
    assert info["name"] == "detailed" and info["invocations"] == 1 and info["errors"] == 0
    assert info["code_size"] == len("def main():\n    return 1\n") and len(info["code_sha256"]) == 64
    assert info["limits"]["timeout_seconds"] == 2 and info["created"] <= info["updated"]
    assert server.request("GET", "/admin/functions/ghost").status == 404


def test_status_has_psutil_figures_and_never_blocks(server: Server) -> None:
    t0 = time.monotonic()
    body = server.request("GET", "/admin/status").json
    assert time.monotonic() - t0 < 1.0  # a blocking cpu_percent(interval=1) would take >= 1 s
    assert {"cpu_millicores", "memory_mb", "threads", "uptime_seconds"} <= set(body["process"])
    assert {"count", "cpu_millicores", "memory_mb"} <= set(body["workers"])
    assert {"cpu_count", "cpu_millicores", "memory_total_mb", "memory_used_mb", "memory_available_mb"} \
        <= set(body["system"])
    assert isinstance(body["functions"], int) and body["functions"] >= 1
    assert body["process"]["memory_mb"] > 1 and body["system"]["memory_total_mb"] > 100


def test_delete_removes_code_venv_link_and_logs(server: Server) -> None:
    assert server.upload("doomed", "def main():\n    return 1\n").status == 200
    assert server.call("doomed").status == 200
    assert (server.root / "data" / "logs" / "doomed").exists()
    resp = server.request("DELETE", "/admin/functions/doomed")
    assert resp.status == 200 and resp.json == {"deleted": "doomed"}
    assert not (server.root / "functions" / "doomed").exists()
    assert not (server.root / "data" / "logs" / "doomed").exists()
    assert server.call("doomed").status == 404
    assert server.request("DELETE", "/admin/functions/doomed").status == 404
    assert "doomed" not in json.loads((server.root / "data" / "functions.json").read_text())["functions"]


# -- slow clients -------------------------------------------------------------------------------------------

def test_a_client_that_stalls_mid_head_gets_408(server: Server) -> None:
    start = time.monotonic()
    raw = raw_exchange(server.port, b"GET /admin/functions HTTP/1.1\r\nHost: x\r\n", timeout=10)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert 3 - 0.1 <= time.monotonic() - start < 3 + 2  # --client-timeout is 3 s in this module


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        start = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server, not by our timeout
        assert 3 - 0.1 <= time.monotonic() - start < 3 + 2  # --client-timeout is 3 s in this module
