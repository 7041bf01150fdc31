"""Tests for tinyfaas_std.http11: gunicorn corpus replay, hand-written traps, split-point feeding, fuzzing."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyfaas_std.errors import FaasError
from tinyfaas_std.http11 import _diagnose  # the fast/slow path agreement is a property worth testing
from tinyfaas_std.http11 import (
    MAX_CHUNK_LINE, MAX_CHUNK_SIZE_DIGITS, MAX_CONTENT_LENGTH_DIGITS, MAX_HEAD_BYTES, MAX_HEADER_LINE, MAX_HEADERS,
    MAX_LEADING_EMPTY_LINES, MAX_REQUEST_LINE, MAX_TRAILER_BYTES, ChunkedDecoder, RequestHead, find_head_end,
    parse_head,
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
# Invalid requests whose head is valid and chunked: the fault is in the body, so ChunkedDecoder must find it.
CHUNKED_BODY_REJECTED = {  # the decoder raises a 4xx
    "invalid/chunked_01", "invalid/chunked_09", "invalid/chunked_10", "invalid/chunked_11", "invalid/chunked_12",
    "invalid/chunked_13", "invalid/chunked_14", "invalid/rfc9110_trailer_forbidden_cl_01",
    "invalid/rfc9110_trailer_forbidden_host_01", "invalid/rfc9110_trailer_forbidden_te_01",
    "invalid/rfc9112_chunked_size_minus_sign_01", "invalid/rfc9112_chunked_size_plus_sign_01",
}
CHUNKED_BODY_INCOMPLETE = {  # the body never ends: the server's read times out and it closes the connection
    "invalid/rfc9112_chunked_missing_final_crlf_01",
}
CHUNKED_BODY_FAULTS = CHUNKED_BODY_REJECTED | CHUNKED_BODY_INCOMPLETE
LARGE = 1 << 30  # a max_body that no corpus body reaches
VALID_CHUNKED = {  # valid requests whose body ChunkedDecoder decodes
    "valid/010", "valid/011", "valid/012", "valid/013", "valid/023", "valid/029", "valid/030",
    "valid/rfc9112_chunked_ext_quoted_01", "valid/rfc9112_chunked_size_leading_zeros_01",
    "valid/rfc9112_chunked_size_uppercase_hex_01", "valid/rfc9112_smuggle_te_identity_chunked_01",
}
VALID_UNSUPPORTED_CODING = {  # gzip before chunked: 501, as we implement no content coding
    "valid/025", "valid/025_line", "valid/rfc9112_smuggle_gzip_chunked_01",
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
        except FaasError as exc:  # a content coding before chunked: 501, which valid requests may get
            assert exc.status == 501 and key in VALID_UNSUPPORTED_CODING
            return
        assert (req.method, req.target, list(req.version)) == (want["method"], want["uri"]["raw"], want["version"])
        assert req.headers == _expected_headers(want["headers"])
        assert req.query == want["uri"]["query"]
        if req.method != "CONNECT":
            assert req.path == unquote_to_bytes(want["uri"]["path"].encode("latin-1")).decode()
        if req.chunked:
            decoder = ChunkedDecoder(LARGE)
            rest = decoder.feed(rest[end:])
            assert decoder.done
            body = decoder.body()
            assert decoder.trailers == _expected_headers(want["trailers"])
        else:
            length = req.content_length or 0
            body, rest = rest[end:end + length], rest[end + length:]
        assert body == want["body"].encode("latin-1")
        if not req.keep_alive:
            break  # the server closes here: whatever follows is never read
    else:
        assert rest == b""  # each body ended exactly where the next request, or the data, ends
    assert done == len(case["requests"])


@needs_corpus
def test_gunicorn_chunked_inventory() -> None:
    """The corpus requests that reach ChunkedDecoder or get a 501, listed so that a changed verdict shows."""
    chunked, refused = set(), set()
    for key in VALID:
        raw = (GUNICORN / MANIFEST[key]["raw"]).read_bytes()
        try:
            if parse_head(raw[:find_head_end(raw)]).chunked:
                chunked.add(key)
        except FaasError:
            refused.add(key)
    assert (chunked, refused) == (VALID_CHUNKED, VALID_UNSUPPORTED_CODING)
    invalid_chunked = {key for key in INVALID if MANIFEST[key]["category"] == "transfer-encoding/chunked"}
    assert CHUNKED_BODY_FAULTS < invalid_chunked  # the others fail in the head already


@needs_corpus
@pytest.mark.parametrize("key", INVALID)
def test_gunicorn_invalid(key: str) -> None:
    case = MANIFEST[key]
    raw = (GUNICORN / case["raw"]).read_bytes()
    end = find_head_end(raw)
    head = raw[:end] if end >= 0 else raw  # no end: the reader times out or hits MAX_HEAD_BYTES
    if key in CHUNKED_BODY_FAULTS:
        assert parse_head(head).chunked
        decoder = ChunkedDecoder(LARGE)
        try:
            decoder.feed(raw[end:])
        except FaasError as exc:
            assert 400 <= exc.status < 500 and exc.close and key in CHUNKED_BODY_REJECTED
        else:
            assert not decoder.done and key in CHUNKED_BODY_INCOMPLETE
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


def test_two_authorization_headers_are_joined_for_the_auth_check_to_refuse() -> None:
    head = parse_head(_head("Authorization: Basic YTpi", "Authorization: Basic Yzpk"))
    assert head.headers["authorization"] == "Basic YTpi, Basic Yzpk"


def test_content_length_accepted_forms() -> None:
    assert parse_head(_head("Content-Length:  007 ")).content_length == 7
    assert parse_head(_head("Content-Length: " + "9" * MAX_CONTENT_LENGTH_DIGITS)).content_length == 10**18 - 1
    assert parse_head(_head(line="GET / HTTP/1.0")).content_length is None


@pytest.mark.parametrize(("fields", "code"), [
    (("Content-Length: 1", "content-length: 1"), "duplicate_header"),
    (("Host: a", "Host: a"), "duplicate_header"),
    (("Content-Type: a", "Content-Type: b"), "duplicate_header"),
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


# -- ChunkedDecoder (RFC 9112 7.1) ---------------------------------------------------------------------------

@contextmanager
def _watchdog(seconds: int) -> Iterator[None]:
    """Turn a decoder that loops forever into a failure instead of a hung test run (where SIGALRM exists)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(*_: object) -> None:
        raise AssertionError(f"no result after {seconds} s: the decoder loops")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _decode(wire: bytes, max_body: int = LARGE, pieces: int = 0) -> tuple[bytes, bytes, dict[str, str]]:
    """(body, leftover, trailers) after feeding `wire` whole, or in pieces of `pieces` bytes."""
    decoder, leftover = ChunkedDecoder(max_body), b""
    step = pieces or max(len(wire), 1)
    with _watchdog(5):
        for start in range(0, len(wire), step):
            leftover += decoder.feed(wire[start:start + step])
    assert decoder.done
    return decoder.body(), leftover, decoder.trailers


