"""Calling conventions end to end (SPEC 10): `event` and `http` functions on the real server, over http.client and
raw sockets, and the `X-Call-Id` every answer of /function/... carries."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from harness import AUTH, Response, Server, raw_exchange

EVENT_ECHO = "def main(event):\n    return event\n"

EVENT_CONTEXT = """\
import time

def main(event, context):
    before = context.remaining_seconds()
    time.sleep(event["sleep"])
    after = context.remaining_seconds()
    return {"call_id": context.call_id, "function": context.function, "version": context.version,
            "deadline": context.deadline, "before": before, "after": after}
"""

HTTP_ECHO = """\
def main(request, context):
    return {"request": request, "call_id": context.call_id}
"""

# An http function whose answer is chosen by the sub-path it is called on.
HTTP_ANSWERS = """\
import base64, time

ANSWERS = {
    "/str": "h\\u00e9llo, world",
    "/bytes": bytes(range(256)) + b"\\xff\\xfe\\x00",
    "/none": None,
    "/list": [1, "two", None, {"three": 3.5}],
    "/dict": {"a": 1, "b": [True, None]},
    "/redirect": {"statusCode": 302, "headers": {"Location": "/x"}},
    "/jsonbody": {"statusCode": 201, "headers": {"X-Kind": "json"}, "body": {"k": [1, 2], "s": "\\u00e9"}},
    "/b64": {"statusCode": 200, "headers": {"Content-Type": "image/png"},
             "body": base64.b64encode(b"\\x89PNG\\r\\n\\x1a\\n\\x00\\xff").decode(), "isBase64Encoded": True},
    "/framing": {"statusCode": 200, "body": "abc",
                 "headers": {"Content-Length": "999", "Transfer-Encoding": "chunked", "Connection": "close",
                             "X-Call-Id": "forged", "X-Ok": "yes"}},
    "/bad-name": {"statusCode": 200, "headers": {"Bad Name": "x"}, "body": "no"},
    "/bad-value": {"statusCode": 200, "headers": {"X-Evil": "a\\r\\nInjected: yes"}, "body": "no"},
    "/status-99": {"statusCode": 99, "body": "no"},
    "/status-700": {"statusCode": 700, "body": "no"},
    "/status-str": {"statusCode": "200", "body": "no"},
    "/304": {"statusCode": 304, "headers": {"ETag": '"v1"'}, "body": "ignored"},
    "/205": {"statusCode": 205, "body": "ignored"},
}

def main(request):
    path = request["path"]
    if path == "/raise":
        raise ValueError("boom")
    if path == "/sleep":
        time.sleep(30)
    return ANSWERS[path]
"""

WEBHOOK = {"action": "opened", "number": 3,
           "pull_request": {"id": 991, "title": "Fix the parser", "draft": False, "merged_at": None,
                            "head": {"ref": "fix", "sha": "9f1c0e"}, "labels": [{"name": "bug"}],
                            "additions": 12.0, "body": "caf\u00e9 \u2603"}}


@pytest.fixture(scope="module")
def fns(server: Server) -> Server:
    """Each function of this module, uploaded once."""
    uploads = [("ev_echo", EVENT_ECHO, {"calling": "event"}),
               ("ev_ctx", EVENT_CONTEXT, {"calling": "event"}),
               ("http_echo", HTTP_ECHO, {"calling": "http"}),
               ("http_ans", HTTP_ANSWERS, {"calling": "http"}),
               ("http_slow", HTTP_ANSWERS, {"calling": "http", "timeout": "0.5"}),
               ("args_fn", "def main(x):\n    return 1 / x\n", None)]
    for name, source, fields in uploads:
        resp = server.upload(name, source, fields=fields)
        assert resp.status == 200, resp.raw
    return server


def _records(server: Server, name: str) -> list[dict[str, Any]]:
    resp = server.request("GET", f"/admin/logs/{name}")
    assert resp.status == 200, resp.raw
    return resp.json


def _record(server: Server, name: str, call_id: str) -> dict[str, Any]:
    matching = [r for r in _records(server, name) if r["id"] == call_id]
    assert len(matching) == 1, call_id
    return matching[0]


def _post_raw(server: Server, name: str, body: bytes) -> Response:
    return server.request("POST", f"/function/{name}", body, {"Content-Type": "application/json"})


def _get(server: Server, path: str, method: str = "GET", **kw: Any) -> Response:
    return server.request(method, f"/function/http_ans{path}", **kw)


def _assert_function_error(resp: Response, status: int = 500, code: str = "function_error") -> dict[str, Any]:
    assert resp.status == status, resp.raw
    assert resp.headers["content-type"] == "application/json"
    doc = resp.json
    assert set(doc) == {"id", "error", "duration"}
    assert doc["error"]["code"] == code
    assert resp.headers["x-call-id"] == doc["id"]
    return doc["error"]


def _request_bytes(method: str, path: str, close: bool = False, extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {AUTH}\r\n{extra}"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def _parse_head(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, fields, what follows the head) of the response at the start of `data`."""
    end = data.index(b"\r\n\r\n")
    lines = data[:end].decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), lines[0]
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, value = line.split(":", 1)
        assert name.lower() not in fields, f"{name} sent twice"
        fields[name.lower()] = value.strip()
    return int(lines[0].split()[1]), fields, data[end + 4:]


