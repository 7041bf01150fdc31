"""Strict HTTP/1.1 request-head parsing (RFC 9112 framing, RFC 9110 semantics).

Strategy: this module owns the bytes of a request head, from the request line to the blank line that ends the
fields, and nothing else. `find_head_end` tells the reader in `httpd.py` where a head ends in a growing buffer;
`parse_head` turns that head into a frozen `RequestHead` or raises a `FaasError` carrying the status to answer.
It never touches a socket, never reads a body and never writes a response.

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import unquote_to_bytes

from tinyfaas_std.errors import BadRequest, HeaderFieldsTooLarge, NotImplementedHttp, UriTooLong

__all__ = [
    "RequestHead", "parse_head", "find_head_end", "MAX_REQUEST_LINE", "MAX_HEADER_LINE", "MAX_HEADERS",
    "MAX_HEAD_BYTES", "MAX_LEADING_EMPTY_LINES", "MAX_CONTENT_LENGTH_DIGITS",
]

MAX_REQUEST_LINE = 4096  # bytes incl. CRLF: gunicorn's default (4094 + CRLF); large data belongs in the body
MAX_HEADER_LINE = 8190  # bytes incl. CRLF: the default of gunicorn's limit_request_field_size and Apache
MAX_HEADERS = 100  # fields per head: gunicorn's and Apache's default
MAX_HEAD_BYTES = 64 * 1024  # whole head: bounds the reader's buffer per connection, ~8x what browsers send
MAX_LEADING_EMPTY_LINES = 4  # RFC 9112 2.2 asks for at least one; more than a few is not a client bug
MAX_CONTENT_LENGTH_DIGITS = 18  # any 18-digit number fits in a signed 64-bit integer

_TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"  # RFC 9110 5.6.2
_METHOD = r"[-!#$%&'*+.^_`|~0-9A-Z]+"  # case-sensitive (RFC 9110 9.1); lower case is refused, as gunicorn does
_VISIBLE = r"\x21-\x7e\x80-\xff"  # VCHAR / obs-text, once the head is decoded as latin-1
_FIELD_VALUE = r"[\t\x20" + _VISIBLE + "]*"  # RFC 9110 5.5: no CTLs but HTAB
# The whole head in one match: only a rejected head is split into lines again (_diagnose) to name the fault.
_HEAD = re.compile(f"({_METHOD}) ([{_VISIBLE}]+) HTTP/1\\.([01])\r\n((?:{_TOKEN}:{_FIELD_VALUE}\r\n)*)\r\n")
_SINGLETONS = frozenset({"content-length", "host", "authorization", "content-type"})
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
        if not line:
            raise _bad("empty line inside the head", "bad_header")
        if line[0] in " \t":
            raise _bad("obsolete line folding is not accepted (RFC 9112 5.2)", "obs_fold")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN_RE.fullmatch(name):
            raise _bad("a header name must be a token followed directly by ':' (RFC 9112 5.1)", "bad_header")
        if not _FIELD_VALUE_RE.fullmatch(value):
            raise _bad("a header value contains a control character (RFC 9110 5.5)", "bad_header")
    raise _bad("malformed request head", "bad_request")


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
