"""The HTTP layer: a `ThreadingHTTPServer`, one request handler and one error boundary.

Strategy: the handler reads the socket itself into a buffer with a deadline (`--client-timeout`), hands the head
to the pure, strict parser in `http11`, authenticates before anything else (auth.py; a throttled address first
gets 429), finds the route in its server's table (routes.py's; serve-one has its own), authorises the user for it
(users.py), reads the body only within the route's size limit, runs the route (which calls the core), and writes
each response (head and body) with one `sendall`, so Nagle and delayed ACK never stall keep-alive. The stdlib's
`email.parser` header path is not used: it is lenient (it lets malformed framing through) and costs about half the
server's CPU per call.

Every request passes through `_respond`, the one error boundary: a `FaasError` becomes its own status and JSON
body; anything else is logged with its traceback and answered with a generic 500. Errors that leave the
connection's framing in doubt (or a body unread) close the connection after the answer.

HEAD is GET without the body (RFC 9110 9.3.2): the same status and fields, Content-Length included, and no body
bytes, for errors too, so a pipelining client stays in step. An answer whose size is not known in advance (a
whole log) is streamed: chunked to HTTP/1.1 clients, until close to HTTP/1.0 ones; an error once it has started
can only close the connection. At most --max-connections connections are served at once; the next is answered
503 on the accepting thread, without a thread of its own, and closed.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import re
import signal
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Generator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Protocol

from . import http11, throttle
from .auth import Authenticator, NoAuth
from .config import Config
from .errors import (BadRequest, FaasError, Forbidden, HeaderFieldsTooLarge, InternalError, LengthRequired,
                     PayloadTooLarge, RequestTimeout, ServiceUnavailable, TooManyRequests, UriTooLong)
from .faas import FunctionManager
from .metrics import Metrics
from .peers import UNKNOWN, peer_uid
from .routes import PUBLIC, ROUTES, Reply, RouteSpec, allow, find_route
from .sockets import set_timeouts
from .status import Sampler
from .users import User, UserStore

__all__ = ["HttpServer", "Server", "Handler", "Core", "make_server", "configure_socket", "tls_context",
           "stop_on_signals"]

log = logging.getLogger("tinyfaas_std")

MAX_SMALL_BODY = 64 * 1024    # routes that take no body still read (and drop) this much to keep framing in step
MIN_BODY_RATE = 64 * 1024     # bytes/s a client must sustain while sending a body, beyond --client-timeout
_RECV = 16 * 1024          # a typical request whole in one recv; below malloc's mmap threshold
_RECV_BULK = 1024 * 1024   # per recv while a large body is still due
_SEND_BLOCK = 64 * 1024    # a streamed answer is written in pieces of about this size (one chunk each)
_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
_NO_CONTENT = (204, 205, 304)  # statuses whose answers have no content (RFC 9110 15.3.5, 15.3.6, 15.4.5)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _ClientGone(Exception):
    """The client reset or closed the connection while we were reading: there is no one to answer."""


def escape(text: str) -> str:
    """Request data made safe for a log line: control characters become escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


# -- the servers and their one handler ----------------------------------------------------------------------

class Core(Protocol):
    """What the handler itself asks of the core behind it (the routes ask more of their own server's)."""
    metrics: Metrics

    @property
    def stopping(self) -> bool: ...

    def drain(self, grace: float) -> None: ...