def _head_then_get(server: Server, path: str) -> tuple[tuple[int, dict[str, str]], tuple[int, dict[str, str], bytes]]:
    """HEAD and GET of `path` pipelined on one connection: the GET's answer must start right after the HEAD's
    head, so a HEAD answer with body bytes shows up as a GET answer that does not parse."""
    data = raw_exchange(server.port, _request_bytes("HEAD", path) + _request_bytes("GET", path, close=True))
    head_status, head_fields, rest = _parse_head(data)
    assert rest.startswith(b"HTTP/1.1 "), rest[:80]
    get_status, get_fields, body = _parse_head(rest)
    assert len(body) == int(get_fields["content-length"])
    return (head_status, head_fields), (get_status, get_fields, body)


# -- event ------------------------------------------------------------------------------------------------------

def test_an_event_function_gets_a_webhook_object_whole(fns: Server) -> None:
    resp = fns.call("ev_echo", WEBHOOK)
    assert resp.status == 200, resp.raw
    assert resp.json["result"] == WEBHOOK
    assert resp.headers["x-call-id"] == resp.json["id"]
    # an object that looks like an invocation is still just an event
    invocation_like = {"args": [1, 2], "kwargs": {"x": 1}}
    assert fns.call("ev_echo", invocation_like).json["result"] == invocation_like


def test_an_empty_event_body_is_none(fns: Server) -> None:
    for body in (b"", b"  \r\n"):
        resp = _post_raw(fns, "ev_echo", body)
        assert resp.status == 200 and resp.json["result"] is None, resp.raw


def test_any_json_value_is_an_event(fns: Server) -> None:
    values: list[Any] = ["a string", 42, -1.5, [1, "two", None], True, {}, []]
    for value in values:
        resp = fns.call("ev_echo", value)
        assert resp.status == 200, resp.raw
        assert resp.json["result"] == value and type(resp.json["result"]) is type(value)
    assert _post_raw(fns, "ev_echo", b"null").json["result"] is None


def test_bad_json_to_an_event_function_is_400_bad_json(fns: Server) -> None:
    for body in (b'{"action": "opened"', b"nope", b"\xff\xfe"):
        resp = _post_raw(fns, "ev_echo", body)
        assert resp.status == 400, (body, resp.raw)
        assert resp.json["error"]["code"] == "bad_json"


def test_event_context_has_the_calls_id_function_version_and_deadline(fns: Server) -> None:
    before = time.time()
    resp = fns.call("ev_ctx", {"sleep": 0})
    after = time.time()
    assert resp.status == 200, resp.raw
    ctx = resp.json["result"]
    assert ctx["call_id"] == resp.json["id"] == resp.headers["x-call-id"]
    assert ctx["function"] == "ev_ctx" and ctx["version"] == "1"
    assert before + 2 - 0.25 <= ctx["deadline"] <= after + 2 + 0.25  # the module server's --timeout is 2 s
    assert 1.0 < ctx["before"] <= 2.0


