"""Schedules (SPEC 11): one thread that sleeps until the next scheduled run, then makes it an async call.

Strategy: the scheduler owns, behind its condition's lock, each scheduled function's parsed `Schedule` and next
run time. Its thread waits on the condition until the earliest next run (or until a schedule changes), so it
costs nothing while idle however many functions have schedules: it never polls. At a run it submits one async
call with trigger `schedule` (queue.py), unless the previous scheduled call of that function is still queued or
running: then the run is skipped. The next run is computed from the run just made, or from now when that is in
the past, so runs missed while the server was down (or the machine slept) are not made up.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timezone

from . import cron
from .errors import FaasError
from .queue import AsyncCalls

__all__ = ["Scheduler"]

log = logging.getLogger("tinyfaas_std")


class Scheduler:
    def __init__(self, queue: AsyncCalls) -> None:
        self._queue = queue
        self._cond = threading.Condition()
        self._plans: dict[str, tuple[cron.Schedule, str, float]] = {}  # name -> (schedule, calling, next run)
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def set(self, name: str, expr: str | None, calling: str) -> None:
        """The function's schedule from now on (None: it has none)."""
        with self._cond:
            plan = self._plans.get(name)
            if expr is None:
                self._plans.pop(name, None)
            elif plan is not None and plan[0].expr == expr:  # a new version, the same schedule: keep its time
                self._plans[name] = (plan[0], calling, plan[2])
            else:
                schedule = cron.parse(expr)
                self._plans[name] = (schedule, calling, _next(schedule, time.time()))
            self._cond.notify()

    def next_run(self, name: str) -> str | None:
        with self._cond:
            plan = self._plans.get(name)
        return _iso(plan[2]) if plan else None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.time()
                    due = [name for name, plan in self._plans.items() if plan[2] <= now]
                    if due:
                        break
                    soonest = min((plan[2] for plan in self._plans.values()), default=None)
                    self._cond.wait(None if soonest is None else soonest - now)
                if self._stopped:
                    return
                runs = []
                for name in due:
                    schedule, calling, at = self._plans[name]
                    self._plans[name] = (schedule, calling, _next(schedule, max(at, now - 1e-6), now))
                    runs.append((name, schedule.expr, calling, at))
            for name, expr, calling, at in runs:  # outside the lock: submitting writes a file
                try:
                    self._run(name, expr, calling, at)
                except Exception:  # a bug, or a disk error: that run is lost, the schedules go on
                    log.exception("schedule of %s: the run at %s failed", name, _iso(at))

    def _run(self, name: str, expr: str, calling: str, at: float) -> None:
        if self._queue.busy(name, "schedule"):
            log.info("schedule of %s: run at %s skipped, the previous one is still going", name, _iso(at))
            return
        body = b""
        request: tuple[str, str, str, dict[str, str]] = ("POST", "", "", {})
        if calling == "event":
            body = json.dumps({"source": "schedule", "time": _iso(at), "schedule": expr}).encode()
        elif calling == "http":
            request = ("GET", "", "", {"x-tinyfaas-trigger": "schedule"})
        try:
            self._queue.submit(name, request, body, None, trigger="schedule")
        except FaasError as exc:  # deleted meanwhile, or its queue is full
            log.info("schedule of %s: run at %s not made: %s", name, _iso(at), exc.message)


def _next(schedule: cron.Schedule, after: float, now: float | None = None) -> float:
    """The first run strictly after `after`, and not before `now` (missed runs are not made up)."""
    moment = schedule.next_after(datetime.fromtimestamp(after, timezone.utc)).timestamp()
    if now is not None and moment <= now:
        moment = schedule.next_after(datetime.fromtimestamp(now, timezone.utc)).timestamp()
    return moment


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
