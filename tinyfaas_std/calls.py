"""Calling a function: find its live version, lend a worker, send the call, record it, shape the answer.

Strategy: `Caller.invoke` is the hot path. It reads the live table (live.py) without a lock any deployment
holds, sends the body to a warm worker as it came (the worker applies the calling convention, conventions.py),
and splices the JSON bytes the worker returns into the answer and the log record without decoding them. Only an
`http` function's answer head is decoded here, to check it before its headers reach a client. Every call, whatever
its outcome, is appended to the function's log before its answer is returned, and every answer, errors included,
carries `X-Call-Id`.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import conventions, protocol
from .bodies import BadBody
from .errors import BadRequest, FaasError, MethodNotAllowed, NotFound, ServiceUnavailable, WorkerCrashed
from .live import Live, LiveTable, shutting_down
from .logs import encode_record
from .metrics import Metrics
from .workers import PoolClosed, Worker, WorkerDied, WorkerTimeout

__all__ = ["Caller", "Answer", "Started", "Request", "check_request"]

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


Request = tuple[str, str, str, dict[str, str]]  # method, path after the name, raw query, headers


@dataclass(slots=True)  # not frozen, for the hot path's sake (as Started); nothing changes one once made
class Answer:
    """A finished call: the status, the body and its fields. `raw`: an http function's own body, sent as it is
    (its Content-Type is among `headers`); otherwise the body is JSON."""
    status: int
    body: bytes
    call_id: str
    headers: tuple[tuple[str, str], ...] = ()
    raw: bool = False


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a call on the hot path ~0.5 us
class Started:
    """A call that has its worker: `Caller.begin`'s result, for `Caller.complete`."""
    live: Live
    worker: Worker
    call_id: str
    request: Request
    body: bytes
    start: float
    trigger: str      # "http" (a synchronous call), "async" or "schedule"


_UUID4_MASK = ~(0xF000 << 64 | 0xC000 << 48) & (1 << 128) - 1  # clears the version and variant bits
_UUID4_BITS = 0x4000 << 64 | 0x8000 << 48                      # version 4, RFC 4122 variant


