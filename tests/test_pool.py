"""The worker pool on its own, with stand-in workers: hand-offs, queue order and closing, race by race."""

from __future__ import annotations

import threading
import time

import pytest

from tinyfaas_std.errors import TooManyRequests
from tinyfaas_std.workers import Pool, PoolClosed


class FakeWorker:
    def __init__(self, n: int) -> None:
        self.pid = n
        self.last_used = time.monotonic()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _pool(max_workers: int = 1, max_queue: int = 8) -> tuple[Pool, list[FakeWorker]]:
    made: list[FakeWorker] = []

    def spawn() -> FakeWorker:
        made.append(FakeWorker(len(made)))
        return made[-1]

    return Pool(spawn, max_workers, max_queue), made  # type: ignore[arg-type]


def _wait_queued(pool: Pool, n: int) -> None:
    deadline = time.monotonic() + 2
    while len(pool._waiters) < n:
        assert time.monotonic() < deadline, "the caller never queued"
        time.sleep(0.001)


def test_a_close_racing_a_hand_off_loses_no_worker() -> None:
    """close() runs while release() is handing a worker to a queued call: the call still gets the worker, and the
    worker is closed when that call returns, so the old version is collected."""
    pool, made = _pool()
    worker = pool.acquire(1)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(5)))
    waiter.start()
    _wait_queued(pool, 1)
    real_hand = pool._hand
    closer = threading.Thread(target=pool.close)

    def hand_with_a_close_in_between(item: object) -> None:
        closer.start()
        closer.join(0.2)  # close() gets every chance to run now
        real_hand(item)

    pool._hand = hand_with_a_close_in_between  # type: ignore[method-assign]
    pool.release(worker, healthy=True)  # type: ignore[arg-type]
    waiter.join(5)
    closer.join(5)
    assert got == [worker] and not worker.closed  # the queued call runs on it
    pool.release(worker, healthy=True)  # type: ignore[arg-type]
    assert worker.closed and pool.drained and len(made) == 1


def test_calls_queued_before_a_close_still_run_and_new_ones_are_refused() -> None:
    pool, made = _pool(max_workers=1)
    worker = pool.acquire(1)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(pool.acquire(5))) for _ in range(2)]
    for i, thread in enumerate(threads):
        thread.start()
        _wait_queued(pool, i + 1)
    pool.close()
    with pytest.raises(PoolClosed):
        pool.acquire(1)
    pool.release(worker, healthy=True)  # type: ignore[arg-type]
    threads[0].join(5)
    pool.release(worker, healthy=True)  # type: ignore[arg-type]
    threads[1].join(5)
    assert results == [worker, worker] and not pool.drained
    pool.release(worker, healthy=True)  # type: ignore[arg-type]
    assert worker.closed and pool.drained and len(made) == 1


def test_queued_calls_are_served_in_arrival_order_and_a_dead_worker_frees_its_slot() -> None:
    pool, made = _pool(max_workers=1)
    worker = pool.acquire(1)
    order: list[int] = []

    def call(n: int) -> None:
        got = pool.acquire(5)
        order.append(n)
        pool.release(got, healthy=n != 0)  # the first queued call's worker dies

    threads = []
    for n in range(4):
        threads.append(threading.Thread(target=call, args=(n,)))
        threads[-1].start()
        _wait_queued(pool, n + 1)
    pool.release(worker, healthy=True)  # type: ignore[arg-type]
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3]
    assert len(made) == 2 and made[0].closed and not made[1].closed  # a new worker took the dead one's slot


def test_a_queue_timeout_leaves_no_stale_place_and_the_bound_is_429() -> None:
    pool, _ = _pool(max_workers=1, max_queue=1)
    worker = pool.acquire(1)
    with pytest.raises(TooManyRequests) as timed_out:
        pool.acquire(0.05)
    assert timed_out.value.code == "queue_timeout" and not pool._waiters
    waiter = threading.Thread(target=lambda: pool.release(pool.acquire(5), True))
    waiter.start()
    _wait_queued(pool, 1)
    with pytest.raises(TooManyRequests) as full:
        pool.acquire(1)
    assert full.value.code == "queue_full"
    pool.release(worker, healthy=True)  # type: ignore[arg-type]
    waiter.join(5)
    assert pool.acquire(0.05) is worker
