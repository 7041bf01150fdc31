"""The HTTP layer: a `ThreadingHTTPServer`, one request handler, the route table and one error boundary.

Strategy: the handler reads the socket itself into a buffer with a deadline (`--client-timeout`), hands the head
to the pure, strict parser in `http11`, authenticates before anything else, routes from a table, reads the body
only within the route's size limit, calls the core (`FunctionManager`), and writes each response (head and body)
with one `sendall`, so Nagle and delayed ACK never stall keep-alive. The stdlib's `email.parser` header path is
not used: it is lenient (it lets malformed framing through) and costs about half the server's CPU per call.

Every request passes through `_respond`, the one error boundary: a `FaasError` becomes its own status and JSON
body; anything else is logged with its traceback and answered with a generic 500. Errors that leave the
connection's framing in doubt (or a body unread) close the connection after the answer.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import socket
import time
import traceback
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import http11, multipart
from .auth import Authenticator
from .config import Config
from .errors import (BadRequest, FaasError, HeaderFieldsTooLarge, InternalError, LengthRequired,
                     MethodNotAllowed, NotFound, PayloadTooLarge, RequestTimeout,
                     UnsupportedMediaType, UriTooLong)
from .faas import FunctionManager
from .sockets import set_timeouts
from .status import Sampler

__all__ = ["Server", "Handler", "ROUTES"]

log = logging.getLogger("tinyfaas_std")

MAX_SMALL_BODY = 64 * 1024    # routes that take no body still read (and drop) this much to keep framing in step
MIN_BODY_RATE = 64 * 1024     # bytes/s a client must sustain while sending a body, beyond --client-timeout
_RECV = 16 * 1024          # a typical request whole in one recv; below malloc's mmap threshold
_RECV_BULK = 1024 * 1024   # per recv while a large body is still due
_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _ClientGone(Exception):
    """The client reset or closed the connection while we were reading: there is no one to answer."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _json(value: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(value, ensure_ascii=True, allow_nan=False).encode())


