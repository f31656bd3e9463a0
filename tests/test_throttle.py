"""Per-address login penalty and connection limit."""

from __future__ import annotations

import asyncio

from helpers import read_line
from pop2gate.config import Limits
from pop2gate.gateway.throttle import MAX_TRACKED, Throttle


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(**limits):
    clock = Clock()
    return Throttle(Limits(**limits), clock=clock), clock


def test_delay_doubles_per_failure_and_is_capped():
    t, _ = make(bad_login_delay=1, bad_login_max_delay=5)
    assert [t.failure_delay("a") for _ in range(5)] == [1, 2, 4, 5, 5]
    assert t.failure_delay("b") == 1  # other addresses are not punished


def test_failures_are_forgotten_after_the_window_or_a_success():
    t, clock = make(bad_login_delay=1, login_failure_window=60)
    t.failure_delay("a")
    t.failure_delay("a")
    clock.now += 61
    assert t.failure_delay("a") == 1
    t.failure_delay("a")
    t.succeeded("a")
    assert t.failure_delay("a") == 1


def test_state_is_bounded():
    t, clock = make(bad_login_delay=0)
    for i in range(MAX_TRACKED + 10):
        t.failure_delay(f"h{i}")
    assert len(t._failures) <= MAX_TRACKED


def test_connections_per_address():
    t, _ = make(max_connections_per_address=2)
    assert t.admit("a") and t.admit("a")
    assert not t.admit("a")
    assert t.admit("b")
    t.release("a")
    assert t.admit("a")
    t.release("a"), t.release("a"), t.release("b")
    assert not t.connections


async def test_repeated_failures_from_one_address_wait_longer(make_server):
    srv = await make_server(limits={"bad_login_delay": 0.2, "bad_login_max_delay": 10})
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(3):
        start = loop.time()
        assert (await srv.talk(b"HELO alice wrong\r\n")).endswith(b"- Bad login\r\n")
        times.append(loop.time() - start)
    assert times[0] >= 0.2 and times[1] >= 0.4 and times[2] >= 0.8


async def test_per_address_connection_limit(make_server):
    srv = await make_server(limits={"max_connections_per_address": 2})
    held = [await srv.open() for _ in range(2)]
    for reader, _ in held:
        assert (await read_line(reader)).startswith(b"+ POP2 ")
    assert await srv.talk(b"") == b"- Too many connections, try again later\r\n"
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.3)
    assert (await srv.talk(b"QUIT\r\n")).endswith(b"+ OK\r\n")
