"""Warm worker processes and the per-function pool that lends them to calls.

Strategy: a `Worker` is one process of the function's venv interpreter running `_worker.py`, in a session (and
so a process group) of its own, talking over a private socketpair. A call is one frame out and one frame back;
the server never decodes the function's result. A call that overruns its timeout kills the whole process group
(the function's children too); a worker whose channel breaks is dead. Either way it is never reused.

A `Pool` owns the workers of one version of one function: it lends an idle worker, starts a new one while under
`max_workers`, makes callers wait in a bounded queue beyond that (429 past it), and stops workers that idled too
long. A closed pool (the function was replaced or deleted) refuses new calls and stops each busy worker as its
call returns, so calls in flight finish.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import TooManyRequests
from .sockets import set_timeouts

__all__ = ["Worker", "WorkerDied", "WorkerTimeout", "StartFailed", "Pool", "PoolClosed", "WORKER_SCRIPT",
           "MAX_RESULT_BYTES", "OUTPUT_CAP"]

WORKER_SCRIPT = Path(__file__).with_name("_worker.py")
KILL_GRACE = 0.5    # seconds a worker gets after SIGTERM before SIGKILL
OUTPUT_CAP = 64 * 1024   # characters of stdout/stderr kept per call (the worker applies the same cap)
MAX_RESULT_BYTES = 6 * 1024 * 1024  # like AWS Lambda's synchronous response limit; the worker enforces it
TRANSFER_GRACE = 10.0  # seconds per recv while a large answer is arriving (the call itself has ended)
_HEAD = struct.Struct("!II")  # every frame: payload length, call sequence number (see _worker.py)
_LEN = struct.Struct("!I")
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
    dead worker."""

    def __init__(self, python: Path, func_path: Path, *, memory_mb: int, timeout: float, max_body: int,
                 capture_dir: Path) -> None:
        token = uuid.uuid4().hex
        self._capture = (capture_dir / f"{token}.out", capture_dir / f"{token}.err")
        self._max_frame = MAX_RESULT_BYTES + 6 * max_body + 12 * OUTPUT_CAP + 4096  # \uXXXX escapes: 6x at most
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [str(python), "-I", str(WORKER_SCRIPT), str(theirs.fileno()), str(func_path), str(memory_mb),
                 *map(str, self._capture)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=_server_stderr(),
                start_new_session=True, cwd=str(func_path.parent))
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
            info = None if hello == b"o" else json.loads(hello[1:])
        except (WorkerDied, WorkerTimeout, ValueError):
            self.close()
            raise StartFailed({"type": "WorkerDied", "message": "the worker exited while importing func.py",
                               "line": None, "traceback": ""}) from None
        if info is not None:
            self.close()
            raise StartFailed(info if isinstance(info, dict) else {"message": str(info)})

    def call(self, payload: bytes) -> tuple[bytes, bytes, bytes]:
        """Run one call: (kind `o`/`e`/`b`, result or error JSON, record fragment); see `_worker.py`."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        try:
            self.sock.sendall(_HEAD.pack(len(payload), self._seq) + payload)
        except OSError:
            self.kill()
            raise WorkerDied from None
        answer = self._receive()
        kind = answer[:1]
        if len(answer) < 5 or kind not in b"oeb" or answer.find(b"\n", 5) >= 0 or answer.find(b"\r", 5) >= 0:
            self.kill()
            raise WorkerDied
        (size,) = _LEN.unpack_from(answer, 1)
        if 5 + size > len(answer) or (kind == b"b") != (5 + size == len(answer)):
            self.kill()
            raise WorkerDied
        return kind, answer[5:5 + size], answer[5 + size:]

    def _receive(self) -> bytes:
        """One frame of the current call. Almost always a single recv; a large answer is read into a buffer of
        its announced size."""
        try:
            data = self.sock.recv(_RECV)
            while 0 < len(data) < _HEAD.size:
                data += self.sock.recv(_RECV)
            if not data:
                raise WorkerDied
            size, seq = _HEAD.unpack_from(data)
            if seq != self._seq or size > self._max_frame or len(data) > _HEAD.size + size:
                raise WorkerDied  # a stray frame, too large, or more than one: the channel is out of step
            if len(data) < _HEAD.size + size:
                data = self._receive_rest(data, size)
            return data[_HEAD.size:]
        except BlockingIOError:  # SO_RCVTIMEO expired: the function ran past --timeout
            self.kill()
            raise WorkerTimeout from None
        except (WorkerDied, OSError):
            self.kill()
            raise WorkerDied from None

    def _receive_rest(self, data: bytes, size: int) -> bytes:
        """The rest of a large frame. The call is over once its first bytes arrive, so the transfer gets its own
        time (TRANSFER_GRACE per recv), not what was left of the call's timeout."""
        buf = bytearray(_HEAD.size + size)
        buf[:len(data)] = data
        view, got = memoryview(buf), len(data)
        set_timeouts(self.sock, TRANSFER_GRACE)
        try:
            while got < _HEAD.size + size:
                n = self.sock.recv_into(view[got:])
                if not n:
                    raise WorkerDied
                got += n
        except BlockingIOError:
            raise WorkerDied from None  # a worker that stalls in the middle of its answer is broken
        finally:
            set_timeouts(self.sock, self._timeout)
        return bytes(buf)

    def salvage_output(self) -> bytes:
        """What the call printed before its process died, from the capture files the worker writes through.
        Read without following links and only from regular files: the function could have replaced them."""
        texts = []
        for path in self._capture:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            except OSError:
                texts.append("")
                continue
            try:
                ok = stat.S_ISREG(os.fstat(fd).st_mode)
                texts.append(os.read(fd, 4 * OUTPUT_CAP + 4).decode("utf-8", "replace") if ok else "")
            finally:
                os.close(fd)
        out, err = texts
        return json.dumps({"stdout": out[:OUTPUT_CAP], "stderr": err[:OUTPUT_CAP],
                           "stdout_truncated": len(out) > OUTPUT_CAP, "stderr_truncated": len(err) > OUTPUT_CAP},
                          ensure_ascii=True, separators=(",", ":"))[1:-1].encode()

    def kill(self) -> None:
        """Stop the worker and every process of its group: SIGTERM, a short grace, then SIGKILL."""
        self.sock.close()
        if self.proc.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.pid, signal.SIGKILL)  # children that outlived their leader, too
        if self.proc.poll() is None:
            self.proc.wait()

    def close(self) -> None:
        """Kill, and remove the capture files."""
        self.kill()
        for path in self._capture:
            path.unlink(missing_ok=True)