def test_remaining_seconds_falls_as_a_call_runs(fns: Server) -> None:
    resp = fns.call("ev_ctx", {"sleep": 0.5})
    assert resp.status == 200, resp.raw
    ctx = resp.json["result"]
    assert 0.45 <= ctx["before"] - ctx["after"] <= 0.8, ctx
    assert ctx["after"] > 0


def test_an_event_record_holds_the_event_and_the_result(fns: Server) -> None:
    resp = fns.call("ev_echo", WEBHOOK)
    record = _record(fns, "ev_echo", resp.json["id"])
    assert record["status"] == "ok"
    assert record["event"] == WEBHOOK and record["result"] == WEBHOOK
    assert "args" not in record and "kwargs" not in record and "request" not in record


def test_an_event_function_answers_only_post_on_its_own_path(fns: Server) -> None:
    resp = fns.request("GET", "/function/ev_echo")
    assert resp.status == 405 and resp.headers["allow"] == "POST"
    assert resp.json["error"]["code"] == "method_not_allowed"
    assert resp.headers["x-call-id"]  # an answer of an existing function: it has an id too
    resp = fns.request("POST", "/function/ev_echo/sub/path", b"{}", {"Content-Type": "application/json"})
    assert resp.status == 404 and resp.json["error"]["code"] == "path_not_found"


# -- http: the request a function gets --------------------------------------------------------------------------

