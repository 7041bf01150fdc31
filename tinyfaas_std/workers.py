"""Warm worker processes and the per-function pool that lends them to calls.

Strategy: a `Worker` is one process of the function's venv interpreter running `_worker.py` in its sandbox
(started by `sandbox.py`), talking over a private socketpair in the frames of `protocol.py`. A call is one frame
out and one frame back; the server never decodes the function's result. A call that overruns its timeout ends
the worker's whole process tree; a worker whose channel breaks is dead. Either way it is never reused.

A `Pool` owns the workers of one version of one function: it lends an idle worker, starts a new one while under
`max_workers`, makes callers wait in a bounded first-come-first-served queue beyond that (429 past it), and stops
workers that idled too long. A closed pool (the function was replaced or deleted) takes no new calls; the calls
it has already taken, running or queued, still finish on its workers, which stop as the last call returns.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from . import protocol
from .errors import ServiceUnavailable, TooManyRequests
from .sandbox import Sandbox, WorkerSpec
from .sockets import set_timeouts

__all__ = ["Worker", "WorkerDied", "WorkerTimeout", "StartFailed", "Pool", "PoolClosed", "start_worker"]

KILL_GRACE = 0.5    # seconds a worker's launcher gets after SIGTERM before SIGKILL
SETTLE = 0.2        # seconds a dead worker's launcher gets to exit by itself (it reaps, then exits at once)
TRANSFER_GRACE = 10.0  # seconds for the rest of a large answer to arrive, in all (the call itself has ended)
_RECV = 16 * 1024   # holds almost every answer whole, and stays below malloc's mmap threshold (no mmap per call)


class WorkerDied(Exception):
    """The worker's process ended or its channel broke."""


class WorkerTimeout(Exception):
    """The worker did not answer in time; it has been killed."""


class StartFailed(Exception):
    """`func.py` did not import, or has no callable `main`. `info` holds type, message, line, traceback."""

    def __init__(self, info: dict) -> None:
        super().__init__(info.get("message", "the function failed to start"))
        self.info = info


