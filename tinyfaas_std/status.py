"""Resource figures for `/admin/status`, measured by psutil in a background sampler.

Strategy: CPU usage is a rate, so it needs two readings apart in time; psutil's `cpu_percent(interval=...)`
would make a request sleep for that interval. Instead a daemon thread takes a reading every SAMPLE_INTERVAL and
keeps the latest snapshot; a request only copies it. Worker processes come and go, so their `psutil.Process`
objects are cached by pid (each keeps its own previous CPU reading).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

__all__ = ["Sampler", "SAMPLE_INTERVAL"]

SAMPLE_INTERVAL = 1.0  # seconds: "figures cover roughly the last second" (SPEC section 4)
_MB = 1024 * 1024


class Sampler:
    def __init__(self, worker_pids: Callable[[], list[int]], interval: float = SAMPLE_INTERVAL,
                 isolation: dict[str, Any] | None = None) -> None:
        self._worker_pids = worker_pids
        self._isolation = isolation or {}
        self._interval = interval
        self._me = psutil.Process()
        self._workers: dict[int, psutil.Process] = {}
        self._started = time.time()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._snapshot: dict[str, Any] = {}
        self._me.cpu_percent(None)
        psutil.cpu_percent(None)
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="status-sampler", daemon=True)
        self._thread.start()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap = dict(self._snapshot)
        snap["process"] = {**snap["process"], "uptime_seconds": round(time.time() - self._started, 3)}
        snap["isolation"] = self._isolation
        return snap

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        with self._me.oneshot():
            process = {"cpu_millicores": round(self._me.cpu_percent(None) * 10),
                       "memory_mb": round(self._me.memory_info().rss / _MB, 2),
                       "threads": self._me.num_threads()}
        cpu = mem = 0.0
        pids = set(self._worker_pids())  # each a worker's launcher: the worker and its processes are below it
        for pid in list(pids):
            try:
                pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
            except psutil.Error:
                pass
        for pid in list(self._workers):
            if pid not in pids:
                del self._workers[pid]
        for pid in pids:
            try:
                proc = self._workers.get(pid)
                if proc is None:
                    proc = self._workers[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    mem += proc.memory_info().rss
            except psutil.Error:  # the worker ended between listing and reading: it no longer counts
                self._workers.pop(pid, None)
        vm = psutil.virtual_memory()
        snapshot = {
            "process": process,
            "workers": {"count": len(self._worker_pids()), "cpu_millicores": round(cpu * 10),
                        "memory_mb": round(mem / _MB, 2)},
            "system": {"cpu_count": psutil.cpu_count() or 1,
                       "cpu_millicores": round(psutil.cpu_percent(None) * (psutil.cpu_count() or 1) * 10),
                       "memory_total_mb": round(vm.total / _MB, 2), "memory_used_mb": round(vm.used / _MB, 2),
                       "memory_available_mb": round(vm.available / _MB, 2)},
        }
        with self._lock:
            self._snapshot = snapshot