def _chunk_fails(wire: bytes, status: int = 400, max_body: int = LARGE) -> FaasError:
    """The error for `wire`, the same whole and byte at a time, and raised before the bytes after the fault."""
    with _watchdog(5), pytest.raises(FaasError) as info:
        ChunkedDecoder(max_body).feed(wire)
    decoder = ChunkedDecoder(max_body)
    with _watchdog(5):
        for at in range(len(wire)):
            try:
                decoder.feed(wire[at:at + 1])
            except FaasError as exc:
                assert (exc.status, exc.code, exc.close) == (info.value.status, info.value.code, True)
                break
        else:
            raise AssertionError("byte-at-a-time feeding accepted what whole feeding refused")
    assert info.value.status == status and info.value.close
    if status == 400:
        assert info.value.code == "bad_chunked"
    return info.value


HELLO = b"5\r\nhello\r\n0\r\n\r\n"


def test_chunked_decodes_and_stops_at_the_end() -> None:
    wire = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    assert _decode(wire) == (b"hello world", b"GET / HTTP/1.1\r\n\r\n", {})
    assert _decode(b"0\r\n\r\n") == (b"", b"", {})
    assert _decode(b"00A\r\n" + bytes(range(10)) + b"\r\n000\r\n\r\n")[0] == bytes(range(10))
    assert _decode(b"0" * (MAX_CHUNK_SIZE_DIGITS - 1) + b"1\r\nx\r\n0\r\n\r\n")[0] == b"x"
    assert _decode(b"2\r\n\r\n\r\n0\r\n\r\n")[0] == b"\r\n"  # data is opaque, CRLF included


def test_chunked_state_after_the_end_or_a_fault() -> None:
    decoder = ChunkedDecoder(LARGE)
    assert decoder.feed(HELLO[:-1]) == b"" and not decoder.done
    with pytest.raises(RuntimeError):
        decoder.body()
    assert decoder.feed(b"\nnext") == b"next" and decoder.done
    assert decoder.feed(b"more") == b"more" and decoder.body() == b"hello"  # done: nothing more is consumed
    broken = ChunkedDecoder(LARGE)
    with pytest.raises(FaasError) as first:
        broken.feed(b"x\r\n")
    with pytest.raises(FaasError) as again:
        broken.feed(HELLO)
    assert again.value is first.value


