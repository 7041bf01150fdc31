"""Strict HTTP/1.1 request framing: the head, and a chunked body (RFC 9112 framing, RFC 9110 semantics).

Strategy: this module owns the bytes of a request head, from the request line to the blank line that ends the
fields, and the framing of a chunked body. `find_head_end` tells the reader in `httpd.py` where a head ends in a
growing buffer; `parse_head` turns that head into a frozen `RequestHead` or raises a `FaasError` carrying the
status to answer. `ChunkedDecoder` is fed whatever bytes arrive after a chunked head and says where the body
ends. Nothing here touches a socket, waits for data or writes a response.

Policy, decided against the gunicorn request corpus:
- Lines end with CRLF only. A bare LF or bare CR anywhere in the head is a 400 (RFC 9112 2.2 lets a recipient
  accept bare LF; no valid corpus request needs it, and disagreeing with a proxy about line ends is how requests
  get smuggled). `find_head_end` still stops at LF LF so such a head fails fast instead of timing out.
- Up to MAX_LEADING_EMPTY_LINES CRLFs before the request line are ignored (RFC 9112 2.2).
- Targets: origin-form, asterisk-form for OPTIONS, authority-form for CONNECT only, and absolute-form with an
  http(s) scheme whose path becomes `path` (RFC 9112 3.2). A fragment is tolerated and dropped; raw obs-text
  bytes are tolerated (both occur in valid corpus requests). A missing Host is tolerated for the same reason.
- Repeated fields are joined with ", " (RFC 9110 5.3; "; " for Cookie); a repeat of one of _SINGLETONS is a 400.
- Transfer-Encoding: exactly "chunked" (optionally after legacy "identity" no-ops) sets `chunked`; other codings
  before a final "chunked" are a 501; anything else is a 400. A head whose only coding is "identity" is framed
  by Content-Length, as gunicorn does, but the connection is closed after it.
- Chunked bodies (RFC 9112 7.1) follow the grammar exactly: chunk-size is 1 to MAX_CHUNK_SIZE_DIGITS hex digits,
  chunk-ext is `*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )` (so "5 " and " 5" are 400s but
  "5 ;a" is not), every line and every chunk's data end in exactly CRLF, and trailer fields obey the head's field
  rules. Extensions are checked, then ignored. Trailers are parsed and kept but never merged into the head
  (RFC 9110 6.5.2); one that could change framing, routing, connection handling or authentication
  (_FORBIDDEN_TRAILERS, RFC 9110 6.5.1) is a 400, since a proxy that merges it would see another request.
  A body that never ends is not an error here: the reader's timeout closes that connection.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn
from urllib.parse import unquote_to_bytes

from tinyfaas_std.errors import (
    BadRequest, FaasError, HeaderFieldsTooLarge, NotImplementedHttp, PayloadTooLarge, UriTooLong,
)

__all__ = [
    "RequestHead", "parse_head", "find_head_end", "MAX_REQUEST_LINE", "MAX_HEADER_LINE", "MAX_HEADERS",
    "MAX_HEAD_BYTES", "MAX_LEADING_EMPTY_LINES", "MAX_CONTENT_LENGTH_DIGITS", "ChunkedDecoder", "MAX_CHUNK_LINE",
    "MAX_CHUNK_SIZE_DIGITS", "MAX_TRAILER_BYTES",
]

MAX_REQUEST_LINE = 4096  # bytes incl. CRLF: gunicorn's default (4094 + CRLF); large data belongs in the body
MAX_HEADER_LINE = 8190  # bytes incl. CRLF: the default of gunicorn's limit_request_field_size and Apache
MAX_HEADERS = 100  # fields per head: gunicorn's and Apache's default
MAX_HEAD_BYTES = 64 * 1024  # whole head: bounds the reader's buffer per connection, ~8x what browsers send
MAX_LEADING_EMPTY_LINES = 4  # RFC 9112 2.2 asks for at least one; more than a few is not a client bug
MAX_CONTENT_LENGTH_DIGITS = 18  # any 18-digit number fits in a signed 64-bit integer
# A chunk-size line, CRLF included: 16 digits leave ~1000 bytes for extensions, which are ignored anyway. Without a
# bound, a client streaming one endless extension costs CPU and memory for nothing (Node.js, CVE-2024-22019).
MAX_CHUNK_LINE = 1024
MAX_CHUNK_SIZE_DIGITS = 16  # 16 hex digits are 64 bits; more is leading zeros or a size nobody can send
MAX_TRAILER_BYTES = 8 * 1024  # the whole trailer section: we ignore trailers, so one header line's worth

_TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"  # RFC 9110 5.6.2
_METHOD = r"[-!#$%&'*+.^_`|~0-9A-Z]+"  # case-sensitive (RFC 9110 9.1); lower case is refused, as gunicorn does
_VISIBLE = r"\x21-\x7e\x80-\xff"  # VCHAR / obs-text, once the head is decoded as latin-1
_FIELD_VALUE = r"[\t\x20" + _VISIBLE + "]*"  # RFC 9110 5.5: no CTLs but HTAB
# The whole head in one match: only a rejected head is split into lines again (_diagnose) to name the fault.
_HEAD = re.compile(f"({_METHOD}) ([{_VISIBLE}]+) HTTP/1\\.([01])\r\n((?:{_TOKEN}:{_FIELD_VALUE}\r\n)*)\r\n")
# Repeats of these are ambiguous framing or routing: 400. Two Authorization headers are joined like any other
# field, so the Basic Auth check sees a malformed value and answers 401 (SPEC section 2), not 400.
_SINGLETONS = frozenset({"content-length", "host", "content-type"})
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[-A-Za-z0-9._~%!$&'()*+,;=]+)"  # RFC 3986 IP-literal (v6) or reg-name/IPv4
_ABSOLUTE = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://(?:[-A-Za-z0-9._~%!$&'()*+,;=:]*@)?" + _HOST
                       + r"(?::[0-9]*)?(?=[/?#]|\Z)")
_AUTHORITY = re.compile(_HOST + r":[0-9]{1,5}")  # RFC 9112 3.2.3: uri-host ":" port
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_TOKEN_RE, _METHOD_RE = re.compile(_TOKEN), re.compile(_METHOD)
_TARGET_RE, _FIELD_VALUE_RE = re.compile(f"[{_VISIBLE}]+"), re.compile(_FIELD_VALUE)


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    path: str
    query: str
    version: tuple[int, int]
    headers: dict[str, str]
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool


def _bad(message: str, code: str) -> BadRequest:
    return BadRequest(message, code=code, close=True)


def _first_line_start(buf: bytes | bytearray) -> int:
    pos = 0
    while pos < 2 * MAX_LEADING_EMPTY_LINES and buf.startswith(b"\r\n", pos):
        pos += 2
    return pos


def find_head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line ending the head in `buf`, or -1 if it has not arrived yet.

    `start` is the buffer length at a previous call that returned -1; the search backs up over it so a
    terminator split across reads is still found. LF LF also ends a head, for parse_head to reject.
    """
    first = _first_line_start(buf)
    pos = max(first, min(start, len(buf)) - 2)
    crlf = buf.find(b"\n\r\n", pos)
    bare = buf.find(b"\n\n", pos, len(buf) if crlf < 0 else crlf + 2)
    if bare >= 0:
        return bare + 2
    return crlf + 3 if crlf >= 0 else -1


