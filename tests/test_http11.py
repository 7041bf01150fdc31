"""Tests for tinyfaas_std.http11: gunicorn corpus replay, hand-written traps, split-point feeding, fuzzing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyfaas_std.errors import FaasError
from tinyfaas_std.http11 import _diagnose  # the fast/slow path agreement is a property worth testing
from tinyfaas_std.http11 import (
    MAX_CONTENT_LENGTH_DIGITS, MAX_HEAD_BYTES, MAX_HEADER_LINE, MAX_HEADERS, MAX_LEADING_EMPTY_LINES,
    MAX_REQUEST_LINE, RequestHead, find_head_end, parse_head,
)

CORPORA = Path(os.environ.get("TINYFAAS_CORPORA") or Path(__file__).resolve().parents[2] / "shared" / "corpora")
GUNICORN = CORPORA / "gunicorn"

# Cases left out, with the reason; everything else in the manifest is replayed.
EXCLUDED = {
    **{f"valid/pp_0{i}": "PROXY protocol framing, not HTTP" for i in range(1, 6)},
    **{f"invalid/pp_0{i}": "PROXY protocol framing, not HTTP" for i in range(1, 4)},
    "invalid/019": "X-Forwarded-* scheme conflict: gunicorn proxy configuration, not HTTP syntax",
    "valid/024": "cfg raises gunicorn's limits; its 8204-byte header line is past MAX_HEADER_LINE",
    "valid/026": "cfg raises gunicorn's field limit; its 8204-byte header line is past MAX_HEADER_LINE",
    "valid/028": "strip_header_spaces accepts 'Name :'; gunicorn's default rejects it (invalid/020), so do we",
    "valid/031compat": "cfg permits and case-folds a lower-case method; methods must be upper case here",
    "valid/031compat2": "cfg permits a lower-case method; methods must be upper case here",
    "valid/compat_obs_fold": "cfg permits obs-fold; the default rejects it (invalid/obs_fold_01), so do we",
    "valid/compat_obs_fold_huge": "cfg permits obs-fold; the default rejects it (invalid/obs_fold_01), so do we",
    "valid/040": "gunicorn's default header_map drops names with '_'; we keep them, as valid/040_compat expects",
    "invalid/040": "header_map=refuse rejects '_' in names; '_' is a tchar and we keep such fields",
    "invalid/chunked_07": "header_map=refuse rejects '_' in names; '_' is a tchar and we keep such fields",
    "invalid/010": "cfg lowers the field size limit to 10 bytes; the request is valid under any sane limit",
    "invalid/011": "cfg lowers the field count limit to 2; the request has 3 fields",
    "invalid/012": "cfg lowers the field size limit to 98 bytes; the request is valid under any sane limit",
}
# Cases with cfg_overrides that are replayed because the override does not change our verdict.
CFG_KEPT = {
    "valid/040_compat": "header_map=dangerous keeps '_' names, which is our behaviour",
    "invalid/013": "obs-fold is rejected before the lowered size limit matters",
    "invalid/limit_header_default_01": "0 means gunicorn's default 8190; the 8190-byte field is past ours too",
}
# Heads that are valid and chunked: the server answers 501 and closes before reading the faulty chunked body.
CHUNKED_BODY_FAULTS = {
    "invalid/chunked_01", "invalid/chunked_09", "invalid/chunked_10", "invalid/chunked_11", "invalid/chunked_12",
    "invalid/chunked_13", "invalid/chunked_14", "invalid/rfc9110_trailer_forbidden_cl_01",
    "invalid/rfc9110_trailer_forbidden_host_01", "invalid/rfc9110_trailer_forbidden_te_01",
    "invalid/rfc9112_chunked_missing_final_crlf_01", "invalid/rfc9112_chunked_size_minus_sign_01",
    "invalid/rfc9112_chunked_size_plus_sign_01",
}
STATUS_BY_EXCEPTION = {"LimitRequestLine": 414, "LimitRequestHeaders": 431}
STATUS_OVERRIDES = {"invalid/013": 400}  # obs-fold is a syntax error here before it is a size problem


def _load_manifest() -> dict[str, Any]:
    path = GUNICORN / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


MANIFEST = _load_manifest()
needs_corpus = pytest.mark.skipif(
    not MANIFEST, reason=f"gunicorn corpus not found: looked for {GUNICORN / 'manifest.json'} (TINYFAAS_CORPORA)")
VALID = sorted(k for k in MANIFEST if k.startswith("valid/") and k not in EXCLUDED) or ["none"]
INVALID = sorted(k for k in MANIFEST if k.startswith("invalid/") and k not in EXCLUDED) or ["none"]


def _expected_headers(pairs: list[list[str]]) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        joined[key] = joined[key] + ("; " if key == "cookie" else ", ") + value if key in joined else value
    return joined


@needs_corpus
def test_every_configured_or_proxy_case_is_classified() -> None:
    assert set(EXCLUDED) | set(CFG_KEPT) | CHUNKED_BODY_FAULTS <= set(MANIFEST)
    for key, case in MANIFEST.items():
        if case["cfg_overrides"] or case.get("category") == "gunicorn-specific (forwarded/PROXY)":
            assert key in EXCLUDED or key in CFG_KEPT, key


@needs_corpus
@pytest.mark.parametrize("key", VALID)
def test_gunicorn_valid(key: str) -> None:
    case = MANIFEST[key]
    rest = (GUNICORN / case["raw"]).read_bytes()
    for done, want in enumerate(case["requests"], 1):
        end = find_head_end(rest)
        assert end > 0
        try:
            req = parse_head(rest[:end])
        except FaasError as exc:  # a coding before chunked: the server refuses it like any chunked request
            assert exc.status == 501 and "chunked" in _expected_headers(want["headers"])["transfer-encoding"]
            return
        assert (req.method, req.target, list(req.version)) == (want["method"], want["uri"]["raw"], want["version"])
        assert req.headers == _expected_headers(want["headers"])
        assert req.query == want["uri"]["query"]
        if req.method != "CONNECT":
            assert req.path == unquote_to_bytes(want["uri"]["path"].encode("latin-1")).decode()
        if req.chunked:
            return
        length = req.content_length or 0
        assert rest[end:end + length] == want["body"].encode("latin-1")
        rest = rest[end + length:]
        if not req.keep_alive:
            break
    assert done == len(case["requests"])


@needs_corpus
@pytest.mark.parametrize("key", INVALID)
def test_gunicorn_invalid(key: str) -> None:
    case = MANIFEST[key]
    raw = (GUNICORN / case["raw"]).read_bytes()
    end = find_head_end(raw)
    head = raw[:end] if end >= 0 else raw  # no end: the reader times out or hits MAX_HEAD_BYTES
    if key in CHUNKED_BODY_FAULTS:
        assert parse_head(head).chunked
        return
    with pytest.raises(FaasError) as info:
        parse_head(head)
    status = STATUS_OVERRIDES.get(key) or STATUS_BY_EXCEPTION.get(case["expect_exception"], 400)
    assert (info.value.status, info.value.close) == (status, True)


def _head(*fields: str, line: str = "POST /f HTTP/1.1") -> bytes:
    return "\r\n".join((line, *fields, "", "")).encode("latin-1")


def _fails(head: bytes, status: int, code: str | None = None) -> None:
    with pytest.raises(FaasError) as info:
        parse_head(head)
    assert info.value.status == status and info.value.close
    if code is not None:
        assert info.value.code == code


def test_typical_request() -> None:
    req = parse_head(_head("Host: a", "Content-Length: 7", "Expect: 100-Continue", "X-Y: \tv  w\t ",
                           line="POST /function/add%20one?x=1&y=%20 HTTP/1.1"))
    assert req == RequestHead("POST", "/function/add%20one?x=1&y=%20", "/function/add one", "x=1&y=%20", (1, 1),
                              {"host": "a", "content-length": "7", "expect": "100-Continue", "x-y": "v  w"},
                              7, False, True, True)


@pytest.mark.parametrize("value", [b"+1", b"-1", b"0_1", b"1 1", b"0x1", b"1e3", b"", b"1,1", b"5, 5", b"\xb2",
                                   "\u0661".encode(), b"1" * (MAX_CONTENT_LENGTH_DIGITS + 1)])
def test_content_length_traps(value: bytes) -> None:
    _fails(b"POST /f HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\n", 400, "bad_content_length")


def test_content_length_accepted_forms() -> None:
    assert parse_head(_head("Content-Length:  007 ")).content_length == 7
    assert parse_head(_head("Content-Length: " + "9" * MAX_CONTENT_LENGTH_DIGITS)).content_length == 10**18 - 1
    assert parse_head(_head(line="GET / HTTP/1.0")).content_length is None


@pytest.mark.parametrize(("fields", "code"), [
    (("Content-Length: 1", "content-length: 1"), "duplicate_header"),
    (("Host: a", "Host: a"), "duplicate_header"),
    (("Content-Type: a", "Content-Type: b"), "duplicate_header"),
    (("Authorization: a", "Authorization: b"), "duplicate_header"),
    (("Transfer-Encoding: chunked", "Content-Length: 5"), "bad_transfer_encoding"),
    (("Transfer-Encoding: chunked, gzip",), "bad_transfer_encoding"),
    (("Transfer-Encoding: chunked, chunked",), "bad_transfer_encoding"),
    (("Transfer-Encoding: gzip",), "bad_transfer_encoding"),
    (("Transfer-Encoding: chunked;q=1",), "bad_transfer_encoding"),
    (("Transfer-Encoding: ,chunked",), "bad_transfer_encoding"),
    (("X: a", " folded"), "obs_fold"),
    (("X: a", "\tfolded"), "obs_fold"),
    (("X\x00Y: a",), "bad_header"), (("X: a\x00b",), "bad_header"), (("X: a\x7fb",), "bad_header"),
    (("X : a",), "bad_header"), ((": a",), "bad_header"), (("NoColon",), "bad_header"),
    (("X: a\rb",), "bad_line_ending"), (("X\nY: a",), "bad_line_ending"), (("X: a\nY: b",), "bad_line_ending"),
])
def test_bad_fields(fields: tuple[str, ...], code: str) -> None:
    _fails(_head(*fields), 400, code)


@pytest.mark.parametrize(("line", "code"), [
    ("GET  / HTTP/1.1", "bad_request_line"), ("GET / HTTP/1.1 ", "bad_request_line"), ("GET /", "bad_request_line"),
    ("get / HTTP/1.1", "bad_method"), ("G\x00T / HTTP/1.1", "bad_method"), ("GET / http/1.1", "bad_version"),
    ("GET / HTTP/2.0", "bad_version"), ("GET / HTTP/1.2", "bad_version"), ("GET / HTTP/1.1\r", "bad_line_ending"),
    ("GET /\x01 HTTP/1.1", "bad_target"), ("GET /\x7f HTTP/1.1", "bad_target"), ("GET * HTTP/1.1", "bad_target"),
    ("GET a/b HTTP/1.1", "bad_target"), ("GET h:80 HTTP/1.1", "bad_target"), ("CONNECT / HTTP/1.1", "bad_target"),
    ("GET ftp://h/ HTTP/1.1", "bad_target"), ("GET http://]h/ HTTP/1.1", "bad_target"),
    ("GET /%zz HTTP/1.1", "bad_path"), ("GET /%ff HTTP/1.1", "bad_path"), ("GET /a%00 HTTP/1.1", "bad_path"),
])
def test_bad_request_lines(line: str, code: str) -> None:
    _fails(_head(line=line), 400, code)


@pytest.mark.parametrize(("line", "path", "query"), [
    ("GET http://u:p@[::1]:80/a%2Fb?q#f HTTP/1.1", "/a/b", "q"), ("GET HTTPS://h?q=1 HTTP/1.1", "/", "q=1"),
    ("OPTIONS * HTTP/1.1", "*", ""), ("CONNECT h:443 HTTP/1.1", "", ""), ("GET /a#b?c HTTP/1.1", "/a", ""),
    ("GET /\xc3\xa9%C3%A9 HTTP/1.1", "/\u00e9\u00e9", ""),
])
def test_target_forms(line: str, path: str, query: str) -> None:
    req = parse_head(_head(line=line))
    assert (req.path, req.query, req.target) == (path, query, line.split(" ")[1])


@pytest.mark.parametrize(("line", "fields", "keep_alive", "expect"), [
    ("GET / HTTP/1.1", (), True, False), ("GET / HTTP/1.1", ("Connection: foo, Close",), False, False),
    ("GET / HTTP/1.0", (), False, False), ("GET / HTTP/1.0", ("Connection: Keep-Alive",), True, False),
    ("GET / HTTP/1.0", ("Expect: 100-continue",), False, False), ("GET / HTTP/1.1", ("Expect: 100-x",), True, False),
    ("GET / HTTP/1.1", ("Transfer-Encoding: identity", "Content-Length: 2"), False, False),
])
def test_keep_alive_and_expect(line: str, fields: tuple[str, ...], keep_alive: bool, expect: bool) -> None:
    req = parse_head(_head(*fields, line=line))
    assert (req.keep_alive, req.expect_continue) == (keep_alive, expect)


def test_transfer_encoding() -> None:
    assert parse_head(_head("Transfer-Encoding: identity", "transfer-encoding: CHUNKED")).chunked
    assert parse_head(_head("Transfer-Encoding: identity", "Content-Length: 2")).content_length == 2
    _fails(_head("Transfer-Encoding: gzip, chunked"), 501, "unsupported_transfer_coding")
    _fails(_head("Transfer-Encoding: chunked", line="POST / HTTP/1.0"), 400, "bad_transfer_encoding")


def test_duplicates_are_joined() -> None:
    req = parse_head(_head("Accept: a", "X: 1", "accept: b", "Cookie: c=1", "cookie: d=2"))
    assert req.headers == {"accept": "a, b", "x": "1", "cookie": "c=1; d=2"}


def test_line_endings_and_leading_empty_lines() -> None:
    assert parse_head(b"\r\n" * MAX_LEADING_EMPTY_LINES + _head()).method == "POST"
    _fails(b"\r\n" * (MAX_LEADING_EMPTY_LINES + 1) + _head(), 400, "bad_request_line")
    _fails(b"GET / HTTP/1.1\nHost: a\n\n", 400, "bad_line_ending")
    _fails(b"\nGET / HTTP/1.1\r\n\r\n", 400, "bad_line_ending")
    _fails(_head()[:-2], 400, "incomplete_head")
    _fails(_head() + _head(), 400, "bad_header")


def test_limits_at_and_past_each_bound() -> None:
    at = "GET /" + "a" * (MAX_REQUEST_LINE - 2 - len("GET / HTTP/1.1")) + " HTTP/1.1"
    assert len(parse_head(_head(line=at)).target) == MAX_REQUEST_LINE - 2 - len("GET  HTTP/1.1")
    _fails(_head(line=at.replace("/", "/a", 1)), 414)
    field = "X: " + "v" * (MAX_HEADER_LINE - 2 - 3)
    assert len(parse_head(_head(field)).headers["x"]) == MAX_HEADER_LINE - 5
    _fails(_head(field + "v"), 431)
    fields = [f"X{i}: v" for i in range(MAX_HEADERS)]
    assert len(parse_head(_head(*fields)).headers) == MAX_HEADERS
    _fails(_head(*fields, "Y: v"), 431)
    big = ["X%d: %s" % (i, "v" * 8000) for i in range(8)]
    head = _head(*big, "Z: " + "v" * (MAX_HEAD_BYTES - len(_head(*big, "Z: "))))
    assert len(head) == MAX_HEAD_BYTES and len(parse_head(head).headers) == 9
    _fails(head[:-4] + b"v\r\n\r\n", 431)


SPLIT_CASES = [_head("Host: a") + b"body", b"\r\n\r\n" + _head(), b"GET / HTTP/1.1\nA: b\n\nrest",
               b"GET / HTTP/1.1\r\nA: b\n\r\n", b"\r\n" * 6 + b"x", b"GET / HTTP/1.1\r\nA: b\r\n"]


@pytest.mark.parametrize("buf", SPLIT_CASES)
def test_find_head_end_resumes_at_every_split(buf: bytes) -> None:
    whole = find_head_end(buf)
    for split in range(len(buf) + 1):
        first = find_head_end(buf[:split])
        assert first == whole if first >= 0 else find_head_end(buf, split) == whole
    seen, result = 0, -1
    for size in range(1, len(buf) + 1):  # byte at a time, resuming from the previous length
        result = find_head_end(buf[:size], seen)
        if result >= 0:
            break
        seen = size
    assert result == whole


def test_find_head_end_values() -> None:
    assert [find_head_end(b) for b in SPLIT_CASES] == [len(_head("Host: a")), 4 + len(_head()), 21, 23, 12, -1]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([b"", b"GET / HTTP/1.1\r\n", b"POST /a?b HTTP/1.0\r\nX: y\r\n"]))
def test_fuzz_only_faas_errors(noise: bytes, prefix: bytes) -> None:
    for head in (prefix + noise, prefix + noise + b"\r\n\r\n"):
        try:
            req = parse_head(head)
        except FaasError as exc:
            assert exc.status in (400, 414, 431, 501, 505) and exc.close and exc.code != "bad_request"
        else:
            assert req.method and all(key == key.lower() for key in req.headers)


_PIECES = ["GET", "get", "OPTIONS", "CONNECT", " ", "  ", "/", "/a%20", "%zz", "%C3%A9", "*", "http://h", "h:1",
           "?", "#", "HTTP/1.1", "HTTP/1.0", "HTTP/2", "\r\n", "\n", "\r", ":", " :", "X", "x-y", "\t", "\x00",
           "\x7f", "\xe9", "Content-Length: ", "Transfer-Encoding: ", "chunked", "identity", "gzip", "5", ",",
           "Host: ", "Connection: ", "close", "keep-alive", "Expect: ", "100-continue"]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["GET / HTTP/1.1\r\n", "OPTIONS * HTTP/1.0\r\n", ""]),
       st.lists(st.sampled_from(_PIECES), max_size=24))
def test_fast_path_and_diagnosis_agree(line: str, pieces: list[str]) -> None:
    """_HEAD accepts exactly what _diagnose finds no fault in, so every refusal gets a specific code."""
    text = line + "".join(pieces) + "\r\n\r\n"
    try:
        req = parse_head(text.encode("latin-1"))
    except FaasError as exc:
        assert exc.code != "bad_request" and exc.status in (400, 501)
    else:
        assert req.version in ((1, 0), (1, 1)) and req.target in text
        with pytest.raises(FaasError) as info:
            _diagnose(text)
        assert info.value.code == "bad_request"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), st.integers(min_value=0, max_value=130))
def test_fuzz_find_head_end(buf: bytes, split: int) -> None:
    whole = find_head_end(buf)
    assert whole == -1 or 0 < whole <= len(buf)
    first = find_head_end(buf[:split])
    assert first == whole if first >= 0 else find_head_end(buf, split) == whole