@pytest.mark.parametrize("size", [b"0x10", b"0X5", b"+5", b"-1", b"-0", b" 5", b"5 ", b"\t5", b"5\t", b"5_0", b"",
                                  b"1" * (MAX_CHUNK_SIZE_DIGITS + 1), b"0" * (MAX_CHUNK_SIZE_DIGITS + 1), b"g",
                                  b"5.0", b"5,5", "\u0665".encode(), b"\xef\xbc\x95", b"0x", b"5h"])
def test_chunk_size_traps(size: bytes) -> None:
    _chunk_fails(size + b"\r\nhello\r\n0\r\n\r\n")


@pytest.mark.parametrize("ext", [b";a", b" ;a", b"\t; a = b", b";a=b;c;d=\"e\"", b';a="b c"', b';a="q\\"d"',
                                 b";a=\"\"", b";!#$%&'*+-.^_`|~=x", b';a="\x80\xff\t"', b" \t ; a\t=\t\"\\\t\""])
def test_chunk_extensions_accepted_and_ignored(ext: bytes) -> None:
    assert _decode(b"5" + ext + b"\r\nhello\r\n0" + ext + b"\r\n\r\n") == (b"hello", b"", {})


@pytest.mark.parametrize("ext", [b";", b";a=", b";=b", b";a b", b";a=b c", b';a="open', b';a="x\x00"', b";a=b;",
                                 b" ; ", b";a==b", b";a=\"b\"c", b";a,b", b";a=\x80", b";a\x7f", b';a="\\\x00"',
                                 b";a=\rb", b";a\r"])
def test_bad_chunk_extensions(ext: bytes) -> None:
    _chunk_fails(b"5" + ext + b"\r\nhello\r\n0\r\n\r\n")


@pytest.mark.parametrize("wire", [
    b"5\nhello\r\n0\r\n\r\n", b"5\rhello\r\n0\r\n\r\n", b"5\r\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\n\r\n",
    b"5\r\nhello\r\n0\r\n\n", b"5\r\nhello\r\n0\r\n\r\r\n", b"5\r\nhello\r\n0\r\nX: y\n\r\n",
    b"5\r\nhello\r\n0\r\nX: y\r\r\n\r\n", b"5\r\nhello\r\n0\r\nX: a\rb\r\n\r\n",
])
def test_lines_end_in_crlf_only(wire: bytes) -> None:
    _chunk_fails(wire)


@pytest.mark.parametrize("wire", [  # each ends at the first byte that shows the fault
    b"5\r\nhelloX", b"5\r\nhello\n", b"5\r\nhello\r0", b"5\r\nhello0", b"5\r\nhell\r\n", b"4\r\nhello",
    b"5\r\nhello ", b"1\r\nx\r\n2\r\nyz\r\r", b"5;a\r\nhello\r\r",
])
def test_data_must_be_followed_by_exactly_crlf(wire: bytes) -> None:
    assert "exactly CRLF" in _chunk_fails(wire).message


def test_trailers_are_parsed_strictly_and_kept_apart() -> None:
    wire = b"0\r\nVary: *\r\nX-Sum:\t abc \r\nx-sum: def\r\nContent-Type: text/plain\r\nEmpty:\r\n\r\nnext"
    assert _decode(wire) == (b"", b"next", {"vary": "*", "x-sum": "abc, def", "content-type": "text/plain",
                                            "empty": ""})