class HttpServer(ThreadingHTTPServer):
    """The HTTP side every server shares: the handler, its route table, authentication and the connection bound.
    `Server` below is the full server; `serve_one.py` serves one function with its own small table."""
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # bursts of new connections wait in the kernel, not refused
    routes: list[RouteSpec] = ROUTES                                        # found by find_route
    public: dict[tuple[str, str], Callable[[Any], Reply]] = PUBLIC          # (method, path): no credentials
    function_page_headers: tuple[tuple[str, str], ...] = ()                 # added to http functions' answers
    # paths another site's page may change things on: calls (see _refuse_other_sites); "/" for every path
    open_to_other_sites: tuple[str, ...] = ("/function/", "/async-function/")

    def __init__(self, address: tuple[str, int], config: Config, manager: Core,
                 auth: Authenticator | NoAuth) -> None:
        self.config = config
        self.manager = manager
        self.auth = auth
        self.throttle = throttle.LoginThrottle(config.max_failed_logins)
        # uids whose connections are served only /function/ routes: the functions' own, when they have them
        self.function_uids: range | None = None
        self.active: collections.deque[None] = collections.deque()  # one entry per request being answered
        self.connections = 0  # being served, each by its thread; changed under _connections_lock
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on a thread of its own, unless --max-connections are being served: then it is
        answered 503 here, on the accepting thread, and closed, so a flood of connections costs no threads."""
        with self._connections_lock:
            full = self.connections >= self.config.max_connections
            if not full:
                self.connections += 1
        if full:
            _refuse(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: the connection is not being served
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._connections_lock:
            self.connections -= 1

    def wait_idle(self, seconds: float) -> None:
        """Wait up to `seconds` for the requests being answered to be written out."""
        deadline = time.monotonic() + seconds
        while self.active and time.monotonic() < deadline:
            time.sleep(0.01)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.error("unhandled error serving %s:\n%s", client_address, traceback.format_exc())


class Server(HttpServer):
    """The server of SPEC 1-13: every route, the users of `data/users.json`.

    An http function's answer shares its origin with the dashboard and the admin API, so a page a function
    serves (a developer's, say) could use the credentials an admin's browser holds for this origin. Its answers
    are therefore a sandbox of their own origin: scripts, forms and pop-ups still work, but to the browser the page
    is from no site (`Origin: null`), so its requests are other-site requests, which `Handler` refuses."""
    manager: FunctionManager
    function_page_headers = (("Content-Security-Policy",
                              "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"),)

    def __init__(self, address: tuple[str, int], config: Config, manager: FunctionManager,
                 sampler: Sampler) -> None:
        self.sampler = sampler
        self.users = UserStore(config.data_dir / "users.json")
        super().__init__(address, config, manager, Authenticator(config.username, config.password, self.users))
        self.function_uids = config.uids if manager.sandbox.isolation.per_function_user else None


class Handler(BaseHTTPRequestHandler):
    server: HttpServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self._buf = bytearray()
        # A recv that waits --client-timeout fails; the deadline of a whole head or body is checked after each.
        set_timeouts(self.connection, self.server.config.client_timeout)
        self._from_function: bool | None = None  # whether a function opened it: asked on the first admin route

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()  # within --client-timeout (the socket's kernel timeouts)
            except (OSError, ValueError):  # not TLS, an old protocol, a stall: nothing to answer
                return
        self.close_connection = False
        while not self.close_connection:
            try:
                self.handle_one_request()
            except (OSError, _ClientGone):  # the peer went away; nothing left to tell it
                return

    def handle_one_request(self) -> None:
        deadline = time.monotonic() + self.server.config.client_timeout
        self._head_only, self._http10 = False, False  # what the answer must look like; known once parsed
        try:
            head = self._read_head(deadline)
        except FaasError as exc:  # a head too large, too slow or cut off: answer, then close
            self.close_connection = True
            self._head_only = _is_head(self._buf)
            self._send(self._error_reply(exc))
            return
        if head is None:
            self.close_connection = True
            return
        self.server.active.append(None)  # requests being answered: shutdown lets them finish writing
        began = time.monotonic()
        try:
            reply = self._respond(head)
            self._send(reply)
        finally:
            self.server.active.pop()
        if self.server.config.access_log:
            self._log_access(head, reply, began)

    def _respond(self, head: bytes) -> Reply:
        """The one error boundary: whatever happens, the client gets one JSON answer."""
        req, self._body_pending = None, False
        self._head_only = _is_head(head)  # known even if the head does not parse
        try:
            req = http11.parse_head(head)
            self.close_connection = not req.keep_alive
            self._http10 = req.version == (1, 0)
            return self._dispatch(req)
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
        public = self.server.public.get((req.method if req.method != "HEAD" else "GET", req.path))
        if public is not None:  # the one route without credentials (SPEC 12); a body sent anyway is dropped
            if self._body_pending:
                self._read_request_body(req, None)
            return public(self.server)
        headers = req.headers
        if ("origin" in headers or headers.get("sec-fetch-site", "none") not in _THIS_SITE) \
                and req.method not in _SAFE_METHODS and not req.path.startswith(self.server.open_to_other_sites):
            _refuse_other_sites(req)  # a browser's request to change something
        user = self._authenticate(req)
        if not req.path.startswith(("/function/", "/async-function/")) and self._opened_by_function():
            raise Forbidden("a function may call functions, not the admin routes", code="forbidden_for_functions")
        spec, param = find_route(req.method, req.path, self.server.routes)
        allow(user, spec.access, param if spec.scoped else None)
        return spec.route(self.server, req, param, self._read_request_body(req, spec.limit), user)

    def _read_request_body(self, req: http11.RequestHead, limit_name: str | None) -> bytes:
        """The body, within the limit named by `limit_name` (an attribute of Config; None: MAX_SMALL_BODY)."""
        limit = getattr(self.server.config, limit_name) if limit_name else MAX_SMALL_BODY
        if limit_name == "max_upload_bytes" and req.content_length is None and not req.chunked:
            raise LengthRequired("an upload needs a Content-Length", code="length_required")
        if (req.content_length or 0) > limit:
            raise PayloadTooLarge(f"the body is {req.content_length} bytes; the limit here is {limit}", limit=limit)
        if req.expect_continue and self._body_pending:
            self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self._read_chunked(limit) if req.chunked else self._read_body(req.content_length or 0)
        self._body_pending = False
        return body

    def _opened_by_function(self) -> bool:
        """Whether a function's process opened this connection (see peers.py); looked up once per connection. A
        loopback peer that cannot be told is refused admin routes too: it might be a function."""
        if self._from_function is None:
            uids = self.server.function_uids
            uid = None if uids is None else peer_uid(self.client_address)
            self._from_function = uids is not None and uid is not None and (uid == UNKNOWN or uid in uids)
        return self._from_function

    def _authenticate(self, req: http11.RequestHead) -> User:
        address = self.client_address[0]
        wait = self.server.throttle.blocked(address)
        if wait:
            raise TooManyRequests("too many failed logins from this address; try again later",
                                  code="too_many_failed_logins", headers={"Retry-After": str(math.ceil(wait))})
        header = req.headers.get("authorization")
        try:
            return self.server.auth.check(header)
        except FaasError:
            log.warning("failed authentication from %s for %s %s", address, req.method, escape(req.target[:200]))
            block = self.server.throttle.failed(address) if header is not None else 0  # no header: no login tried
            if block:
                log.warning("%s is blocked for %g s after %d failed logins within %g s", address, block,
                            self.server.config.max_failed_logins, throttle.WINDOW)
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

    def _error_reply(self, exc: FaasError) -> Reply:
        if exc.status >= 500 and exc.status != 503:
            log.info("answered %d %s to %s", exc.status, exc.code, self.client_address[0])
        return _error(exc)

    def _send(self, reply: Reply) -> None:
        """Head and body in one write. Every body ends in a newline, so curl output ends its line."""
        self.server.manager.metrics.answer(reply.status)
        body = reply.body
        if reply.stream is not None:
            self._send_stream(reply, reply.stream)
        elif reply.status == 200 and not (reply.headers or reply.raw or self.close_connection or self._head_only
                                          or self._http10):  # the hot path
            if reply.call_id:
                self.connection.sendall(b"%s%d\r\nX-Call-Id: %s\r\n\r\n%s\n" % (
                    _OK_HEAD, len(body) + 1, reply.call_id.encode(), body))
            else:
                self.connection.sendall(b"%s%d\r\n\r\n%s\n" % (_OK_HEAD, len(body) + 1, body))
        elif reply.raw:  # an http function's answer, its Content-Type among its headers
            body = b"" if reply.status in _NO_CONTENT else body
            # RFC 9110 8.6: none on a 204; a 304's would have to be the 200's size, which is unknown here
            length = [] if reply.status in (204, 304) else [f"Content-Length: {len(body)}"]
            head = _head(reply.status, [*length, *self._fields(reply)], content_type=None)
            self.connection.sendall(head if self._head_only else head + body)
        else:
            head = _head(reply.status, [f"Content-Length: {len(body) + 1}", *self._fields(reply)])
            self.connection.sendall(head if self._head_only else head + body + b"\n")

    def _send_stream(self, reply: Reply, pieces: Generator[bytes, None, None]) -> None:
        """A body of unknown size: chunked to an HTTP/1.1 client; to an HTTP/1.0 one, until the connection closes
        (RFC 9112 6.3). Written in pieces of about _SEND_BLOCK bytes (a larger piece as it is): what is held is one
        piece, never the whole answer."""
        chunked = not self._http10
        self.close_connection |= not chunked
        try:
            framing = ["Transfer-Encoding: chunked"] if chunked else []
            self._sendall(_head(reply.status, [*framing, *self._fields(reply)]))
            if self._head_only:
                return
            pending = bytearray()
            for piece in pieces:
                if len(pending) + len(piece) >= _SEND_BLOCK:
                    self._write_piece(pending, chunked)
                    pending.clear()
                    if len(piece) >= _SEND_BLOCK:  # a large piece goes out as it is, uncopied
                        self._write_piece(piece, chunked)
                        continue
                pending += piece
            pending += b"\n"
            self._write_piece(pending, chunked)
            if chunked:
                self._sendall(b"0\r\n\r\n")
        except _ClientGone:
            raise
        except Exception:  # the answer has started: the only honest signal left is a cut connection
            self.close_connection = True
            log.error("error while streaming the answer to %s:\n%s", self.client_address[0], traceback.format_exc())
        finally:
            pieces.close()  # release the files the pieces come from, also when not read to the end

    def _write_piece(self, data: bytes | bytearray, chunked: bool) -> None:
        if not data:
            return  # a zero-size chunk would end the body
        if chunked:
            self._sendall(b"%x\r\n" % len(data))
        self._sendall(data)
        if chunked:
            self._sendall(b"\r\n")

    def _sendall(self, data: bytes | bytearray) -> None:
        try:
            self.connection.sendall(data)
        except OSError:  # reset, or stalled past --client-timeout (SO_SNDTIMEO)
            raise _ClientGone from None

    def _fields(self, reply: Reply) -> list[str]:
        """The reply's own fields and the connection's fate, beside the framing."""
        fields = [f"{name}: {value}" for name, value in reply.headers]
        if reply.call_id and not reply.raw:  # a raw answer has it among its headers already
            fields.append(f"X-Call-Id: {reply.call_id}")
        if self.close_connection:
            fields.append("Connection: close")
        elif self._http10:
            fields.append("Connection: keep-alive")  # an HTTP/1.0 client closes unless told (RFC 9112 9.3)
        return fields

    def _log_access(self, head: bytes, reply: Reply, began: float) -> None:
        """--access-log: client, method, path, status, body bytes ("-" when streamed), milliseconds, call id."""
        method, _, rest = head.lstrip(b"\r\n").partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        size = "-" if reply.stream is not None else str(len(reply.body))
        log.info("access %s %s %s %d %s %.1fms %s", self.client_address[0], escape(method[:16].decode("latin-1")),
                 escape(target[:500].decode("latin-1")), reply.status, size, (time.monotonic() - began) * 1e3,
                 reply.call_id or "-")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.info("%s %s", self.client_address[0], escape(format % args))


_THIS_SITE = ("none", "same-origin")  # Sec-Fetch-Site: typed or bookmarked by the user, or from this origin's page
_SAFE_METHODS = ("GET", "HEAD")


def _refuse_other_sites(req: http11.RequestHead) -> None:
    """403 for a change that a browser sends on behalf of another site (cross-site request forgery): a browser adds
    the Basic Auth credentials it holds for this server to any request to it, whichever page makes it. So a request
    to change something (not GET or HEAD) that another site's page made (`Sec-Fetch-Site`), or whose `Origin` is
    not this host, is refused, whatever credentials it carries. Reads stay open: another site's page cannot see
    their answers (no CORS here). Calls stay open too: a function is called as itself, whoever asks, and an http
    function's page may post to its own path. curl and the client send neither header. Only the host is
    compared, not the scheme, so that the server works behind a TLS proxy."""
    headers = req.headers
    site = headers.get("sec-fetch-site", "none")
    if site not in _THIS_SITE:
        raise Forbidden(f"a request another site made (Sec-Fetch-Site: {escape(site[:40])}) is refused",
                        code="cross_site")
    origin = headers.get("origin", "")
    if origin.partition("://")[2].lower() != headers.get("host", "").lower():
        raise Forbidden(f"a request from another origin ({escape(origin[:100])}) is refused", code="cross_site")


def _is_head(request: bytes | bytearray) -> bool:
    """Whether the request (its head, or the part of it read so far) is a HEAD request."""
    return bytes(request[:16]).lstrip(b"\r\n").startswith(b"HEAD ")


def _head(status: int, fields: list[str], content_type: str | None = "application/json") -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}", *([f"Content-Type: {content_type}"] if content_type else []),
             *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _error(exc: FaasError) -> Reply:
    return Reply(exc.status, json.dumps(exc.body(), ensure_ascii=True, default=str).encode(),
                 tuple(exc.headers.items()))


def _refuse(request: socket.socket) -> None:
    """Answer 503 on a connection past --max-connections, without blocking the accepting thread."""
    reply = _error(ServiceUnavailable("the server is serving as many connections as --max-connections allows; "
                                      "try again later", code="too_many_connections"))
    head = _head(reply.status, [f"Content-Length: {len(reply.body) + 1}", "Connection: close"])
    if isinstance(request, ssl.SSLSocket):
        return  # no handshake yet, and none is done on the accepting thread: the close says it
    try:
        request.setblocking(False)
        request.send(head + reply.body + b"\n")  # a few hundred bytes: a new connection's buffer takes them
        # Take what the client already sent: closing with it unread resets the connection, losing the answer.
        request.recv(MAX_SMALL_BODY)
    except OSError:  # nothing sent yet (EAGAIN) or the client is gone: the close follows either way
        pass


def _too_large(buf: bytearray) -> FaasError:
    if buf.find(b"\n", 0, http11.MAX_REQUEST_LINE + 2) < 0:
        return UriTooLong(f"the request line exceeds {http11.MAX_REQUEST_LINE} bytes")
    return HeaderFieldsTooLarge(f"the request head exceeds {http11.MAX_HEAD_BYTES} bytes")


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def make_server(config: Config, manager: FunctionManager, sampler: Sampler) -> Server:
    server = Server((config.host, config.port), config, manager, sampler)
    configure_socket(server)
    return server


def configure_socket(server: HttpServer) -> None:
    """TCP keep-alive on the listening socket (accepted connections inherit it); TLS with --tls-cert/--tls-key."""
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if server.config.tls_cert:
        server.socket = tls_context(server.config).wrap_socket(server.socket, server_side=True,
                                                               do_handshake_on_connect=False)


def tls_context(config: Config) -> ssl.SSLContext:
    """HTTPS with the standard library: TLS 1.2 or newer, the certificate chain and key of --tls-cert/--tls-key.
    The handshake happens on the connection's own thread (Handler.handle), never on the accepting one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def stop_on_signals(server: HttpServer, grace: float) -> threading.Event:
    """SIGTERM and SIGINT stop `server`: its core drains (calls in flight finish, for up to `grace` seconds) while
    the server keeps accepting, so that a load balancer still sending requests gets `503` answers (`/healthz`:
    `stopping`; a call: `shutting_down`) rather than refused or reset connections; then `serve_forever` returns.
    The event is set once a signal has come."""
    stopping = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("received %s: finishing calls in flight (up to %gs), then stopping",
                 signal.Signals(signum).name, grace)
        threading.Thread(target=drain_then_stop, name="shutdown", daemon=True).start()

    def drain_then_stop() -> None:
        try:
            server.manager.drain(grace)
        finally:
            server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return stopping