def _server_stderr() -> int | None:
    """Where a worker's file descriptors 1 and 2 go: the server's stderr, so C-level output is not lost."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        return None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class PoolClosed(Exception):
    """The pool's function version was replaced or deleted; the caller looks up the current one."""


class Pool:
    """Lends warm workers. Idle ones wait in a LIFO list (so surplus workers idle out); when callers are queued,
    a returning worker is handed straight to one of them through `_handoff`, a C-level queue, which costs far
    less than a `Condition` wait/notify per call."""

    def __init__(self, spawn: Callable[[], Worker], max_workers: int, max_queue: int,
                 first: Worker | None = None) -> None:
        self._spawn = spawn
        self._max_workers = max_workers
        self._max_queue = max_queue
        self._lock = threading.Lock()
        self._idle: list[Worker] = [first] if first else []
        self._handoff: queue.SimpleQueue[Worker | None] = queue.SimpleQueue()  # None: a free slot, or closed
        self._count = len(self._idle)   # workers alive or starting: idle + busy + in the hand-off queue
        self._waiting = 0
        self._closed = False
        self._all: set[Worker] = set(self._idle)

    def acquire(self, wait: float) -> Worker:
        with self._lock:
            if self._closed:
                raise PoolClosed
            if self._idle:
                return self._idle.pop()
            spawn = self._count < self._max_workers
            if spawn:
                self._count += 1
            elif self._waiting >= self._max_queue:
                raise TooManyRequests("every worker of this function is busy and its queue is full",
                                      code="queue_full", headers={"Retry-After": "1"})
            else:
                self._waiting += 1
        if spawn:
            return self._start()
        try:
            worker = self._handoff.get(timeout=wait)
        except queue.Empty:
            raise TooManyRequests("no worker of this function became free in time", code="queue_timeout",
                                  headers={"Retry-After": "1"}) from None
        finally:
            with self._lock:
                self._waiting -= 1
        if worker is None:  # a slot was freed by a dead worker (start one), or the pool closed
            if self._closed:
                self._handoff.put(None)  # pass the news on to the next waiter
                raise PoolClosed
            return self._start()
        return worker

    def _start(self) -> Worker:
        try:
            worker = self._spawn()
        except BaseException:
            self._free_slot()
            raise
        with self._lock:
            self._all.add(worker)
        return worker

    def _free_slot(self) -> None:
        with self._lock:
            self._count -= 1
            hand_on = self._waiting > 0 and not self._closed
            if hand_on:
                self._count += 1  # the slot goes to a waiter, who starts a worker in it
        if hand_on:
            self._handoff.put(None)

    def release(self, worker: Worker, healthy: bool) -> None:
        if healthy:
            worker.last_used = time.monotonic()
            with self._lock:  # _closed is read under the lock close() sets it with: no worker slips past
                keep, waiting = not self._closed, self._waiting
                if keep and not waiting:
                    self._idle.append(worker)
                    return
            if keep:
                self._handoff.put(worker)
                return
        with self._lock:
            self._all.discard(worker)
        worker.close()
        self._free_slot()

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
        """Refuse new calls, stop idle workers now and busy ones when their call returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        while True:  # workers handed off to callers that gave up waiting
            try:
                leftover = self._handoff.get_nowait()
            except queue.Empty:
                break
            if leftover is not None:
                idle.append(leftover)
        with self._lock:
            self._all.difference_update(idle)
            self._count -= len(idle)
        self._handoff.put(None)  # wakes the waiters, one after another
        for worker in idle:
            worker.close()

    @property
    def drained(self) -> bool:
        """Closed, and its last worker has stopped: nothing runs from its venv or code any more."""
        with self._lock:
            return self._closed and self._count <= 0

    def kill_all(self) -> None:
        """Close and stop busy workers too (server shutdown after the grace period)."""
        self.close()
        with self._lock:
            busy = list(self._all)
        for worker in busy:
            worker.close()

    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._all]