def _split_target(method: str, target: str) -> tuple[str, str]:
    """(decoded path, raw query) for the four request-target forms of RFC 9112 3.2."""
    if method == "CONNECT":
        if _AUTHORITY.fullmatch(target) is None:
            raise _bad("CONNECT needs an authority-form target host:port (RFC 9112 3.2.3)", "bad_target")
        return "", ""
    if target == "*":
        if method != "OPTIONS":
            raise _bad("the asterisk-form target is only allowed with OPTIONS (RFC 9112 3.2.4)", "bad_target")
        return "*", ""
    if target[0] != "/":
        match = _ABSOLUTE.match(target)
        if match is None:
            raise _bad("the request target must be an absolute path or an http(s) URI", "bad_target")
        target = target[match.end():]
    path, _, query = target.partition("#")[0].partition("?")
    if not path:
        return "/", query  # RFC 9110 4.2.3: an empty path is equivalent to "/"
    if "%" not in path and path.isascii():
        return path, query
    raw = path.encode("latin-1")
    if _BAD_PERCENT.search(raw):
        raise _bad("malformed percent-encoding in the path", "bad_path")
    raw = unquote_to_bytes(raw)
    if b"\x00" in raw:
        raise _bad("the path must not contain NUL", "bad_path")
    try:
        return raw.decode("utf-8"), query
    except UnicodeDecodeError:
        raise _bad("the path is not valid UTF-8 once percent-decoded", "bad_path") from None


