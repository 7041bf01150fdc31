"""What runs now: for each function, the live version's worker pool and log; the pools being retired; the count of
calls and uploads in flight.

Strategy: the one owner of the in-memory table that calls read and deployments change (deploy.py writes it,
calls.py reads it). A call finds its function with a plain dict read, never a lock an upload holds; `swap` and
`remove` change an entry under the table's lock and move the replaced pool to `retiring`, where it finishes the
calls it has taken and is dropped once drained. The in-flight count lets shutdown wait for calls and uploads.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
import threading

from .errors import NotFound, ServiceUnavailable
from .logs import FunctionLog
from .state import FunctionRecord, Version
from .workers import Pool

__all__ = ["Live", "LiveTable"]


@dataclass(frozen=True, slots=True)
class Live:
    """A function's live version as calls see it. `timeout` is its own or the server's."""
    record: FunctionRecord
    version: Version
    pool: Pool
    log: FunctionLog
    timeout: float

    @property
    def name(self) -> str:
        return self.record.name


class LiveTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the dict and the list; reads of the dict alone need none
        self._live: dict[str, Live] = {}
        self._retiring: list[Live] = []  # replaced or deleted versions whose calls may still be running
        self._calls: collections.deque[None] = collections.deque()  # one entry per call or upload in flight
        self.closing = False

    def get(self, name: str) -> Live:
        live = self._live.get(name)
        if live is None:
            raise NotFound(f"no function named {name[:80]!r}", code="function_not_found")
        return live

    def find(self, name: str) -> Live | None:
        return self._live.get(name)

    def swap(self, live: Live) -> None:
        """Make `live` the function's entry; the pool it replaces takes no new calls and finishes the rest."""
        with self._lock:
            old = self._live.get(live.name)
            self._live[live.name] = live
            if old:
                self._retiring.append(old)
        if old:
            old.pool.close()

    def remove(self, name: str) -> Live:
        with self._lock:
            live = self._live.pop(name)
            self._retiring.append(live)
        live.pool.close()
        return live

    def pools(self, retiring: bool = True) -> list[Pool]:
        with self._lock:
            return [live.pool for live in self._live.values()] + \
                ([item.pool for item in self._retiring] if retiring else [])

    def named_pools(self) -> list[tuple[str, Pool]]:
        """Each function's live pool."""
        with self._lock:
            return [(name, live.pool) for name, live in self._live.items()]

    def versions_in_use(self, name: str | None = None) -> list[tuple[FunctionRecord, Version]]:
        """The versions whose workers may run (live, or retiring and not yet drained), of one function or all.
        Drained retiring pools are forgotten here."""
        with self._lock:
            self._retiring = [item for item in self._retiring if not item.pool.drained]
            entries = list(self._live.values()) + self._retiring
        return [(item.record, item.version) for item in entries if name is None or item.name == name]

    def logs(self) -> list[FunctionLog]:
        with self._lock:
            return [live.log for live in self._live.values()]

    # -- calls in flight -----------------------------------------------------------------------------------

    def enter(self) -> None:
        # A deque as the in-flight count: append/pop are atomic, so calls take no lock. Counted first and
        # checked second, so close() (which sets the flag first, then waits for the count) misses none.
        self._calls.append(None)
        if self.closing:
            self._calls.pop()
            raise shutting_down()

    def leave(self) -> None:
        self._calls.pop()

    def drain(self, grace: float) -> None:
        """Refuse new calls and let calls in flight finish, for up to `grace` seconds."""
        self.closing = True
        deadline = time.monotonic() + grace
        while self._calls and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self, grace: float) -> None:
        """Drain, then stop every worker and close the logs."""
        self.drain(grace)
        for pool in self.pools():
            pool.kill_all()
        for log in self.logs():
            log.close()


def shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable("the server is shutting down", code="shutting_down", close=True)
