"""Failed-login throttling per client address (SPEC 12).

Strategy: `LoginThrottle` counts each address's failed logins in a sliding window. The 10th failure within 60 s
blocks the address for 60 s: every request from it, with or without the right credentials, is answered 429 with
`Retry-After` until then. An address that fails again soon after a block is blocked twice as long each time
(up to a day); one that stays clean for a window starts over. Other addresses are never affected. The table holds
at most MAX_ADDRESSES addresses, oldest dropped first, so a flood from many addresses costs bounded memory. It
has its own lock, and a request from an address with no failures costs one dict lookup.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["LoginThrottle", "LIMIT", "WINDOW", "BLOCK"]

LIMIT = 10              # failures within WINDOW that block an address (SPEC 12; --max-failed-logins)
WINDOW = 60.0           # seconds
BLOCK = 60.0            # seconds of the first block; doubles while failures persist
MAX_BLOCK = 86400.0     # a day: the doubling stops there
MAX_ADDRESSES = 10_000  # addresses tracked at once


@dataclass(slots=True)
class _Record:
    failures: collections.deque[float] = field(default_factory=collections.deque)
    blocked_until: float = 0.0
    penalty: float = 0.0   # the last block's length; 0 when the address has been clean for a window


class LoginThrottle:
    def __init__(self, limit: int = LIMIT, clock: Callable[[], float] = time.monotonic) -> None:
        """`limit`: failures within WINDOW that block an address; 0 never blocks."""
        self._limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._records: collections.OrderedDict[str, _Record] = collections.OrderedDict()

    def blocked(self, address: str) -> float:
        """Seconds `address` stays blocked (0: it may try)."""
        record = self._records.get(address)  # no lock: a dict read, for the addresses that never failed
        if record is None:
            return 0.0
        return max(0.0, record.blocked_until - self._clock())

    def failed(self, address: str) -> float:
        """Count a failed login; the seconds of the block it starts (0: none)."""
        if not self._limit:
            return 0.0
        now = self._clock()
        with self._lock:
            record = self._records.pop(address, None) or _Record()
            self._records[address] = record  # the most recently failing last: the oldest go first
            while len(self._records) > MAX_ADDRESSES:
                self._records.popitem(last=False)
            failures = record.failures
            if now > record.blocked_until + WINDOW and (not failures or now - failures[-1] > WINDOW):
                record.penalty = 0.0  # clean for a window since its last block: it starts over
            failures.append(now)
            while failures and now - failures[0] > WINDOW:
                failures.popleft()
            if len(failures) < self._limit or now < record.blocked_until:
                return 0.0
            record.penalty = min(MAX_BLOCK, record.penalty * 2 if record.penalty else BLOCK)
            record.blocked_until = now + record.penalty
            failures.clear()
            return record.penalty
