"""Durable async calls (SPEC 11): accepted on disk before the 202, run in arrival order on the function's own
workers, their state and final record readable by id.

Strategy: one file per accepted call, `data/async/queue/<seq>-<id>`: a JSON line saying what the call asks
(function, method, path, query, headers, callback, trigger, accepted), then its body. It is written under a
temporary name and renamed, so a call is on disk whole or not at all, and the 202 follows the rename. On start
every file is queued again in name order, which is arrival order: a call cut off by a crash runs again (at least
once). When a call has run, calls.py has appended its record to the function's log; the record is then copied to
`data/async/done/<id>.json` for `GET /admin/calls/<id>` (a file read, whatever the log's size) and the queue file
is removed. The newest `keep_done` of those copies are kept.

Each function with waiting calls has a `_Lane`: its calls in order and one pump thread, which takes them in turn,
waits for one of the function's workers in the pool's own first-come queue (so async calls share workers with
synchronous ones, fairly), and hands the call with its worker to a thread of its own that runs it, delivers its
callback and keeps its record. At most `max_workers` async calls of a function run at once; a pump whose lane is
empty ends. The queue is the one owner of the lanes and the index of calls, behind its lock.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import callbacks, conventions
from .bodies import BadBody
from .calls import Answer, Caller, Request, Started, check_request
from .errors import BadRequest, Conflict, FaasError, NotFound, ServiceUnavailable, TooManyRequests
from .logs import encode_record
from .live import LiveTable

__all__ = ["AsyncCalls"]

log = logging.getLogger("tinyfaas_std")

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_SEQ_DIGITS = 16
_PRIVATE_HEADERS = ("authorization", "cookie", "x-callback-url")  # not kept on disk with a queued call


@dataclass(frozen=True, slots=True)
class _Call:
    """A queued call, as its file holds it (the body stays in the file until the call runs)."""
    id: str
    function: str
    request: Request
    callback: str | None
    trigger: str
    accepted: float
    path: Path


@dataclass(slots=True)
class _Lane:
    calls: collections.deque[_Call] = field(default_factory=collections.deque)
    pump: threading.Thread | None = None


class AsyncCalls:
    def __init__(self, folder: Path, caller: Caller, table: LiveTable, *, max_queue: int,
                 callback_allow: frozenset[str], keep_done: int) -> None:
        self._queue_dir, self._done_dir = folder / "queue", folder / "done"
        for path in (folder, self._queue_dir, self._done_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._caller, self._table = caller, table
        self._max_queue, self._allow, self._keep_done = max_queue, callback_allow, keep_done
        self._lock = threading.Lock()  # guards everything below
        self._lanes: dict[str, _Lane] = {}
        self._state: dict[str, tuple[_Call, str]] = {}  # id -> (call, "queued" | "running")
        self._seq = 0

    # -- the routes ----------------------------------------------------------------------------------------

    def submit(self, name: str, request: Request, body: bytes, callback: str | None, trigger: str = "async") -> str:
        """Accept a call: 404 for an unknown function, 400 for a body its convention refuses or a callback that
        is not allowed, 429 past --max-async-queue; else it is on disk when this returns its id."""
        live = self._table.get(name)
        check_request(live, request)
        if callback is not None:
            callbacks.check(callback, self._allow)
        if live.version.calling != "http":  # checked now: after the 202 there is no one to answer 400
            try:
                conventions.input_fragment(live.version.calling, None, body)
            except BadBody as exc:
                raise BadRequest(str(exc), code=exc.code) from None
        if live.version.calling == "http":  # what the function needs, never the caller's credentials
            request = (*request[:3], {k: v for k, v in request[3].items() if k not in _PRIVATE_HEADERS})
        else:
            request = (*request[:3], {})
        call_id = self._caller.new_id()
        with self._lock:
            lane = self._lanes.setdefault(name, _Lane())
            if len(lane.calls) >= self._max_queue:
                raise TooManyRequests(f"{name} has {self._max_queue} async calls waiting (--max-async-queue)",
                                      code="async_queue_full", headers={"Retry-After": "1"})
            self._seq += 1
            call = _Call(call_id, name, request, callback, trigger, time.time(),
                         self._queue_dir / f"{self._seq:0{_SEQ_DIGITS}d}-{call_id}")
            try:
                _write(call, body)
            except OSError as exc:  # e.g. a full disk: the call is not accepted
                raise ServiceUnavailable(f"the call could not be written to disk: {exc.strerror or exc}",
                                         code="async_queue_write_failed") from None
            self._queue(lane, call)
        return call_id

    def state(self, call_id: str) -> dict[str, Any] | bytes:
        """`{"id", "function", "status"}` while it waits or runs, then its record (bytes); 404 when unknown."""
        if _ID.fullmatch(call_id):
            with self._lock:
                entry = self._state.get(call_id)
            if entry is not None:
                return {"id": call_id, "function": entry[0].function, "status": entry[1]}
            try:
                return (self._done_dir / f"{call_id}.json").read_bytes().rstrip(b"\n")
            except FileNotFoundError:
                pass
        raise NotFound(f"no async call {call_id[:40]!r} (or its record was pruned)", code="call_not_found")

    def function_of(self, call_id: str) -> str:
        """The function an async call is of (404 when unknown): what permissions on the call depend on."""
        state = self.state(call_id)
        return str(state["function"] if isinstance(state, dict) else json.loads(state)["function"])

    def cancel(self, call_id: str) -> dict[str, Any]:
        with self._lock:
            entry = self._state.get(call_id) if _ID.fullmatch(call_id) else None
            if entry is not None and entry[1] == "queued":
                call = entry[0]
                self._lanes[call.function].calls.remove(call)
                del self._state[call_id]
                call.path.unlink(missing_ok=True)
                return {"id": call_id, "function": call.function, "status": "cancelled"}
        if entry is not None or (_ID.fullmatch(call_id) and (self._done_dir / f"{call_id}.json").exists()):
            raise Conflict("the call has already started; it cannot be cancelled", code="already_running")
        raise NotFound(f"no async call {call_id[:40]!r}", code="call_not_found")

    # -- for the scheduler and the deployer ----------------------------------------------------------------

    def depths(self) -> dict[str, int]:
        """Calls waiting, per function that has a lane."""
        with self._lock:
            return {name: len(lane.calls) for name, lane in self._lanes.items()}

    def busy(self, name: str, trigger: str) -> bool:
        """Whether a call of `name` made by `trigger` is queued or running."""
        with self._lock:
            return any(call.function == name and call.trigger == trigger for call, _ in self._state.values())

    def drop(self, name: str) -> None:
        """The function was deleted: its waiting calls end, each with a record saying so (its running ones
        finish)."""
        with self._lock:
            lane = self._lanes.get(name)
            dropped = list(lane.calls) if lane else []
            if lane:
                lane.calls.clear()
        for call in dropped:
            now = time.time()
            error = b'"error":{"type":"Deleted","message":"the function was deleted before the call ran"}'
            self._finish(call, encode_record(id=call.id, status="error", function=call.function,
                                             trigger=call.trigger, start=now, end=now, rest=error))

    def recover(self) -> int:
        """Queue again every call on disk, in arrival order; a function that is gone loses its calls."""
        for leftover in self._queue_dir.glob(".*"):  # a write cut short: that call was never accepted
            leftover.unlink(missing_ok=True)
        names = sorted(p.name for p in self._queue_dir.iterdir())
        count = 0
        with self._lock:
            for filename in names:
                path = self._queue_dir / filename
                call = _read(path)
                self._seq = max(self._seq, int(filename.split("-", 1)[0]) if filename[:1].isdigit() else 0)
                done = call is not None and (self._done_dir / f"{call.id}.json").exists()  # ran; killed before unlink
                if call is None or done or self._table.find(call.function) is None:
                    path.unlink(missing_ok=True)
                    continue
                self._queue(self._lanes.setdefault(call.function, _Lane()), call)
                count += 1
        return count

    def prune(self) -> None:
        """Keep the newest `keep_done` finished calls' records."""
        entries = list(os.scandir(self._done_dir))
        if len(entries) <= self._keep_done:
            return
        entries.sort(key=lambda e: e.stat().st_mtime)
        for entry in entries[:len(entries) - self._keep_done]:
            Path(entry.path).unlink(missing_ok=True)

    # -- running -------------------------------------------------------------------------------------------

    def _queue(self, lane: _Lane, call: _Call) -> None:
        """Under the lock: add `call` to its lane and make sure a pump is taking calls from it."""
        lane.calls.append(call)
        self._state[call.id] = (call, "queued")
        if lane.pump is None:
            self._start_pump(lane, call.function)

    def _start_pump(self, lane: _Lane, name: str) -> None:
        """Under the lock."""
        lane.pump = threading.Thread(target=self._pump, args=(lane,), name=f"async-{name}", daemon=True)
        lane.pump.start()

    def _pump(self, lane: _Lane) -> None:
        try:
            while True:
                with self._lock:
                    if not lane.calls or self._table.closing:
                        return
                    call = lane.calls.popleft()
                    self._state[call.id] = (call, "running")
                started = self._begin(call)
                if started is not None:
                    threading.Thread(target=self._run, args=(call, started), name=f"call-{call.id[:8]}",
                                     daemon=True).start()
        except Exception:  # a bug: the lane must not be left with a pump that is gone
            log.exception("the async pump of a lane failed")
        finally:
            with self._lock:
                lane.pump = None
                if lane.calls and not self._table.closing:  # calls came while it ended
                    self._start_pump(lane, lane.calls[0].function)

    def _begin(self, call: _Call) -> Started | None:
        """A worker for `call`, waiting as long as it takes; None when the call ended here."""
        try:
            body = call.path.read_bytes().split(b"\n", 1)[1]
            self._table.enter()
        except (OSError, IndexError, FaasError):  # the file went (deleted function), or the server is stopping
            self._forget(call)
            return None
        try:
            return self._caller.begin(call.id, call.function, call.request, body, call.trigger, wait=-1)
        except FaasError as exc:
            self._table.leave()
            if exc.status == 404:  # deleted while the call waited: it goes with the function
                call.path.unlink(missing_ok=True)
            self._finish(call, exc.record)
            return None

    def _run(self, call: _Call, started: Started) -> None:
        record = None
        try:
            record = self._caller.complete(started, self._callback(call, started) if call.callback else None)[1]
        except FaasError as exc:
            record = exc.record
        except Exception:
            log.exception("async call %s of %s failed", call.id, call.function)
        finally:
            self._table.leave()
            self._finish(call, record)

    def _callback(self, call: _Call, started: Started) -> Any:
        def after(answer: Answer) -> bytes:
            headers = {**dict(answer.headers), "X-Call-Id": call.id, "X-Function-Name": call.function,
                       "X-Function-Status": str(answer.status),
                       "X-Duration-Seconds": f"{time.time() - started.start:.6f}"}
            if not answer.raw:
                headers["Content-Type"] = "application/json"
            return callbacks.deliver(call.callback or "", answer.body, headers)
        return after

    def _finish(self, call: _Call, record: bytes | None) -> None:
        """The call has ended: its record (if it has one) becomes readable by id, and its file goes. Without a
        record (the server stopped first, or the log could not be written) the file stays, to run again."""
        try:
            if record is not None:
                tmp = self._done_dir / f".{call.id}.tmp"
                tmp.write_bytes(record)
                os.replace(tmp, self._done_dir / f"{call.id}.json")
                call.path.unlink(missing_ok=True)
        except OSError as exc:  # e.g. a full disk: the queue file stays, and the call runs again after a restart
            log.error("async call %s of %s: its record could not be kept: %s", call.id, call.function, exc)
        finally:
            self._forget(call)

    def _forget(self, call: _Call) -> None:
        with self._lock:
            self._state.pop(call.id, None)


def _write(call: _Call, body: bytes) -> None:
    method, path, query, headers = call.request
    meta = {"id": call.id, "function": call.function, "method": method, "path": path, "query": query,
            "headers": headers, "callback": call.callback, "trigger": call.trigger, "accepted": call.accepted}
    tmp = call.path.with_name("." + call.path.name)
    with open(tmp, "wb") as f:
        f.write(json.dumps(meta, ensure_ascii=True, separators=(",", ":")).encode() + b"\n" + body)
    os.replace(tmp, call.path)


def _read(path: Path) -> _Call | None:
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.readline())
        request = (meta["method"], meta["path"], meta["query"], dict(meta["headers"]))
        return _Call(meta["id"], meta["function"], request, meta["callback"], meta["trigger"], meta["accepted"],
                     path)
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("dropping unreadable async call file %s", path.name)
        return None