def escape(text: str) -> str:
    """Request data made safe for a log line: control characters become escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


# -- routes: each takes (server, request head, path parameter, body) and returns a Reply --------------------

Route = Callable[["Server", http11.RequestHead, str, bytes], Reply]


def _upload(server: Server, req: http11.RequestHead, _: str, body: bytes) -> Reply:
    content_type = req.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise UnsupportedMediaType("upload with Content-Type multipart/form-data (curl -F)", code="not_multipart")
    form = _form(multipart.parse(body, content_type))
    return _json(server.manager.upload(form["name"], form["file"], form.get("requirements")))


_FORM_FIELDS = ("name", "file", "requirements")


def _form(parts: list[multipart.Part]) -> dict[str, Any]:
    by_name = {part.name: part for part in parts}
    repeated = sorted({p.name for p in parts if p.name in _FORM_FIELDS and by_name[p.name] is not p})
    if repeated:
        raise BadRequest(f"form field(s) sent twice: {', '.join(repeated)}", code="duplicate_field", fields=repeated)
    missing = [field for field in ("name", "file") if field not in by_name]
    if missing:
        raise BadRequest(f"missing form field(s): {', '.join(missing)}", code="missing_field", fields=missing)
    form: dict[str, Any] = {"name": _text(by_name["name"]), "file": by_name["file"].data}
    if "requirements" in by_name:
        form["requirements"] = _text(by_name["requirements"])
    return form


def _text(part: multipart.Part) -> str:
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"form field {part.name!r} is not UTF-8 text", code="bad_field") from None


def _list(server: Server, *_: Any) -> Reply:
    return _json(server.manager.names())


def _describe(server: Server, _: http11.RequestHead, name: str, __: bytes) -> Reply:
    return _json(server.manager.describe(name))


def _delete(server: Server, _: http11.RequestHead, name: str, __: bytes) -> Reply:
    return _json(server.manager.delete(name))


def _logs(server: Server, req: http11.RequestHead, name: str, _: bytes) -> Reply:
    lines = server.manager.read_logs(name, _limit(req.query))
    return Reply(200, b"[" + b",".join(lines) + b"]")


def _limit(query: str) -> int | None:
    try:
        params = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query),
                                       max_num_fields=8)
    except ValueError:
        raise BadRequest("the query string is malformed", code="bad_query") from None
    values = params.get("limit")
    if values is None:
        return None
    if len(values) != 1 or not (values[0].isascii() and values[0].isdigit()) or int(values[0]) < 1:
        raise BadRequest("limit must be one positive integer", code="bad_query")
    return int(values[0])


def _status(server: Server, *_: Any) -> Reply:
    return _json({**server.sampler.snapshot(), "functions": len(server.manager.names())})


def _invoke(server: Server, _: http11.RequestHead, name: str, body: bytes) -> Reply:
    answer = server.manager.invoke(name, body)
    return Reply(answer.status, answer.body)


# (method, path pattern, route, body limit attribute on Config or None for "no body expected")
ROUTES: list[tuple[str, re.Pattern[str], Route, str | None]] = [
    ("POST", re.compile(r"/function/([^/]+)"), _invoke, "max_body_bytes"),  # first: the hot path
    ("POST", re.compile(r"/admin/upload"), _upload, "max_upload_bytes"),
    ("GET", re.compile(r"/admin/functions"), _list, None),
    ("GET", re.compile(r"/admin/functions/([^/]+)"), _describe, None),
    ("DELETE", re.compile(r"/admin/functions/([^/]+)"), _delete, None),
    ("GET", re.compile(r"/admin/logs/([^/]+)"), _logs, None),
    ("GET", re.compile(r"/admin/status"), _status, None),
]


def _route(method: str, path: str) -> tuple[Route, str, str | None]:
    allowed = []
    for route_method, pattern, route, limit in ROUTES:
        match = pattern.fullmatch(path)
        if match:
            if route_method == method:
                return route, (match.group(1) if match.groups() else ""), limit
            allowed.append(route_method)
    if allowed:
        raise MethodNotAllowed(f"{method} is not allowed here", headers={"Allow": ", ".join(allowed)},
                               allow=allowed)
    raise NotFound("no such path", code="path_not_found")


# -- the server and its one handler -------------------------------------------------------------------------

class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # bursts of new connections wait in the kernel, not refused

    def __init__(self, address: tuple[str, int], config: Config, manager: FunctionManager,
                 sampler: Sampler) -> None:
        self.config = config
        self.manager = manager
        self.sampler = sampler
        self.auth = Authenticator(config.username, config.password)
        self.active: collections.deque[None] = collections.deque()  # one entry per request being answered
        super().__init__(address, Handler)

    def wait_idle(self, seconds: float) -> None:
        """Wait up to `seconds` for the requests being answered to be written out."""
        deadline = time.monotonic() + seconds
        while self.active and time.monotonic() < deadline:
            time.sleep(0.01)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.error("unhandled error serving %s:\n%s", client_address, traceback.format_exc())


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self._buf = bytearray()
        # A recv that waits --client-timeout fails; the deadline of a whole head or body is checked after each.
        set_timeouts(self.connection, self.server.config.client_timeout)

    def handle(self) -> None:
        self.close_connection = False
        while not self.close_connection:
            try:
                self.handle_one_request()
            except (OSError, _ClientGone):  # the peer went away; nothing left to tell it
                return

    def handle_one_request(self) -> None:
        deadline = time.monotonic() + self.server.config.client_timeout
        try:
            head = self._read_head(deadline)
        except FaasError as exc:  # a head too large, too slow or cut off: answer, then close
            self.close_connection = True
            self._send(*self._error_reply(exc))
            return
        if head is None:
            self.close_connection = True
            return
        self.server.active.append(None)  # requests being answered: shutdown lets them finish writing
        try:
            self._send(*self._respond(head))
        finally:
            self.server.active.pop()

    def _respond(self, head: bytes) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
        """The one error boundary: whatever happens, the client gets one JSON answer."""
        req, self._body_pending = None, False
        try:
            req = http11.parse_head(head)
            self.close_connection = not req.keep_alive
            reply = self._dispatch(req)
            return reply.status, reply.body, reply.headers
        except FaasError as exc:
            if exc.close or (req is not None and self._body_pending):
                self.close_connection = True
            return self._error_reply(exc)
        except _ClientGone:
            raise
        except Exception:
            self.close_connection = True
            log.error("bug while serving %s %s:\n%s", self.client_address[0],
                      escape(req.target if req else "?"), traceback.format_exc())
            return self._error_reply(InternalError("internal server error; the details are in the server log"))

    def _dispatch(self, req: http11.RequestHead) -> Reply:
        self._body_pending = bool(req.content_length) or req.chunked
        self._authenticate(req)
        route, param, limit_name = _route(req.method, req.path)
        limit = getattr(self.server.config, limit_name) if limit_name else MAX_SMALL_BODY
        if limit_name == "max_upload_bytes" and req.content_length is None and not req.chunked:
            raise LengthRequired("an upload needs a Content-Length", code="length_required")
        if (req.content_length or 0) > limit:
            raise PayloadTooLarge(f"the body is {req.content_length} bytes; the limit here is {limit}", limit=limit)
        if req.expect_continue and self._body_pending:
            self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self._read_chunked(limit) if req.chunked else self._read_body(req.content_length or 0)
        self._body_pending = False
        return route(self.server, req, param, body)

    def _authenticate(self, req: http11.RequestHead) -> None:
        try:
            self.server.auth.check(req.headers.get("authorization"))
        except FaasError:
            log.warning("failed authentication from %s for %s %s", self.client_address[0], req.method,
                        escape(req.target[:200]))
            raise

    # -- socket I/O: the only place that touches the connection ----------------------------------------------

    def _recv(self, deadline: float, size: int = _RECV) -> bytes:
        try:
            data = self.connection.recv(size)
        except BlockingIOError:  # SO_RCVTIMEO expired: the client stalled for --client-timeout
            raise TimeoutError from None
        except OSError:
            raise _ClientGone from None
        if data and time.monotonic() > deadline:
            raise TimeoutError  # bytes keep trickling in, but too slowly
        return data

    def _read_head(self, deadline: float) -> bytes | None:
        buf, start = self._buf, 0
        while True:
            end = http11.find_head_end(buf, start)
            if end >= 0:
                head = bytes(buf[:end])
                del buf[:end]
                return head
            if len(buf) > http11.MAX_HEAD_BYTES:
                raise _too_large(buf)
            start = max(0, len(buf) - 3)
            try:
                chunk = self._recv(deadline)
            except TimeoutError:
                if buf.strip():
                    raise RequestTimeout("the request head did not arrive in time") from None
                return None  # an idle keep-alive connection: close it quietly
            except _ClientGone:
                return None
            if not chunk:
                if buf.strip():
                    raise BadRequest("the connection closed in the middle of the request head", close=True)
                return None
            buf += chunk

    def _read_body(self, length: int) -> bytes:
        deadline = time.monotonic() + self.server.config.client_timeout + length / MIN_BODY_RATE
        buf = self._buf
        while len(buf) < length:
            try:
                chunk = self._recv(deadline, min(max(length - len(buf), _RECV), _RECV_BULK))
            except TimeoutError:
                raise RequestTimeout("the request body did not arrive in time") from None
            if not chunk:
                raise BadRequest(f"the body ended after {len(buf)} of {length} bytes", code="short_body",
                                 close=True)
            buf += chunk
        body = bytes(buf[:length])
        del buf[:length]
        return body

    def _read_chunked(self, limit: int) -> bytes:
        deadline = time.monotonic() + self.server.config.client_timeout + limit / MIN_BODY_RATE
        decoder = http11.ChunkedDecoder(limit)
        rest = decoder.feed(bytes(self._buf))
        while not decoder.done:
            try:
                chunk = self._recv(deadline)
            except TimeoutError:
                raise RequestTimeout("the chunked body did not arrive in time") from None
            if not chunk:
                raise BadRequest("the connection closed inside a chunked body", code="short_body", close=True)
            rest = decoder.feed(chunk)
        self._buf[:] = rest  # the start of the next pipelined request
        return decoder.body()

    def _error_reply(self, exc: FaasError) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
        if exc.status >= 500 and exc.status != 503:
            log.info("answered %d %s to %s", exc.status, exc.code, self.client_address[0])
        return exc.status, json.dumps(exc.body(), ensure_ascii=True, default=str).encode(), \
            tuple(exc.headers.items())

    def _send(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...]) -> None:
        """Head and body in one write. Every body ends in a newline, so curl output ends its line."""
        if status == 200 and not headers and not self.close_connection:  # the hot path: one format, one write
            self.connection.sendall(b"%s%d\r\n\r\n%s\n" % (_OK_HEAD, len(body) + 1, body))
            return
        lines = [f"HTTP/1.1 {status} {_reason(status)}", "Content-Type: application/json",
                 f"Content-Length: {len(body) + 1}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if self.close_connection:
            lines.append("Connection: close")
        self.connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body + b"\n")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.info("%s %s", self.client_address[0], escape(format % args))


def _too_large(buf: bytearray) -> FaasError:
    if buf.find(b"\n", 0, http11.MAX_REQUEST_LINE + 2) < 0:
        return UriTooLong(f"the request line exceeds {http11.MAX_REQUEST_LINE} bytes")
    return HeaderFieldsTooLarge(f"the request head exceeds {http11.MAX_HEAD_BYTES} bytes")


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def make_server(config: Config, manager: FunctionManager, sampler: Sampler) -> Server:
    server = Server((config.host, config.port), config, manager, sampler)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return server