def _check_limits(request_line: int, fields: str) -> None:
    if request_line + 2 > MAX_REQUEST_LINE:
        raise UriTooLong(f"the request line is longer than {MAX_REQUEST_LINE} bytes")
    if fields.count("\n") > MAX_HEADERS:
        raise HeaderFieldsTooLarge(f"more than {MAX_HEADERS} header fields")
    if len(fields) > MAX_HEADER_LINE and max(map(len, fields.split("\n"))) + 1 > MAX_HEADER_LINE:
        raise HeaderFieldsTooLarge(f"a header line is longer than {MAX_HEADER_LINE} bytes")


def _diagnose(text: str) -> NoReturn:
    """Name the first fault of a head that _HEAD refused: the slow path, run only for bad requests."""
    if not text.endswith("\r\n\r\n"):
        if text.endswith("\n\n"):
            raise _bad("lines must end with CRLF (RFC 9112 2.2)", "bad_line_ending")
        raise _bad("the request head is incomplete", "incomplete_head")
    block = text[:-4]
    crlf = block.count("\r\n")
    if block.count("\r") != crlf or block.count("\n") != crlf:
        raise _bad("bare CR or LF in the head: lines must end with CRLF (RFC 9112 2.2)", "bad_line_ending")
    request_line, *fields = block.split("\r\n")
    _check_limits(len(request_line), "".join(line + "\r\n" for line in fields))
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise _bad("the request line must be 'method SP target SP version' (RFC 9112 3)", "bad_request_line")
    if not _METHOD_RE.fullmatch(parts[0]):
        raise _bad("the method must be an upper-case token (RFC 9110 9.1)", "bad_method")
    if not _TARGET_RE.fullmatch(parts[1]):
        raise _bad("the request target contains control characters or is empty", "bad_target")
    if parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise _bad("only HTTP/1.1 and HTTP/1.0 are spoken here (RFC 9112 2.3)", "bad_version")
    for line in fields:
        fault = _field_fault(line)
        if fault is not None:
            raise _bad(*fault)
    raise _bad("malformed request head", "bad_request")


def _field_fault(line: str) -> tuple[str, str] | None:
    """(message, code) for the first fault of one field line without its CRLF, or None; for heads and trailers."""
    if not line:
        return "empty line inside the head", "bad_header"
    if line[0] in " \t":
        return "obsolete line folding is not accepted (RFC 9112 5.2)", "obs_fold"
    name, colon, value = line.partition(":")
    if not colon or not _TOKEN_RE.fullmatch(name):
        return "a header name must be a token followed directly by ':' (RFC 9112 5.1)", "bad_header"
    if not _FIELD_VALUE_RE.fullmatch(value):
        return "a header value contains a control character (RFC 9110 5.5)", "bad_header"
    return None