class _Ids:
    """uuid4 strings from a generator seeded once from the OS, not a syscall per call."""

    def __init__(self) -> None:
        self._rng = random.Random(os.urandom(32))

    def next(self) -> str:
        h = "%032x" % (self._rng.getrandbits(128) & _UUID4_MASK | _UUID4_BITS)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Caller:
    def __init__(self, table: LiveTable, metrics: Metrics) -> None:
        self._table = table
        self._metrics = metrics
        self._ids = _Ids()

    def invoke(self, name: str, method: str, path: str, query: str, headers: dict[str, str],
               body: bytes) -> Answer:
        """Run one call of `name`: `method` and `path` (the part after the name, "" when none) as requested."""
        call_id = self._ids.next()
        self._table.enter()
        try:
            return self.complete(self.begin(call_id, name, (method, path, query, headers), body, "http"))[0]
        except FaasError as exc:
            exc.headers = {**exc.headers, "X-Call-Id": call_id}
            raise
        finally:
            self._table.leave()

    def new_id(self) -> str:
        return self._ids.next()

    def begin(self, call_id: str, name: str, request: Request, body: bytes, trigger: str,
              wait: float | None = None) -> Started:
        """The first half of a call: a worker of the function's live version, lent in the order calls ask
        (waiting up to `wait` seconds, -1: as long as it takes; default: the function's timeout). A call refused
        here (429, or 502 when no worker could start; for an async or scheduled call, anything but its function
        being gone or the server stopping) is recorded, then raised with its line as `exc.record`."""
        live = self._table.get(name)
        start = time.time()
        try:
            worker, live = self._acquire(live, request, live.timeout if wait is None else wait)
        except FaasError as exc:
            queued = trigger != "http" and exc.code not in ("function_not_found", "shutting_down")
            if exc.status in (429, 502) or queued:  # the call was made and failed: it belongs in the log
                exc.record = self._record_refusal(live, call_id, start, _meta(live, call_id, request), body, exc,
                                                  trigger)
            raise
        return Started(live, worker, call_id, request, body, start, trigger)

    def complete(self, call: Started,
                 after: Callable[[Answer], bytes] | None = None) -> tuple[Answer, bytes]:
        """The second half: run the call on its worker, record it and shape its answer. `after` runs once the
        answer is known and before the record is written, and gives more record fields (an async call's
        callback). Returns the answer and the record's line."""
        live, call_id, start = call.live, call.call_id, call.start
        meta = None if live.version.calling == "args" else _meta(live, call_id, call.request)
        kind, value, rest = self._execute(live, call.worker, meta, call.body)
        if kind == "bad":
            bad = _bad_body(value)
            if call.trigger == "http":
                raise bad
            kind, value = "error", b'{"type":"BadRequest","message":%s,"traceback":""}' % _quote(bad.message)
            rest = _describe(live, meta, call.body) + b"," + protocol.NO_OUTPUT
        if kind == "http":
            return self._http_answer(call, value, rest, after)
        answer = _answer(call_id, kind, value, time.time() - start)
        rest += _record_value(kind, value) + (after(answer) if after else b"")
        return answer, self._record(live, call_id, start, kind, rest, call.trigger)

    def _acquire(self, live: Live, request: Request, wait: float) -> tuple[Worker, Live]:
        """A worker of the function's live version. A call that raced with a replacement follows it."""
        while True:
            if live.version.calling != "args" or request[0] != "POST" or request[1]:  # not the hot path
                check_request(live, request)
            try:
                return live.pool.acquire(wait=wait), live
            except PoolClosed:
                if self._table.closing:
                    raise shutting_down() from None
                live = self._table.get(live.name)

    def _execute(self, live: Live, worker: Worker, meta: dict | None, body: bytes) -> tuple[str, bytes, bytes]:
        """(kind, value, record fragment): kind is ok, error, bad, http, timeout or crashed."""
        healthy = False
        try:
            kind, value, rest = worker.call(b"" if meta is None else _encode(meta), body)
            healthy = True
            return "http" if kind == protocol.HTTP else protocol.KINDS[kind], value, rest
        except WorkerTimeout:
            message = f"the function ran past its {live.timeout:g} s timeout; its worker was killed"
            return "timeout", b'{"type":"Timeout","message":%s,"traceback":""}' % _quote(message), \
                _describe(live, meta, body) + b"," + worker.salvage_output()
        except WorkerDied:
            message = f"the function's process exited or was killed{worker.exit_reason()}"
            return "crashed", b'{"type":"WorkerDied","message":%s,"traceback":""}' % _quote(message), \
                _describe(live, meta, body) + b"," + worker.salvage_output()
        finally:
            live.pool.release(worker, healthy)

    def _http_answer(self, call: Started, value: bytes, rest: bytes,
                     after: Callable[[Answer], bytes] | None) -> tuple[Answer, bytes]:
        live, call_id = call.live, call.call_id
        (size,) = protocol.LEN.unpack_from(value)
        try:
            status, headers = conventions.parse_response_head(value[4:4 + size])
        except ValueError:  # the worker checked it: this one wrote to its channel itself
            message = "the function's worker sent a malformed answer"
            crashed = WorkerCrashed(message, code="function_crashed")
            crashed.record = self._record(live, call_id, call.start, "crashed", rest + b',"error":{"type":'
                                          b'"WorkerDied","message":%s}' % _quote(message), call.trigger)
            raise crashed from None
        answer = Answer(status, value[4 + size:], call_id, (*headers, ("X-Call-Id", call_id)), raw=True)
        rest += after(answer) if after else b""
        return answer, self._record(live, call_id, call.start, "ok", rest, call.trigger)

    def _record_refusal(self, live: Live, call_id: str, start: float, meta: dict | None, body: bytes,
                        exc: FaasError, trigger: str) -> bytes:
        """A call that got no worker (429) or whose worker could not start (502). Its body was not parsed by a
        worker, so it is parsed here: a bad one is the 400 it would have been (an async call's was checked when
        it was accepted; if the function's convention changed since, its input is recorded as null)."""
        try:
            described = conventions.input_fragment(live.version.calling, meta, body)
        except BadBody as bad:
            if trigger != "http":
                described = conventions.EMPTY_INPUT[live.version.calling]
            else:
                raise BadRequest(str(bad), code=bad.code) from None
        error = b'{"type":"%s","message":%s}' % (type(exc).__name__.encode(), _quote(exc.message))
        return self._record(live, call_id, start, "crashed" if exc.status == 502 else "error",
                            described + b"," + protocol.NO_OUTPUT + b',"error":' + error, trigger)

    def _record(self, live: Live, call_id: str, start: float, status: str, rest: bytes, trigger: str) -> bytes:
        end = time.time()
        line = encode_record(id=call_id, status=status, function=live.name, trigger=trigger, start=start, end=end,
                             rest=rest)
        self._metrics.call(live.name, status, end - start)
        try:
            live.log.append(line, status != "ok")
        except OSError as exc:  # e.g. the disk is full: every call is logged before it is answered, or fails
            raise ServiceUnavailable(f"the call {call_id} ran, but its record could not be written: "
                                     f"{exc.strerror or exc}", code="log_write_failed") from None
        return line


