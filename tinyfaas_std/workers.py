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

import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .errors import ServiceUnavailable, TooManyRequests

__all__ = ["Worker", "WorkerDied", "WorkerTimeout", "StartFailed", "Pool", "WORKER_SCRIPT"]

WORKER_SCRIPT = Path(__file__).with_name("_worker.py")
KILL_GRACE = 0.5    # seconds a worker gets after SIGTERM before SIGKILL
_LEN = struct.Struct("!I")
_RECV = 256 * 1024  # one recv of this size holds almost every answer whole


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
    def __init__(self, python: Path, func_path: Path, memory_mb: int, start_timeout: float) -> None:
        import json  # only for the rare hello error

        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [str(python), "-I", str(WORKER_SCRIPT), str(theirs.fileno()), str(func_path), str(memory_mb)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=str(func_path.parent))
        finally:
            theirs.close()
        self.sock = ours
        self.pid = self.proc.pid
        self.last_used = time.monotonic()
        try:
            hello = self._receive(start_timeout)
        except (WorkerDied, WorkerTimeout):
            self.kill()
            raise StartFailed({"type": "WorkerDied", "message": "the worker exited while importing func.py",
                               "line": None, "traceback": ""}) from None
        if hello[:1] != b"o":
            self.kill()
            raise StartFailed(json.loads(hello[1:]))

    def call(self, payload: bytes, timeout: float) -> tuple[bool, bytes, bytes]:
        """Run one call: (ok, result-or-error JSON, stdout/stderr JSON fragment)."""
        try:
            self.sock.sendall(_LEN.pack(len(payload)) + payload)
        except OSError:
            self.kill()
            raise WorkerDied from None
        answer = self._receive(timeout)
        (size,) = _LEN.unpack_from(answer, 1)
        self.last_used = time.monotonic()
        return answer[:1] == b"o", answer[5:5 + size], answer[5 + size:]

    def _receive(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while len(buf) < 4 or len(buf) < 4 + _LEN.unpack_from(buf)[0]:
                if len(buf) >= 4:
                    self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = self.sock.recv(_RECV)
                if not chunk:
                    self.kill()
                    raise WorkerDied
                buf += chunk
        except TimeoutError:
            self.kill()
            raise WorkerTimeout from None
        except OSError:
            self.kill()
            raise WorkerDied from None
        return buf[4:]

    def alive(self) -> bool:
        return self.proc.poll() is None

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


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Pool:
    def __init__(self, spawn: Callable[[], Worker], max_workers: int, max_queue: int,
                 first: Worker | None = None) -> None:
        self._spawn = spawn
        self._max_workers = max_workers
        self._max_queue = max_queue
        self._cond = threading.Condition()
        self._idle: list[Worker] = [first] if first else []
        self._count = len(self._idle)   # idle + busy + starting
        self._waiting = 0
        self._closed = False
        self._all: set[Worker] = set(self._idle)

    def acquire(self, wait: float) -> Worker:
        with self._cond:
            deadline = time.monotonic() + wait
            while not self._idle and self._count >= self._max_workers:
                if self._closed:
                    raise ServiceUnavailable("the function is being replaced or removed", code="function_retired")
                if self._waiting >= self._max_queue:
                    raise TooManyRequests("every worker of this function is busy and its queue is full",
                                          code="queue_full", headers={"Retry-After": "1"})
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TooManyRequests("no worker of this function became free in time", code="queue_timeout",
                                          headers={"Retry-After": "1"})
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1
            if self._closed:
                raise ServiceUnavailable("the function is being replaced or removed", code="function_retired")
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            worker = self._spawn()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all.add(worker)
        return worker

    def release(self, worker: Worker, healthy: bool) -> None:
        with self._cond:
            if healthy and not self._closed and worker.alive():
                self._idle.append(worker)
                self._cond.notify()
                return
            self._count -= 1
            self._all.discard(worker)
            self._cond.notify()
        worker.kill()

    def reap_idle(self, idle_for: float) -> None:
        cutoff = time.monotonic() - idle_for
        with self._cond:
            stale = [w for w in self._idle if w.last_used < cutoff]
            self._idle = [w for w in self._idle if w.last_used >= cutoff]
            self._count -= len(stale)
            self._all.difference_update(stale)
        for worker in stale:
            worker.kill()

    def close(self) -> None:
        """Refuse new calls, stop idle workers now and busy ones when their call returns."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._all.difference_update(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.kill()

    def kill_all(self) -> None:
        """Close and stop busy workers too (server shutdown after the grace period)."""
        self.close()
        with self._cond:
            busy = list(self._all)
        for worker in busy:
            worker.kill()

    def pids(self) -> list[int]:
        with self._cond:
            return [w.pid for w in self._all]