def _fields(fields: str) -> dict[str, str]:
    """Fold the fields _HEAD already validated into a dict; plain str methods beat a findall here."""
    headers: dict[str, str] = {}
    for line in fields.split("\r\n")[:-1]:
        name, _, value = line.partition(":")
        key, value = name.lower(), value.strip(" \t")
        if key not in headers:
            headers[key] = value
        elif key in _SINGLETONS:
            raise _bad(f"repeated {key} header is ambiguous", "duplicate_header")
        else:
            headers[key] += ("; " if key == "cookie" else ", ") + value  # RFC 9110 5.3
    return headers


def _transfer_coding(value: str, with_length: bool) -> bool:
    """True for chunked framing, False for legacy identity-only; raises for everything else (RFC 9112 6.1)."""
    codings = [coding.strip(" \t").lower() for coding in value.split(",")]
    if not all(_TOKEN_RE.fullmatch(coding) for coding in codings):
        raise _bad("Transfer-Encoding must be a list of coding names", "bad_transfer_encoding")
    if "chunked" not in codings:
        if all(coding == "identity" for coding in codings):
            return False
        raise _bad("a request's final transfer coding must be chunked (RFC 9112 6.3)", "bad_transfer_encoding")
    if codings.count("chunked") > 1 or codings[-1] != "chunked":
        raise _bad("chunked must be applied once, as the final coding (RFC 9112 6.1)", "bad_transfer_encoding")
    if with_length:
        raise _bad("both Transfer-Encoding and Content-Length (RFC 9112 6.3)", "bad_transfer_encoding")
    if any(coding != "identity" for coding in codings[:-1]):
        raise NotImplementedHttp("transfer codings other than chunked are not supported",
                                 code="unsupported_transfer_coding")
    return True


def _content_length(value: str) -> int:
    # int() would take "+1", "0_1", " 1" and non-ASCII digits; RFC 9110 8.6 allows 1*DIGIT only.
    if not (value.isascii() and value.isdigit()) or len(value) > MAX_CONTENT_LENGTH_DIGITS:
        raise _bad(f"Content-Length must be 1 to {MAX_CONTENT_LENGTH_DIGITS} ASCII digits", "bad_content_length")
    return int(value)


def parse_head(head: bytes) -> RequestHead:
    """Parse one request head: the request line up to and including the blank line ending the fields."""
    if len(head) > MAX_HEAD_BYTES:
        raise HeaderFieldsTooLarge(f"the request head is longer than {MAX_HEAD_BYTES} bytes")
    first = _first_line_start(head) if head[:1] == b"\r" else 0
    text = head[first:].decode("latin-1")
    match = _HEAD.fullmatch(text)
    if match is None:
        _diagnose(text)
    method, target, minor, fields = match.groups()
    _check_limits(match.start(4) - 2, fields)
    headers = _fields(fields)
    path, query = _split_target(method, target)
    version = (1, 1) if minor == "1" else (1, 0)

    keep_alive = version == (1, 1)
    if "connection" in headers:  # RFC 9112 9.3
        tokens = {token.strip(" \t").lower() for token in headers["connection"].split(",")}
        keep_alive = "close" not in tokens and (keep_alive or "keep-alive" in tokens)
    length, coding = headers.get("content-length"), headers.get("transfer-encoding")
    chunked = False
    if coding is not None:
        if version == (1, 0):
            raise _bad("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1)", "bad_transfer_encoding")
        chunked = _transfer_coding(coding, with_length=length is not None)
        keep_alive = keep_alive and chunked  # identity-only framing is legacy: never reuse the connection
    return RequestHead(
        method=method,
        target=target,
        path=path,
        query=query,
        version=version,
        headers=headers,
        content_length=None if length is None else _content_length(length),
        chunked=chunked,
        keep_alive=keep_alive,
        # RFC 9110 10.1.1: a server MUST ignore 100-continue from an HTTP/1.0 client.
        expect_continue=version == (1, 1) and headers.get("expect", "").lower() == "100-continue",
    )


# -- chunked bodies (RFC 9112 7.1) ---------------------------------------------------------------------------