def check_request(live: Live, request: Request) -> None:
    """Only an http function answers other methods than POST, and sub-paths."""
    method, path = request[0], request[1]
    if live.version.calling == "http":
        if method not in HTTP_METHODS:
            raise MethodNotAllowed(f"{method} is not allowed here", headers={"Allow": ", ".join(HTTP_METHODS)},
                                   allow=list(HTTP_METHODS))
        return
    if path:
        raise NotFound(f"{live.name} is an {live.version.calling} function: it has no sub-paths (only http "
                       "functions do)", code="path_not_found")
    if method != "POST":
        raise MethodNotAllowed(f"call an {live.version.calling} function with POST (only http functions answer "
                               f"{method})", headers={"Allow": "POST"}, allow=["POST"])


def _meta(live: Live, call_id: str, request: Request) -> dict | None:
    """What the worker needs beside the body: nothing for `args` (the hot path), the call's id and deadline for
    the others, and the request's method, path, query and headers for `http` (never its credentials)."""
    calling = live.version.calling
    if calling == "args":
        return None
    meta: dict = {"id": call_id, "deadline": time.time() + live.timeout}
    if calling == "http":
        method, path, query, headers = request
        meta.update(method=method, path=path or "/", query=query,
                    headers={k: v for k, v in headers.items() if k != "authorization"})
    return meta


def _encode(meta: dict) -> bytes:
    return json.dumps(meta, ensure_ascii=True, separators=(",", ":")).encode()


def _describe(live: Live, meta: dict | None, body: bytes) -> bytes:
    """The input of a call whose worker died before describing it; parsed only on this rare path."""
    try:
        return conventions.input_fragment(live.version.calling, meta, body)
    except BadBody:
        return conventions.EMPTY_INPUT[live.version.calling]


def _bad_body(value: bytes) -> FaasError:
    """The worker's `{"code", "message"}` for a body its convention refuses, as the 400 it is."""
    try:
        info = json.loads(value)
        return BadRequest(str(info["message"]), code=str(info["code"]))
    except (ValueError, KeyError, TypeError):
        return WorkerCrashed("the function's worker sent a malformed answer", code="function_crashed")


def _record_value(kind: str, value: bytes) -> bytes:
    """The result or error of a call as its record keeps it: past RECORD_VALUE_CAP, null and the size."""
    key = b',"result":' if kind == "ok" else b',"error":'
    if len(value) <= protocol.RECORD_VALUE_CAP:
        return key + value
    return key + b'null,"%s_truncated":true,"%s_bytes":%d' % (key[2:-2], key[2:-2], len(value))


def _quote(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=True).encode()


_STATUSES = {"error": (500, b"function_error"), "timeout": (504, b"function_timeout"),
             "crashed": (502, b"function_crashed")}


def _answer(call_id: str, kind: str, value: bytes, duration: float) -> Answer:
    if kind == "ok":
        return Answer(200, b'{"id":"%s","result":%s,"duration":%.6f}' % (call_id.encode(), value, duration), call_id)
    status, code = _STATUSES[kind]
    error = value[:-1] + b',"code":"%s"}' % code  # the worker's error object, with our machine code added
    return Answer(status, b'{"id":"%s","error":%s,"duration":%.6f}' % (call_id.encode(), error, duration), call_id)
