"""Failed-login throttling (SPEC 12): the pure counter, then the real server."""

from __future__ import annotations

import base64
import http.client
from pathlib import Path

from harness import AUTH, Server
from tinyfaas_std.throttle import BLOCK, LIMIT, MAX_ADDRESSES, WINDOW, LoginThrottle

WRONG = "Basic " + base64.b64encode(b"admin:wrong").decode()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_tenth_failure_within_a_minute_blocks_that_address_only() -> None:
    clock = _Clock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(LIMIT - 1):
        assert throttle.failed("a") == 0
        clock.now += 1
    assert throttle.blocked("a") == 0
    assert throttle.failed("a") == BLOCK
    assert throttle.blocked("a") == BLOCK and throttle.blocked("b") == 0
    clock.now += BLOCK - 1
    assert throttle.blocked("a") == 1
    clock.now += 1
    assert throttle.blocked("a") == 0


def test_failures_spread_over_more_than_a_window_do_not_block() -> None:
    clock = _Clock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(3 * LIMIT):
        assert throttle.failed("a") == 0
        clock.now += WINDOW / (LIMIT - 1) + 0.1


def test_the_block_doubles_while_failures_persist_and_starts_over_after_a_clean_window() -> None:
    clock = _Clock()
    throttle = LoginThrottle(clock=clock)
    blocks = []
    for _ in range(3):
        for _ in range(LIMIT):
            block = throttle.failed("a")
        blocks.append(block)
        clock.now += block
    assert blocks == [BLOCK, 2 * BLOCK, 4 * BLOCK]
    clock.now += 2 * WINDOW
    assert [throttle.failed("a") for _ in range(LIMIT)][-1] == BLOCK


def test_the_table_is_bounded_and_zero_never_blocks() -> None:
    throttle = LoginThrottle()
    for i in range(MAX_ADDRESSES + 50):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._records) == MAX_ADDRESSES
    never = LoginThrottle(limit=0)
    assert all(never.failed("a") == 0 for _ in range(5 * LIMIT)) and never.blocked("a") == 0


def _get(server: Server, auth: str, source: str = "127.0.0.1") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5, source_address=(source, 0))
    conn.request("GET", "/admin/functions", headers={"Authorization": auth})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_the_eleventh_bad_login_is_429_while_another_address_still_logs_in(tmp_path: Path, wheels: Path) -> None:
    server = Server(tmp_path, wheels, ["--max-failed-logins", "10"]).start()
    try:
        assert [_get(server, WRONG).status for _ in range(10)] == [401] * 10
        blocked = _get(server, WRONG)
        assert blocked.status == 429 and 55 <= int(blocked.getheader("Retry-After")) <= 60
        assert _get(server, AUTH).status == 429  # right credentials too, from that address
        assert _get(server, AUTH, source="127.0.0.2").status == 200  # another address is not affected
        assert server.request("GET", "/healthz", auth=None).status == 200
    finally:
        server.stop()
    assert "127.0.0.1 is blocked for 60 s after 10 failed logins" in server.log()
