"""Login penalty per address and per user, the global failure cap, and the connection limit."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from helpers import PASSWORD, read_line
from pop2gate.config import Limits
from pop2gate.gateway.throttle import Throttle


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
    assert [t.failure_delay("a", "alice") for _ in range(5)] == [1, 2, 4, 5, 5]
    assert t.failure_delay("b", "bob") == 1  # other addresses and users are not punished


def test_failures_are_forgotten_after_the_window_or_a_success():
    t, clock = make(bad_login_delay=1, login_failure_window=60)
    t.failure_delay("a", "alice")
    t.failure_delay("a", "alice")
    clock.now += 61
    assert t.failure_delay("a", "alice") == 1
    t.failure_delay("a", "alice")
    t.succeeded("a", "alice")
    assert t.failure_delay("a", "alice") == 1


def test_forgotten_entries_are_dropped_a_few_at_a_time():
    t, clock = make(bad_login_delay=1, login_failure_window=60)
    for i in range(20):
        t.failure_delay(f"h{i}", "u")
    clock.now += 61
    assert t.failure_delay("h19", "u") == 1  # forgotten, though not among the oldest
    assert 1 < len(t._addresses) < 20  # a bounded amount dropped per failure
    for i in range(10):
        t.failure_delay(f"n{i}", f"v{i}")
    assert len(t._addresses) == 11  # only the recent ones are left


def test_success_on_another_account_keeps_the_address_failures():
    t, _ = make(bad_login_delay=1, bad_login_max_delay=100)
    assert [t.failure_delay("a", "alice") for _ in range(3)] == [1, 2, 4]
    t.succeeded("a", "mallory")  # the attacker's own account
    assert t.failure_delay("a", "alice") == 8
    assert t.failure_delay("a", "bob") == 16  # the address has 5 failures


def test_success_clears_only_that_users_failures_from_that_address():
    t, _ = make(bad_login_delay=1, bad_login_max_delay=100)
    t.failure_delay("a", "alice"), t.failure_delay("a", "alice")
    t.failure_delay("a", "bob")
    t.failure_delay("b", "alice")
    t.succeeded("a", "alice")
    # Address a keeps bob's failure; alice keeps the one from address b.
    assert t.failure_delay("a", "carol") == 2
    assert t.failure_delay("c", "alice") == 2


def test_many_addresses_guessing_one_user_are_slowed():
    t, _ = make(bad_login_delay=1, bad_login_max_delay=100)
    assert [t.failure_delay(f"10.0.0.{i}", "alice") for i in range(5)] == [1, 2, 4, 8, 16]
    assert t.failure_delay("10.0.1.1", "bob") == 1
    t.succeeded("10.0.0.99", "alice")  # an address that never failed clears nothing
    assert t.failure_delay("10.0.0.50", "alice") == 32


def test_the_larger_of_address_and_user_delay_applies():
    t, _ = make(bad_login_delay=1, bad_login_max_delay=100)
    for i in range(3):
        t.failure_delay("a", f"user{i}")
    assert t.failure_delay("a", "new") == 8  # address: 4th failure, user: 1st
    t.failure_delay("b", "x"), t.failure_delay("c", "x"), t.failure_delay("d", "x")
    assert t.failure_delay("e", "x") == 8  # user: 4th failure, address: 1st


def test_global_failure_rate_gives_everyone_the_maximum_delay():
    t, clock = make(bad_login_delay=1, bad_login_max_delay=30, max_login_failures_per_second=3)
    assert [t.failure_delay(f"h{i}", f"u{i}") for i in range(5)] == [1, 1, 1, 30, 30]
    clock.now += 1.5
    assert t.failure_delay("h9", "u9") == 1


def test_address_key_groups_ipv6_by_prefix_and_mapped_ipv4_as_ipv4():
    key = Throttle(Limits()).address_key
    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("::ffff:192.0.2.1") == key("192.0.2.1") == "192.0.2.1"
    assert key("fe80::1%eth0") == key("fe80::2") == "fe80::/64"
    assert key("stdio") == "stdio"
    assert Throttle(Limits(ipv6_prefix=48)).address_key("2001:db8::1") == "2001:db8::/48"
    exact = Throttle(Limits(ipv6_prefix=128)).address_key
    assert exact("2001:db8::1") != exact("2001:db8::2")


def test_failures_count_per_ipv6_prefix():
    t, _ = make(bad_login_delay=1, bad_login_max_delay=100, ipv6_prefix=64)
    assert t.failure_delay("2001:db8::1", "u1") == 1
    assert t.failure_delay("2001:db8::2", "u2") == 2
    assert t.failure_delay("2001:db8:0:1::1", "u3") == 1
    assert t.failure_delay("::ffff:10.0.0.1", "u4") == 1
    assert t.failure_delay("10.0.0.1", "u5") == 2
    t.succeeded("2001:db8::77", "u1")  # same /64: clears u1's failure there
    assert t.failure_delay("2001:db8::3", "u6") == 2


def test_connections_per_address():
    t, _ = make(max_connections_per_address=2)
    assert t.admit("a") and t.admit("a")
    assert not t.admit("a")
    assert t.admit("b")
    t.release("a")
    assert t.admit("a")
    t.release("a"), t.release("a"), t.release("b")
    assert not t.connections


def test_connections_count_per_ipv6_prefix_and_mapped_ipv4():
    t, _ = make(max_connections_per_address=2)
    assert t.admit("2001:db8::1") and t.admit("2001:db8::2")
    assert not t.admit("2001:db8::3")
    assert t.admit("2001:db8:0:1::1")
    t.release("2001:db8::1")
    assert t.admit("2001:db8::4")
    assert t.admit("10.0.0.1") and t.admit("::ffff:10.0.0.1")
    assert not t.admit("10.0.0.1")


def test_tracked_addresses_are_bounded_oldest_first():
    t, _ = make(bad_login_delay=1, bad_login_max_delay=100, max_tracked_addresses=3)
    t.failure_delay("a", "u1"), t.failure_delay("a", "u1")
    for host in ("b", "c", "d"):
        t.failure_delay(host, host)
    assert len(t._addresses) <= 3
    assert t.failure_delay("d", "v") == 2  # the newest is remembered
    assert t.failure_delay("a", "w") == 1  # the oldest was dropped


def test_a_success_after_eviction_clears_no_other_account():
    t, _ = make(bad_login_delay=1, bad_login_max_delay=100, max_tracked_addresses=2)
    t.failure_delay("b", "carol"), t.failure_delay("a", "alice"), t.failure_delay("b", "bob")
    t.succeeded("b", "bob")
    t.failure_delay("c", "dave")  # address a is dropped; (a, alice) is still held
    t.succeeded("c", "dave")
    t.failure_delay("a", "eve")  # a new record for a
    t.succeeded("a", "alice")  # must not take eve's failure off a
    assert t.failure_delay("a", "zed") == 2


def test_work_per_failure_stays_flat_past_the_bound():
    bound = 20_000
    t, _ = make(bad_login_delay=0, max_tracked_addresses=bound)
    hosts = iter(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(10**6))

    def cost() -> float:  # the best of three batches of 1,000 new addresses
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(1000):
                t.failure_delay(next(hosts), "root")
            runs.append(time.perf_counter() - start)
        return min(runs)

    for _ in range(bound - 4000):
        t.failure_delay(next(hosts), "root")
    before = cost()
    for _ in range(1000):
        t.failure_delay(next(hosts), "root")
    assert len(t._addresses) == bound
    after = cost()
    assert after < 5 * before, (before, after)


@pytest.mark.parametrize("key, value", [("ipv6_prefix", 0), ("ipv6_prefix", 129),
                                        ("max_tracked_addresses", 0), ("max_login_failures_per_second", 0)])
def test_settings_are_checked(key, value):
    with pytest.raises(ValidationError):
        Limits(**{key: value})


async def test_repeated_failures_from_one_address_wait_longer(make_server):
    srv = await make_server(limits={"bad_login_delay": 0.2, "bad_login_max_delay": 10})
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(3):
        start = loop.time()
        assert (await srv.talk(b"HELO alice wrong\r\n")).endswith(b"- Bad login\r\n")
        times.append(loop.time() - start)
    assert times[0] >= 0.2 and times[1] >= 0.4 and times[2] >= 0.8


async def _login(srv, user: str, password: str) -> bytes:
    """One session as a client runs it: wait for the greeting, HELO, QUIT if logged in."""
    reader, writer = await srv.open()
    try:
        assert (await read_line(reader)).startswith(b"+ POP2 ")
        writer.write(f"HELO {user} {password}\r\n".encode())
        reply = await read_line(reader)
        if reply.startswith(b"#"):
            writer.write(b"QUIT\r\n")
            assert await read_line(reader) == b"+ OK\r\n"
        return reply
    finally:
        writer.close()


async def test_a_login_to_another_account_keeps_the_guessed_accounts_delay(env, make_server):
    env.add_user("mallory")
    srv = await make_server(limits={"bad_login_delay": 0.1, "bad_login_max_delay": 10})
    loop = asyncio.get_running_loop()
    assert await _login(srv, "alice", "guess1") == b"- Bad login\r\n"
    assert await _login(srv, "alice", "guess2") == b"- Bad login\r\n"
    assert (await _login(srv, "mallory", PASSWORD)).startswith(b"#")
    start = loop.time()
    assert await _login(srv, "alice", "guess3") == b"- Bad login\r\n"
    assert loop.time() - start >= 0.4  # the third failure: 0.1 doubled twice


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