def _echo(server: Server, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> dict[str, Any]:
    resp = server.request(method, path, body, headers)
    assert resp.status == 200, resp.raw
    assert resp.headers["content-type"] == "application/json"
    doc = resp.json
    assert doc["call_id"] == resp.headers["x-call-id"]
    return doc["request"]


def test_an_http_function_answers_every_method(fns: Server) -> None:
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        body = f"payload of {method}".encode()
        request = _echo(fns, method, "/function/http_echo/m", body, {"Content-Type": "text/plain"})
        assert request["method"] == method
        assert request["path"] == "/m"
        assert request["body"] == body.decode() and request["isBase64Encoded"] is False
        assert request["headers"]["content-type"] == "text/plain"
        assert request["headers"]["content-length"] == str(len(body))
    resp = fns.request("HEAD", "/function/http_echo/m")
    assert resp.status == 200 and resp.raw == b""
    assert resp.headers["content-type"] == "application/json" and int(resp.headers["content-length"]) > 0
    assert resp.headers["x-call-id"]
    record = _record(fns, "http_echo", resp.headers["x-call-id"])
    assert record["request"]["method"] == "HEAD" and record["request"]["path"] == "/m"


def test_the_sub_path_is_the_functions_path(fns: Server) -> None:
    assert _echo(fns, "GET", "/function/http_echo/a/b")["path"] == "/a/b"
    assert _echo(fns, "GET", "/function/http_echo")["path"] == "/"
    assert _echo(fns, "GET", "/function/http_echo/")["path"] == "/"
    assert _echo(fns, "POST", "/function/http_echo/deep/er/path.json", b"")["path"] == "/deep/er/path.json"


def test_query_params_keep_the_last_repeat_and_blank_values(fns: Server) -> None:
    request = _echo(fns, "GET", "/function/http_echo/q?a=1&a=2&b=")
    assert request["query"] == "a=1&a=2&b="
    assert request["params"] == {"a": "2", "b": ""}
    assert request["path"] == "/q"
    request = _echo(fns, "GET", "/function/http_echo")
    assert request["query"] == "" and request["params"] == {}
    request = _echo(fns, "GET", "/function/http_echo?x=caf%C3%A9&y=a+b")
    assert request["query"] == "x=caf%C3%A9&y=a+b" and request["params"] == {"x": "caf\u00e9", "y": "a b"}


def test_repeated_request_headers_are_joined_and_names_are_lower_case(fns: Server) -> None:
    conn = fns.connect()
    try:
        conn.putrequest("GET", "/function/http_echo/h", skip_accept_encoding=True)
        conn.putheader("Authorization", AUTH)
        conn.putheader("X-Thing", "one")
        conn.putheader("X-Thing", "two")
        conn.putheader("X-Mixed-CASE", "Value Kept")
        conn.endheaders()
        resp = conn.getresponse()
        doc = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200
    headers = doc["request"]["headers"]
    assert headers["x-thing"] == "one, two"
    assert headers["x-mixed-case"] == "Value Kept"
    assert all(name == name.lower() for name in headers), headers
    assert "authorization" not in headers


def test_authorization_never_reaches_the_function_nor_its_record(fns: Server) -> None:
    resp = fns.request("POST", "/function/http_echo/secret", b"x", {"X-Other": "kept"})
    assert resp.status == 200, resp.raw
    headers = resp.json["request"]["headers"]
    assert "authorization" not in headers and headers["x-other"] == "kept"
    assert AUTH.split()[1] not in resp.raw.decode()
    record = _record(fns, "http_echo", resp.headers["x-call-id"])
    assert "authorization" not in record["request"]["headers"] and record["request"]["headers"]["x-other"] == "kept"
    raw_log = fns.request("GET", "/admin/logs/http_echo").raw.decode()
    assert AUTH.split()[1] not in raw_log


def test_a_binary_body_arrives_base64_and_a_text_body_as_text(fns: Server) -> None:
    data = b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x80"
    request = _echo(fns, "POST", "/function/http_echo/up", data, {"Content-Type": "image/png"})
    assert request["isBase64Encoded"] is True
    assert base64.b64decode(request["body"]) == data
    request = _echo(fns, "POST", "/function/http_echo/up", "caf\u00e9 \u2603".encode(), {"Content-Type": "text/plain"})
    assert request["isBase64Encoded"] is False and request["body"] == "caf\u00e9 \u2603"
    request = _echo(fns, "GET", "/function/http_echo/up")
    assert request["body"] == "" and request["isBase64Encoded"] is False


# -- http: the answer a function gives --------------------------------------------------------------------------

def test_a_str_answer_is_utf8_text_byte_exact(fns: Server) -> None:
    resp = _get(fns, "/str")
    assert resp.status == 200
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    assert resp.raw == "h\u00e9llo, world".encode()  # no newline added
    assert resp.headers["content-length"] == str(len(resp.raw))


def test_a_bytes_answer_is_octet_stream_byte_exact(fns: Server) -> None:
    resp = _get(fns, "/bytes")
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/octet-stream"
    assert resp.raw == bytes(range(256)) + b"\xff\xfe\x00"


def test_a_none_answer_is_204_without_a_body(fns: Server) -> None:
    resp = _get(fns, "/none")
    assert resp.status == 204 and resp.raw == b""
    assert "content-type" not in resp.headers and "transfer-encoding" not in resp.headers
    assert "content-length" not in resp.headers  # RFC 9110 8.6: never on a 204
    assert resp.headers["x-call-id"]
    # the connection stays usable: the 204 had no body to read past
    data = raw_exchange(fns.port, _request_bytes("GET", "/function/http_ans/none")
                        + _request_bytes("GET", "/function/http_ans/str", close=True))
    status, _, rest = _parse_head(data)
    assert status == 204 and rest.startswith(b"HTTP/1.1 200 ")


def test_a_json_value_answer_is_application_json(fns: Server) -> None:
    for path, value in (("/list", [1, "two", None, {"three": 3.5}]), ("/dict", {"a": 1, "b": [True, None]})):
        resp = _get(fns, path)
        assert resp.status == 200
        assert resp.headers["content-type"] == "application/json"
        assert resp.json == value
        assert resp.headers["content-length"] == str(len(resp.raw))


def test_a_status_code_dict_sets_status_and_headers(fns: Server) -> None:
    resp = _get(fns, "/redirect")
    assert resp.status == 302
    assert resp.headers["location"] == "/x"
    assert resp.raw == b"" and resp.headers["content-length"] == "0"
    assert resp.headers["x-call-id"]


def test_a_json_body_in_a_status_code_dict_is_sent_as_json(fns: Server) -> None:
    resp = _get(fns, "/jsonbody")
    assert resp.status == 201
    assert resp.headers["content-type"] == "application/json" and resp.headers["x-kind"] == "json"
    assert resp.json == {"k": [1, 2], "s": "\u00e9"}


def test_an_is_base64_encoded_answer_is_decoded(fns: Server) -> None:
    resp = _get(fns, "/b64")
    assert resp.status == 200
    assert resp.headers["content-type"] == "image/png"
    assert resp.raw == b"\x89PNG\r\n\x1a\n\x00\xff"


def test_framing_headers_and_the_call_id_are_the_servers(fns: Server) -> None:
    conn = fns.connect()
    try:
        for _ in range(2):  # the function's "Connection: close" does not close the connection
            conn.request("GET", "/function/http_ans/framing", headers={"Authorization": AUTH})
            resp = conn.getresponse()
            body = resp.read()
            pairs = [(k.lower(), v) for k, v in resp.getheaders()]
            assert resp.status == 200 and body == b"abc"
            names = [k for k, _ in pairs]
            assert dict(pairs)["content-length"] == "3" and names.count("content-length") == 1
            assert "transfer-encoding" not in names and "connection" not in names
            assert dict(pairs)["x-ok"] == "yes"
            ids = [v for k, v in pairs if k == "x-call-id"]
            assert len(ids) == 1 and ids[0] != "forged"
            assert not resp.will_close
    finally:
        conn.close()


def test_head_is_gets_head_without_body_bytes(fns: Server) -> None:
    for path in ("/function/http_ans/str", "/function/http_ans/bytes", "/function/http_ans/dict",
                 "/function/http_ans/redirect"):
        (head_status, head_fields), (get_status, get_fields, body) = _head_then_get(fns, path)
        assert head_status == get_status
        assert head_fields["content-length"] == get_fields["content-length"] == str(len(body))
        ignore = {"x-call-id", "connection"}
        assert {k: v for k, v in head_fields.items() if k not in ignore} == \
            {k: v for k, v in get_fields.items() if k not in ignore}
        assert head_fields["x-call-id"] != get_fields["x-call-id"]


def test_head_of_a_failing_function_is_a_bodiless_error(fns: Server) -> None:
    (head_status, head_fields), (get_status, _, body) = _head_then_get(fns, "/function/http_ans/raise")
    assert head_status == get_status == 500
    assert head_fields["content-type"] == "application/json" and int(head_fields["content-length"]) > 0
    assert head_fields["x-call-id"]
    assert json.loads(body)["error"]["code"] == "function_error"


# -- http: errors -----------------------------------------------------------------------------------------------

def test_a_raising_http_function_gets_the_json_500(fns: Server) -> None:
    error = _assert_function_error(_get(fns, "/raise"))
    assert error["type"] == "ValueError" and error["message"] == "boom"
    assert "raise ValueError" in error["traceback"]


def test_a_timed_out_http_function_gets_504_with_a_call_id(fns: Server) -> None:
    start = time.monotonic()
    resp = fns.request("GET", "/function/http_slow/sleep")  # its own timeout is 0.5 s
    assert time.monotonic() - start < 3
    error = _assert_function_error(resp, 504, "function_timeout")
    assert error["type"] == "Timeout"
    record = _record(fns, "http_slow", resp.json["id"])
    assert record["status"] == "timeout" and record["request"]["path"] == "/sleep"
    assert fns.request("GET", "/function/http_slow/str").raw == "h\u00e9llo, world".encode()


def test_bad_headers_from_the_function_are_its_500_not_a_broken_answer(fns: Server) -> None:
    for path in ("/bad-name", "/bad-value"):
        resp = _get(fns, path)
        error = _assert_function_error(resp)
        assert error["type"] == "ValueError"
        assert "injected" not in resp.headers and "bad name" not in resp.headers


def test_a_status_code_out_of_range_or_not_an_int_is_a_500(fns: Server) -> None:
    for path in ("/status-99", "/status-700", "/status-str"):
        resp = _get(fns, path)
        _assert_function_error(resp)
        assert resp.raw != b"no"


# -- http: records ----------------------------------------------------------------------------------------------

def test_an_http_record_holds_the_request_and_the_response(fns: Server) -> None:
    resp = fns.request("PUT", "/function/http_ans/redirect?a=1&a=2", b"hello", {"X-Thing": "t"})
    assert resp.status == 302
    record = _record(fns, "http_ans", resp.headers["x-call-id"])
    assert record["status"] == "ok"
    request = record["request"]
    assert {k: request[k] for k in ("method", "path", "query", "params", "body", "isBase64Encoded")} == \
        {"method": "PUT", "path": "/redirect", "query": "a=1&a=2", "params": {"a": "2"}, "body": "hello",
         "isBase64Encoded": False}
    assert request["headers"]["x-thing"] == "t" and "authorization" not in request["headers"]
    assert record["response"]["statusCode"] == 302
    assert record["response"]["headers"] == {"Location": "/x"}
    assert record["response"]["body"] == ""
    assert "result" not in record and "args" not in record and "kwargs" not in record and "event" not in record

    resp = _get(fns, "/str")
    response = _record(fns, "http_ans", resp.headers["x-call-id"])["response"]
    assert response == {"statusCode": 200, "headers": {"Content-Type": "text/plain; charset=utf-8"},
                        "body": "h\u00e9llo, world", "isBase64Encoded": False}


def test_a_large_request_body_is_capped_in_the_record_but_whole_for_the_function(fns: Server) -> None:
    body = bytes(range(32, 127)) * (100 * 1024 // 95 + 1)
    resp = fns.request("POST", "/function/http_echo/big", body, {"Content-Type": "text/plain"})
    assert resp.status == 200
    assert resp.json["request"]["body"] == body.decode()
    record = _record(fns, "http_echo", resp.headers["x-call-id"])
    assert record["request"]["body"] is None and record["request"]["body_truncated"] is True
    assert record["request"]["path"] == "/big"


# -- X-Call-Id on the args convention ---------------------------------------------------------------------------

def test_args_answers_carry_x_call_id_equal_to_their_id(fns: Server) -> None:
    ok = fns.call("args_fn", [4])
    assert ok.status == 200 and ok.json["result"] == 0.25
    assert ok.headers["x-call-id"] == ok.json["id"]
    error = _assert_function_error(fns.call("args_fn", [0]))
    assert error["type"] == "ZeroDivisionError"
    ids = [fns.call("args_fn", [1]).headers["x-call-id"] for _ in range(3)]
    assert len(set(ids)) == 3


@pytest.mark.parametrize("path, length", [("/304", None), ("/205", "0")])
def test_answers_without_content_carry_no_body_and_keep_the_connection_in_step(fns: Server, path: str,
                                                                                length: str | None) -> None:
    """RFC 9110: a 205 has no content (Content-Length 0); a 304's length would have to be the 200's, so none."""
    request = (f"GET /function/http_ans{path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n\r\n"
               f"GET /function/http_ans/str HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n\r\n").encode()
    raw = raw_exchange(fns.port, request, timeout=2)
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert first.split(b"\r\n")[0].split(b" ")[1] == path[1:].encode()
    fields = dict(line.split(b": ", 1) for line in first.split(b"\r\n")[1:])
    assert fields.get(b"Content-Length") == (length.encode() if length else None)
    assert rest.startswith(b"HTTP/1.1 200 OK")  # the next answer follows at once: no body bytes in between


def test_a_worker_that_writes_a_short_http_answer_itself_is_a_recorded_502(fns: Server) -> None:
    src = ("import os, struct, sys, time\ndef main(request):\n    f = sys._getframe()\n"
           "    while 'seq' not in f.f_locals:\n        f = f.f_back\n"
           "    os.write(3, struct.pack('!II', 13, f.f_locals['seq']) + b'h' + struct.pack('!I', 2) + b'ab'"
           " + b',\"x\":1')\n"
           "    time.sleep(5)\n")
    assert fns.upload("http_forger", src, fields={"calling": "http"}).status == 200
    resp = fns.request("GET", "/function/http_forger")
    assert resp.status == 502 and resp.json["error"]["code"] == "function_crashed"
    assert _record(fns, "http_forger", resp.headers["x-call-id"])["status"] == "crashed"