class Worker:
    """One warm process of a function. `call` is used by one thread at a time (the pool lends it out).

    The function runs in the same process as the loop that answers, so it could write to the channel itself.
    Every answer is therefore checked before it is trusted: the sequence number of its call, a known kind, the
    announced length exactly, no line breaks (the bytes are spliced into a JSON-lines log). Anything else is a
    dead worker. `proc` is the worker's launcher (see sandbox.py): ending it ends the worker's whole tree."""

    def __init__(self, start: Callable[[int, tuple[Path, Path]], subprocess.Popen[bytes]], capture_dir: Path, *,
                 timeout: float, max_body: int) -> None:
        token = uuid.uuid4().hex
        self._capture_dir = capture_dir
        self._capture = (f".tinyfaas-{token}.out", f".tinyfaas-{token}.err")
        self._max_frame = protocol.MAX_RESULT_BYTES + 6 * max_body + 12 * protocol.OUTPUT_CAP + 4096  # \uXXXX: 6x
        ours, theirs = socket.socketpair()
        try:
            self.proc = start(theirs.fileno(), (capture_dir / self._capture[0], capture_dir / self._capture[1]))
        except OSError as exc:
            ours.close()
            raise StartFailed({"type": type(exc).__name__, "message": f"the worker could not be started: {exc}",
                               "line": None, "traceback": ""}) from None
        finally:
            theirs.close()
        self.sock = ours
        set_timeouts(ours, timeout)
        self._timeout = timeout
        self.pid = self.proc.pid
        self.last_used = time.monotonic()
        self._seq = 0  # calls so far; the hello carries 0
        try:
            hello = self._receive()
            info = None if hello == protocol.OK else json.loads(hello[1:])
        except WorkerTimeout:
            self.close()
            raise StartFailed({"type": "Timeout", "message": f"func.py did not finish importing within the "
                               f"{timeout:g} s timeout", "line": None, "traceback": ""}) from None
        except (WorkerDied, ValueError):
            self.close()
            raise StartFailed({"type": "WorkerDied", "message": "the worker exited while importing func.py"
                               f"{self.exit_reason()}", "line": None, "traceback": ""}) from None
        if info is not None:
            self.close()
            raise StartFailed(info if isinstance(info, dict) else {"message": str(info)})

    def call(self, meta: bytes, body: bytes) -> tuple[bytes, bytes, bytes]:
        """Run one call: (kind, value, record fragment); see `protocol.py`. The value and the fragment are spliced
        into JSON lines, so neither may hold a line break; an `HTTP` value is the answer's bytes, sent as they are."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        try:
            self.sock.sendall(protocol.call_frame(self._seq, meta, body))
        except OSError:
            self.kill()
            raise WorkerDied from None
        answer = self._receive()
        kind = answer[:1]
        if len(answer) < 5 or kind not in protocol.KINDS:
            self.kill()
            raise WorkerDied
        (size,) = protocol.LEN.unpack_from(answer, 1)
        spliced = 5 + size if kind == protocol.HTTP else 5
        if (5 + size > len(answer) or (kind == protocol.BAD) != (5 + size == len(answer))
                or kind == protocol.HTTP and (size < 4 or protocol.LEN.unpack_from(answer, 5)[0] > size - 4)
                or answer.find(b"\n", spliced) >= 0 or answer.find(b"\r", spliced) >= 0):
            self.kill()
            raise WorkerDied
        return kind, answer[5:5 + size], answer[5 + size:]

    def _receive(self) -> bytes:
        """One frame of the current call. Almost always a single recv; a large answer is read into a buffer of
        its announced size."""
        head = protocol.HEAD
        try:
            data = self.sock.recv(_RECV)
            while 0 < len(data) < head.size:
                data += self.sock.recv(_RECV)
            if not data:
                raise WorkerDied
            size, seq = head.unpack_from(data)
            if seq != self._seq or size > self._max_frame or len(data) > head.size + size:
                raise WorkerDied  # a stray frame, too large, or more than one: the channel is out of step
            if len(data) < head.size + size:
                data = self._receive_rest(data, size)
            return data[head.size:]
        except BlockingIOError:  # SO_RCVTIMEO expired: the function ran past --timeout
            self.kill()
            raise WorkerTimeout from None
        except (WorkerDied, OSError):
            self.kill(settle=True)
            raise WorkerDied from None

    def _receive_rest(self, data: bytes, size: int) -> bytes:
        """The rest of a large frame. The call is over once its first bytes arrive, so the transfer gets its own
        time (TRANSFER_GRACE in all, however the bytes trickle), not what was left of the call's timeout."""
        total = protocol.HEAD.size + size
        buf = bytearray(total)
        buf[:len(data)] = data
        view, got = memoryview(buf), len(data)
        deadline = time.monotonic() + TRANSFER_GRACE
        try:
            while got < total:
                set_timeouts(self.sock, deadline - time.monotonic())
                n = self.sock.recv_into(view[got:])
                if not n or time.monotonic() > deadline:
                    raise WorkerDied
                got += n
        except BlockingIOError:
            raise WorkerDied from None  # a worker that stalls in the middle of its answer is broken
        finally:
            set_timeouts(self.sock, self._timeout)
        return bytes(buf)

    def exit_reason(self) -> str:
        """Why the worker's process ended, when its launcher said: for the message of a 502."""
        code = self.proc.poll()
        if code is None:
            return ""
        return f" ({protocol.EXIT_REASONS.get(code, f'exit status {code}')})"

    def salvage_output(self) -> bytes:
        """What the call printed before its process died, from the capture files the worker writes through.
        The folder is the function's own, so the files are opened beneath a descriptor of the folder, without
        following links, and read only if they are regular files."""
        texts = []
        try:
            folder = os.open(self._capture_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            folder = -1
        for name in self._capture:
            texts.append(_read_capture(folder, name) if folder >= 0 else "")
        if folder >= 0:
            os.close(folder)
        out, err = texts
        cap = protocol.OUTPUT_CAP
        return json.dumps({"stdout": out[:cap], "stderr": err[:cap],
                           "stdout_truncated": len(out) > cap, "stderr_truncated": len(err) > cap},
                          ensure_ascii=True, separators=(",", ":"))[1:-1].encode()

    def kill(self, settle: bool = False) -> None:
        """End the worker's tree: SIGTERM to its launcher (which ends it at once), SIGKILL if it lingers.
        `settle`: the worker is known to have died; its launcher gets a moment to exit on its own first, so that
        its exit status can tell why (e.g. past the memory limit)."""
        self.sock.close()
        if settle:
            try:
                self.proc.wait(SETTLE)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        """Kill, and remove the capture files."""
        self.kill()
        for name in self._capture:
            try:
                os.unlink(self._capture_dir / name)
            except OSError:
                pass


def start_worker(sandbox: Sandbox, spec: WorkerSpec, *, timeout: float, max_body: int) -> Worker:
    """A warm worker of `spec`, started in `sandbox`: the one place that knows `_worker.py`'s arguments (the server
    and `serve-one` both start theirs here). What its calls print is written through to its scratch folder."""

    def start(channel: int, capture: tuple[Path, Path]) -> subprocess.Popen[bytes]:
        args = (str(spec.code / "func.py"), *map(str, capture), spec.calling, spec.function, spec.version)
        return sandbox.start(dataclasses.replace(spec, args=args), channel)

    return Worker(start, spec.scratch, timeout=timeout, max_body=max_body)


def _read_capture(folder: int, name: str) -> str:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=folder)
    except OSError:
        return ""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:  # not a link to some other file
            return ""
        return os.read(fd, 4 * protocol.OUTPUT_CAP + 4).decode("utf-8", "replace")
    finally:
        os.close(fd)