_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'  # RFC 9110 5.6.4
_CHUNK_EXT = rf"(?:[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*(?:{_TOKEN}|{_QUOTED}))?)*"  # RFC 9112 7.1.1
# bytes, to match in place in what was fed; the patterns are ASCII, and \x80-\xff then mean obs-text bytes
_SIZE_LINE = re.compile(f"([0-9A-Fa-f]{{1,{MAX_CHUNK_SIZE_DIGITS}}}){_CHUNK_EXT}\r\n".encode("ascii"))
_TRAILER_LINE = re.compile(f"({_TOKEN}):({_FIELD_VALUE})\r\n")
# RFC 9110 6.5.1: fields needed before the content (framing, routing, connection control, request modifiers,
# authentication). Content-Type is not here: valid gunicorn requests send it as a trailer.
_FORBIDDEN_TRAILERS = frozenset({
    "content-length", "transfer-encoding", "trailer", "host", "connection", "keep-alive", "te", "upgrade",
    "expect", "authorization", "proxy-authorization",
})


class _State(Enum):
    """Where the decoder is. SIZE_LINE -> DATA -> DATA_CRLF -> SIZE_LINE ...; a zero size goes from SIZE_LINE to
    TRAILERS, whose empty line leads to DONE."""
    SIZE_LINE = "size line"
    DATA = "chunk data"
    DATA_CRLF = "CRLF after chunk data"
    TRAILERS = "trailer section"
    DONE = "done"


def _chunk_error(message: str) -> BadRequest:
    return _bad(message, "bad_chunked")


def _line_ending_fault(text: str) -> str | None:
    if not text.endswith("\r\n"):
        return "lines must end with CRLF, not a bare LF (RFC 9112 7.1)"
    if "\r" in text[:-2]:
        return "bare CR in a line (RFC 9112 7.1)"
    return None


def _size_line_fault(text: str) -> str:
    """Name the fault of a chunk-size line that _SIZE_LINE refused: the slow path, for bad requests only."""
    fault = _line_ending_fault(text)
    if fault is not None:
        return fault
    size = text[:len(text) - len(text.lstrip(string.hexdigits))]
    if not size:
        return "a chunk must start with its size in hex digits: no sign, space, '0x' or empty line (RFC 9112 7.1)"
    if len(size) > MAX_CHUNK_SIZE_DIGITS:
        return f"a chunk size has more than {MAX_CHUNK_SIZE_DIGITS} hex digits"
    if text[len(size)] not in " \t;":
        return f"the chunk size {size!r} is followed by {text[len(size)]!r}, not CRLF or ';' (RFC 9112 7.1)"
    return f"malformed chunk extension after the size {size!r} (RFC 9112 7.1.1)"


def _trailer_fault(text: str) -> str:
    """Name the fault of a trailer line that _TRAILER_LINE refused, with the head's field rules."""
    fault = _line_ending_fault(text)
    if fault is not None:
        return fault
    field_fault = _field_fault(text[:-2])
    return field_fault[0] if field_fault is not None else "malformed trailer field"