@pytest.mark.parametrize("trailer", [
    b" folded", b"X: a\r\n folded", b"X: a\r\n\tfolded", b"A B: c", b": c", b"X : c", b"NoColon", b"X\x00: c",
    b"X: a\x00b", b"X: a\x7fb", b"Content-Length: 5", b"Transfer-Encoding: chunked", b"HOST: evil", b"Trailer: X",
    b"Authorization: Basic eA==", b"Connection: close", b"Content-Type: a\r\ncontent-type: b",
])
def test_bad_trailers(trailer: bytes) -> None:
    _chunk_fails(b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n\r\n")


def test_trailer_section_bound() -> None:
    def section(size: int) -> bytes:  # a trailer section of exactly `size` bytes, the final CRLF included
        return b"X: " + b"v" * (size - 7) + b"\r\n\r\n"

    _, _, trailers = _decode(b"0\r\n" + section(MAX_TRAILER_BYTES))
    assert len(trailers["x"]) == MAX_TRAILER_BYTES - 7
    _chunk_fails(b"0\r\n" + section(MAX_TRAILER_BYTES + 1), 431)
    many = b"".join(b"X%d: v\r\n" % i for i in range(MAX_TRAILER_BYTES // 8)) + b"\r\n"
    _chunk_fails(b"0\r\n" + many, 431)
    decoder = ChunkedDecoder(LARGE)  # an endless trailer line fails at the bound, not at its end
    decoder.feed(b"0\r\nX: " + b"v" * (MAX_TRAILER_BYTES - 4))
    with pytest.raises(FaasError) as info:
        decoder.feed(b"v")
    assert info.value.status == 431


def test_size_line_bound() -> None:
    ext = b";a=" + b"b" * (MAX_CHUNK_LINE - len(b"5;a=\r\n"))
    assert len(b"5" + ext + b"\r\n") == MAX_CHUNK_LINE
    assert _decode(b"5" + ext + b"\r\nhello\r\n0\r\n\r\n")[0] == b"hello"
    _chunk_fails(b"5" + ext + b"b\r\nhello\r\n0\r\n\r\n")
    decoder = ChunkedDecoder(LARGE)
    decoder.feed(b"5;a=" + b"b" * (MAX_CHUNK_LINE - 5))  # one byte short of the bound: still waiting
    with pytest.raises(FaasError) as info:
        decoder.feed(b"b")
    assert (info.value.status, info.value.code) == (400, "bad_chunked")


def test_max_body_at_and_past_the_limit() -> None:
    assert _decode(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", max_body=5)[0] == b"abcde"
    assert _decode(b"0\r\n\r\n", max_body=0)[0] == b""
    error = _chunk_fails(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 413, max_body=5)
    assert error.extra == {"limit": 5}
    _chunk_fails(b"6\r\n", 413, max_body=5)  # refused on the size line, before any data arrives
    _chunk_fails(b"f" * MAX_CHUNK_SIZE_DIGITS + b"\r\n", 413, max_body=LARGE)


SPLIT_BODIES = [
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"1;a=\"b;c\"\r\nx\r\n0\r\nVary: *\r\nX: y\r\n\r\n",
    b"A ; n = v\r\n0123456789\r\n0;last\r\n\r\n0\r\n\r\n",  # the second last-chunk is the next "request"
    b"2\r\n\r\n\r\n0\r\n\r\n",
]


@pytest.mark.parametrize("wire", SPLIT_BODIES)
def test_every_split_point_gives_the_same_result(wire: bytes) -> None:
    whole = _decode(wire)
    for split in range(len(wire) + 1):
        decoder = ChunkedDecoder(LARGE)
        leftover = decoder.feed(wire[:split]) + decoder.feed(wire[split:])
        assert decoder.done and (decoder.body(), leftover, decoder.trailers) == whole
    assert _decode(wire, pieces=1) == whole
    assert _decode(wire, pieces=3) == whole


def test_sixteen_mib_in_64_kib_pieces() -> None:
    payload = bytes(range(256)) * (16 * 4096)
    chunk = 8 * 1024
    wire = b"".join(b"%x\r\n" % chunk + payload[i:i + chunk] + b"\r\n" for i in range(0, len(payload), chunk))
    assert _decode(wire + b"0\r\n\r\nGET", max_body=len(payload), pieces=64 * 1024) == (payload, b"GET", {})


_CHUNK_PIECES = [b"0", b"1", b"5", b"a", b"F", b"00000000000000001", b"ffffffffffff", b"\r\n", b"\r\n", b"\r\n",
                 b"\r", b"\n", b";", b"=", b" ", b"\t", b'"', b"\\", b"x", b"hello", b"X: y", b":", b"Host: h",
                 b"\x00", b"\xff", b"-", b"+", b"0x"]


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=120), st.lists(st.sampled_from(_CHUNK_PIECES), max_size=30).map(b"".join)),
       st.lists(st.integers(min_value=1, max_value=16), max_size=20), st.sampled_from([4, 64, LARGE]))
def test_fuzz_chunked(wire: bytes, sizes: list[int], max_body: int) -> None:
    """Any bytes, in any pieces: the outcome of feeding them whole, and only ever a 4xx FaasError."""
    def outcome(pieces: list[bytes]) -> tuple[object, ...]:
        decoder, leftover = ChunkedDecoder(max_body), b""
        try:
            for piece in pieces:
                leftover += decoder.feed(piece)
        except FaasError as exc:
            assert exc.status in (400, 413, 431) and exc.close
            return ("error", exc.status, exc.code)
        if not decoder.done:
            return ("waiting",)
        body = decoder.body()
        assert len(body) <= max_body and wire.endswith(leftover) and len(body) + len(leftover) < len(wire)
        return ("done", body, leftover, decoder.trailers)

    pieces, at = [], 0
    for size in sizes + [len(wire)]:
        pieces.append(wire[at:at + size])
        at += size
    with _watchdog(5):
        assert outcome(pieces) == outcome([wire])
