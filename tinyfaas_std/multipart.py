"""Pure multipart/form-data parser (RFC 7578 on top of RFC 2046 section 5.1): bytes in, parts out.

Strategy: this module owns turning a complete request body plus its Content-Type value into a list of frozen
`Part` values. It never reads a socket, never writes a response, never touches the file system and never treats a
filename as a path: `Part.filename` is whatever the client sent. Every failure is a `MultipartError` (400); going
past a limit is a `MultipartTooLarge` (413). Nothing is truncated silently. Each body compiles one delimiter pattern,
so the scan for delimiters (and the skipping of look-alikes) runs in C, never byte by byte in Python.

Policies (the RFC leaves these open, or real clients stray from it):
- Line breaks: CRLF (RFC 2046 section 5.1.1). A body whose first delimiter line ends in a bare LF is parsed with
  LF as the line break throughout, as old IE sent it. Bare CR line breaks are rejected: no client sends them.
- Preamble before the first delimiter and epilogue after the close delimiter are ignored; transport padding (SP or
  HTAB after a boundary) is allowed. A delimiter-like line that is not followed by padding and a line break is data.
- An empty form is only accepted as `--boundary--` with nothing but blank lines before it; a close delimiter
  after a non-blank preamble means no part was ever opened (RFC 2046 requires at least one body part).
- Part headers: names are RFC 9110 tokens, values must not hold NUL, CR or LF; folded (obs-fold) lines are
  rejected as RFC 9112 section 5.2 allows. Values decode as strict UTF-8, else as latin-1. Content-Disposition,
  Content-Type and Content-Transfer-Encoding may appear at most once per part.
- Content-Disposition must be `form-data` with a `name` (RFC 7578 section 4.2). `filename*` and RFC 2231
  continuations are rejected: RFC 7578 section 4.2 says senders MUST NOT use them, and picking one of two names
  silently would be worse. In quoted strings only `\\"` and `\\\\` are unescaped; any other backslash is kept,
  because browsers (WHATWG HTML) and old IE send raw Windows paths like `C:\\x\\y` unescaped.
- Content-Transfer-Encoding (deprecated by RFC 7578 section 4.7, still sent by some clients): 7bit, 8bit and
  binary are identity; base64 and quoted-printable are decoded strictly (RFC 2045 section 6.8 allows rejecting
  stray characters); anything else is a 400.
- The boundary may hold any printable ASCII, 1 to 70 bytes, not ending in a space: it is only compared byte-wise.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from tinyfaas_std.errors import BadRequest, PayloadTooLarge

__all__ = [
    "MAX_BOUNDARY", "MAX_PARTS", "MAX_PART_HEADER_BYTES", "MAX_PART_HEADERS",
    "MultipartError", "MultipartTooLarge", "Part", "parse",
]

MAX_BOUNDARY = 70  # RFC 2046 section 5.1.1: a boundary is 1 to 70 characters.
MAX_PARTS = 64  # an upload has 3 fields; 64 is generous and bounds the work per request.
MAX_PART_HEADER_BYTES = 8192  # per part header block; browsers send well under 300 bytes.
MAX_PART_HEADERS = 32  # per part; browsers send 1 to 3 header lines.

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 9110 section 5.6.2
_HEADER_LINE = re.compile(rf"({_TOKEN}):(.*)", re.DOTALL)  # no space before the colon (RFC 9112 5.1)
_PARAM = re.compile(rf'[ \t]*;[ \t]*(?:({_TOKEN})[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN})))?', re.DOTALL)
_QUOTED_PAIR = re.compile(r'\\([\\"])')
_BAD_QP = re.compile(rb"=(?![0-9A-Fa-f]{2}|[ \t]*(?:\r?\n|\Z))")  # "=" that is neither an escape nor a soft break
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
_UNIQUE_HEADERS = ("content-disposition", "content-type", "content-transfer-encoding")


class MultipartError(BadRequest, ValueError):
    """The body or its Content-Type is not well-formed multipart/form-data."""

    status, code = 400, "bad_multipart"


class MultipartTooLarge(MultipartError, PayloadTooLarge):
    """The body is well-formed so far but goes past one of the limits above."""

    # Set explicitly: the MRO would find MultipartError's 400 first. `close` stays False, unlike PayloadTooLarge,
    # because the whole body was read before parsing, so the connection's framing is intact.
    status, code, close = 413, "multipart_too_large", False


@dataclass(frozen=True, slots=True)
class Part:
    """One form field or file, with its data already transfer-decoded."""

    name: str
    filename: str | None
    content_type: str | None
    headers: tuple[tuple[str, str], ...]
    data: bytes

    @property
    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MultipartError(f"part {self.name!r} is not valid UTF-8") from exc


def parse(body: bytes, content_type: str, *, max_parts: int = MAX_PARTS,
          max_header_bytes: int = MAX_PART_HEADER_BYTES) -> list[Part]:
    """Split a whole multipart/form-data body into its parts, in order."""
    dash = b"--" + _boundary(content_type)
    newline, pos = _opening(body, dash)
    parts: list[Part] = []
    if not newline:
        return parts
    delimiter = _delimiter(newline, dash)
    while True:
        match = delimiter.search(body, pos)
        if match is None:
            raise MultipartError("body ends without a close delimiter")
        if len(parts) >= max_parts:
            raise MultipartTooLarge(f"more than {max_parts} parts", limit=max_parts)
        parts.append(_part(body, pos, match.start(), newline, max_header_bytes))
        if match[1] == b"--":
            return parts  # the rest is epilogue, ignored
        pos = match.end()


def _boundary(content_type: str) -> bytes:
    media_type = content_type.partition(";")[0]
    if media_type.strip(" \t").lower() != "multipart/form-data":
        raise MultipartError(f"content type {media_type.strip()[:80]!r} is not multipart/form-data")
    boundary = _params(content_type[len(media_type):]).get("boundary")
    if not boundary:
        raise MultipartError("multipart/form-data without a boundary parameter")
    if len(boundary) > MAX_BOUNDARY:
        raise MultipartError(f"boundary longer than {MAX_BOUNDARY} characters (RFC 2046)")
    if not (boundary.isascii() and boundary.isprintable()) or boundary.endswith(" "):
        raise MultipartError("boundary must be printable ASCII and must not end with a space")
    return boundary.encode("ascii")


def _params(text: str) -> dict[str, str]:
    """Parse `*( OWS ";" OWS [ name "=" value ] )` (RFC 9110 section 5.6.6); names are case-insensitive."""
    params: dict[str, str] = {}
    pos, stop = 0, len(text.rstrip(" \t"))
    while pos < stop:
        match = _PARAM.match(text, pos)
        if match is None:
            raise MultipartError(f"malformed parameters: {text[:80]!r}")
        pos = match.end()
        name, quoted, token = match.groups()
        if name is None:
            continue
        name = name.lower()
        if name in params:
            raise MultipartError(f"parameter {name!r} appears twice")
        params[name] = token if quoted is None else _QUOTED_PAIR.sub(r"\1", quoted)
    return params


def _opening(body: bytes, dash: bytes) -> tuple[bytes, int]:
    """Find the first dash-boundary line; return its line break (b"" for an empty form) and where part 1 starts."""
    match = re.compile(rb"(?<![^\n])" + re.escape(dash) + rb"(?:--|[ \t]*(\r\n|\n|\r))").search(body)
    if match is None:
        raise MultipartError("no opening boundary delimiter")
    if match[1] is None:
        if body[:match.start()].strip(b"\r\n"):
            raise MultipartError("close delimiter before any part was opened")
        return b"", match.end()
    if match[1] == b"\r":
        raise MultipartError("bare CR line breaks are not accepted")
    return match[1], match.end()


def _delimiter(newline: bytes, dash: bytes) -> re.Pattern[bytes]:
    """A delimiter is a line break, the dash-boundary, then "--" (close) or padding and a line break."""
    return re.compile(re.escape(newline + dash) + rb"(--|[ \t]*" + re.escape(newline) + rb")")


def _part(body: bytes, pos: int, end: int, newline: bytes, max_header_bytes: int) -> Part:
    if body.startswith(newline, pos):
        raise MultipartError("part without headers; Content-Disposition is required")
    # The blank line may share its line break with the delimiter: a part may have headers and no body at all.
    window = min(end + len(newline), pos + max_header_bytes + 2 * len(newline))
    split = body.find(newline * 2, pos, window)
    if split < 0:
        if window < end + len(newline):
            raise MultipartTooLarge(f"part headers longer than {max_header_bytes} bytes", limit=max_header_bytes)
        raise MultipartError("part headers do not end with a blank line")
    headers = _headers(body[pos:split].split(newline))
    names = [name for name, _ in headers]
    for name in _UNIQUE_HEADERS:
        if names.count(name) > 1:
            raise MultipartError(f"part repeats the {name} header")
    found = dict(headers)
    disposition = found.get("content-disposition")
    if disposition is None:
        raise MultipartError("part without a Content-Disposition header")
    kind = disposition.partition(";")[0]
    params = _params(disposition[len(kind):])
    if kind.strip(" \t").lower() != "form-data" or "name" not in params:
        raise MultipartError("Content-Disposition must be form-data with a name (RFC 7578 section 4.2)")
    if any("*" in key for key in params):
        raise MultipartError("extended parameters such as filename* are not accepted (RFC 7578 section 4.2)")
    data = _decode(body[split + 2 * len(newline):end], found.get("content-transfer-encoding"))
    return Part(params["name"], params.get("filename"), found.get("content-type"), tuple(headers), data)


def _headers(lines: list[bytes]) -> list[tuple[str, str]]:
    if len(lines) > MAX_PART_HEADERS:
        raise MultipartTooLarge(f"more than {MAX_PART_HEADERS} headers in a part", limit=MAX_PART_HEADERS)
    headers: list[tuple[str, str]] = []
    for raw in lines:
        line = _text(raw)
        match = _HEADER_LINE.fullmatch(line)
        if match is None or any(c in line for c in "\0\r\n"):
            reason = "folded header lines are not accepted" if raw[:1] in (b" ", b"\t") else "malformed header"
            raise MultipartError(f"{reason}: {line[:80]!r}")
        headers.append((match[1].lower(), match[2].strip(" \t")))
    return headers


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _decode(data: bytes, encoding: str | None) -> bytes:
    name = (encoding or "binary").lower()
    if name in _IDENTITY_ENCODINGS:
        return data
    try:
        if name == "base64":
            return base64.b64decode(data.translate(None, b" \t\r\n"), validate=True)
        if name == "quoted-printable" and _BAD_QP.search(data) is None:
            return binascii.a2b_qp(data)
    except binascii.Error as exc:
        raise MultipartError(f"invalid {name} data: {exc}") from exc
    raise MultipartError(f"unsupported or invalid Content-Transfer-Encoding {encoding!r}")