class PoolClosed(Exception):
    """The pool's function version was replaced or deleted; the caller looks up the current one."""


_SLOT = object()     # handed to a waiter: no worker, but room to start one
_REFUSED = object()  # handed to a waiter: the server is stopping


class _Waiter:
    """One queued call. Its lock is held until something is handed to it (a worker, _SLOT or _REFUSED)."""

    __slots__ = ("lock", "item")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.item: object = None


class Pool:
    """Lends warm workers. Idle ones wait in a LIFO list (so surplus workers idle out); queued calls wait in a FIFO
    of `_Waiter`s and a returning worker is handed straight to the first. Every change of state happens under one
    lock, hand-offs included, so a close can never slip between a release and its hand-off."""

    def __init__(self, spawn: Callable[[], Worker], max_workers: int, max_queue: int,
                 first: Worker | None = None) -> None:
        self._spawn = spawn
        self._max_workers = max_workers
        self._max_queue = max_queue
        self._lock = threading.Lock()
        self._idle: list[Worker] = [first] if first else []
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._count = len(self._idle)   # workers alive or starting: idle + busy
        self._closed = False
        self._all: set[Worker] = set(self._idle)

    def acquire(self, wait: float) -> Worker:
        with self._lock:
            if self._closed:
                raise PoolClosed
            if self._idle:
                return self._idle.pop()
            if self._count < self._max_workers:
                self._count += 1
                waiter = None
            elif len(self._waiters) >= self._max_queue and wait >= 0:  # async calls (wait -1) are bounded upstream
                raise TooManyRequests("every worker of this function is busy and its queue is full",
                                      code="queue_full", headers={"Retry-After": "1"})
            else:
                waiter = _Waiter()
                self._waiters.append(waiter)
        if waiter is None:
            return self._start()
        if not waiter.lock.acquire(timeout=wait):
            with self._lock:
                if waiter in self._waiters:  # nothing was handed to it: give up its place
                    self._waiters.remove(waiter)
                    raise TooManyRequests("no worker of this function became free in time", code="queue_timeout",
                                          headers={"Retry-After": "1"})
            waiter.lock.acquire()  # handed to it just now: take it
        item = waiter.item
        if item is _SLOT:
            return self._start()
        if item is _REFUSED:
            raise ServiceUnavailable("the server is shutting down", code="shutting_down", close=True)
        return item  # type: ignore[return-value]  # a worker

    def _start(self) -> Worker:
        try:
            worker = self._spawn()
        except BaseException:
            with self._lock:
                self._count -= 1
                self._hand_slot()
            raise
        with self._lock:
            self._all.add(worker)
        return worker

    def _hand(self, item: object) -> None:
        """Under the lock: give `item` to the first queued call."""
        waiter = self._waiters.popleft()
        waiter.item = item
        waiter.lock.release()

    def _hand_slot(self) -> None:
        """Under the lock: a worker slot is free; the first queued call may start a worker in it."""
        if self._waiters and self._count < self._max_workers:
            self._count += 1
            self._hand(_SLOT)

    def release(self, worker: Worker, healthy: bool) -> None:
        with self._lock:
            if healthy:
                worker.last_used = time.monotonic()
                if self._waiters:
                    self._hand(worker)
                    return
                if not self._closed:
                    self._idle.append(worker)
                    return
            self._all.discard(worker)
            self._count -= 1
            self._hand_slot()
        worker.close()

    def reap_idle(self, idle_for: float) -> None:
        cutoff = time.monotonic() - idle_for
        with self._lock:
            stale = [w for w in self._idle if w.last_used < cutoff]
            self._idle = [w for w in self._idle if w.last_used >= cutoff]
            self._count -= len(stale)
            self._all.difference_update(stale)
        for worker in stale:
            worker.close()

    def close(self) -> None:
        """Take no new calls; stop idle workers now and busy ones when the calls already taken are done."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._all.difference_update(idle)
            self._count -= len(idle)
        for worker in idle:
            worker.close()

    @property
    def drained(self) -> bool:
        """Closed, and its last worker has stopped: nothing runs from its venv or code any more."""
        with self._lock:
            return self._closed and self._count <= 0 and not self._waiters

    def kill_all(self) -> None:
        """Close, refuse the queued calls and stop busy workers too (server shutdown after the grace period)."""
        self.close()
        with self._lock:
            while self._waiters:
                self._hand(_REFUSED)
            busy = list(self._all)
        for worker in busy:
            worker.close()

    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._all]