class ChunkedDecoder:
    """Feed raw bytes as they arrive; it decodes a chunked body and stops exactly at its end.

    `feed` returns the bytes after the body's end (the start of the next pipelined request) once `done`, and b""
    before. Chunk data is copied once, straight into the body; only a partial line, bounded by MAX_CHUNK_LINE or
    MAX_TRAILER_BYTES, is kept between feeds, so feeding is linear however the bytes are split. A fault raises a
    FaasError (400 bad_chunked, 413 past `max_body`, 431 for trailers) as soon as the bytes show it; the
    connection must then be closed, and feeding again raises the same error.
    """

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.trailers: dict[str, str] = {}
        self._state = _State.SIZE_LINE
        self._line = bytearray()  # the size or trailer line in progress, never longer than its bound
        self._body = bytearray()
        self._remaining = 0  # bytes still to come of the current chunk's data, then of the CRLF after it
        self._trailer_bytes = 0  # bytes of the complete trailer lines so far
        self._error: FaasError | None = None

    @property
    def done(self) -> bool:
        """True once the last chunk and the trailer section are complete."""
        return self._state is _State.DONE

    def body(self) -> bytes:
        """The decoded body; only once `done`."""
        if not self.done:
            raise RuntimeError("the chunked body is not complete yet")
        return bytes(self._body)

    def feed(self, data: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        if self.done:
            return bytes(data)
        try:
            pos = self._consume(data)
        except FaasError as exc:
            self._error = exc
            raise
        return bytes(data[pos:]) if self.done else b""

    def _consume(self, data: bytes) -> int:
        """Run the state machine over `data`; the index just past the body's end, or len(data)."""
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state is _State.DONE:
                break
            if state is _State.SIZE_LINE and not self._line:
                # The common case, matched in place: a whole size line, never searched past its bound.
                match = _SIZE_LINE.match(data, pos, pos + MAX_CHUNK_LINE)
                if match is not None:
                    self._chunk_size(int(match[1], 16))
                    pos = match.end()
                    continue
            if state is _State.DATA:
                take = min(self._remaining, end - pos)
                self._body += data[pos:pos + take]
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state, self._remaining = _State.DATA_CRLF, 2
            elif state is _State.DATA_CRLF:
                got = data[pos:pos + self._remaining]
                if not b"\r\n"[2 - self._remaining:].startswith(got):
                    raise _chunk_error("chunk data must be followed by exactly CRLF: "
                                       "the data is longer or shorter than its size (RFC 9112 7.1)")
                pos += len(got)
                self._remaining -= len(got)
                if not self._remaining:
                    self._state = _State.SIZE_LINE
            else:
                pos = self._line_part(data, pos)
        return pos

    def _line_part(self, data: bytes, pos: int) -> int:
        """Take a size or trailer line, or the part of it in `data`; the index after what was taken."""
        sizing = self._state is _State.SIZE_LINE
        room = (MAX_CHUNK_LINE if sizing else MAX_TRAILER_BYTES - self._trailer_bytes) - len(self._line)
        stop = min(len(data), pos + room)  # never search past the bound: a line too long fails at its limit
        newline = data.find(b"\n", pos, stop)
        if newline < 0:
            if stop - pos == room:
                if sizing:
                    raise _chunk_error(f"a chunk-size line is longer than {MAX_CHUNK_LINE} bytes")
                raise HeaderFieldsTooLarge(f"the trailer section is longer than {MAX_TRAILER_BYTES} bytes")
            self._line += data[pos:stop]
            return stop
        self._line += data[pos:newline + 1]
        line = bytes(self._line)
        self._line.clear()
        if not sizing:
            self._trailer_line(line.decode("latin-1"))
            return newline + 1
        match = _SIZE_LINE.fullmatch(line)
        if match is None:
            raise _chunk_error(_size_line_fault(line.decode("latin-1")))
        self._chunk_size(int(match[1], 16))
        return newline + 1

    def _chunk_size(self, size: int) -> None:
        if size > self.max_body - len(self._body):
            raise PayloadTooLarge(f"the chunked body is over the limit of {self.max_body} bytes",
                                  limit=self.max_body)
        if size:
            self._state, self._remaining = _State.DATA, size
        else:
            self._state = _State.TRAILERS

    def _trailer_line(self, text: str) -> None:
        if text == "\r\n":
            self._state = _State.DONE
            return
        match = _TRAILER_LINE.fullmatch(text)
        if match is None:
            raise _chunk_error(f"trailer section: {_trailer_fault(text)}")
        name, value = match.group(1).lower(), match.group(2).strip(" \t")
        if name in _FORBIDDEN_TRAILERS:
            raise _chunk_error(f"{name} is not allowed in a trailer section (RFC 9110 6.5.1)")
        if name not in self.trailers:
            self.trailers[name] = value
        elif name in _SINGLETONS:
            raise _chunk_error(f"repeated {name} trailer is ambiguous")
        else:
            self.trailers[name] += ("; " if name == "cookie" else ", ") + value  # RFC 9110 5.3
        self._trailer_bytes += len(text)
