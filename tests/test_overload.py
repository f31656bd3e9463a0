"""Overload that favours real users: a real server process under idle and bad-login floods."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, PASSWORD, expect_closed, free_port, read_line, wait_port

IDLE_ADDRESSES = 250
IDLE_PER_ADDRESS = 8  # 2,000 idle connections
LOOP_ADDRESSES = 10
LOOPS_PER_ADDRESS = 20  # 200 bad-login loops
GREETING = b"+ POP2 test.invalid pop2gate server ready\r\n"
HELO = f"HELO alice {PASSWORD}\r\n".encode()
SHED = b"- Too many connections, try again later\r\n"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def served(env):
    env.deliver("alice", b"Subject: hello\n\nbody\n")
    port = free_port()
    env.limits["bad_login_delay"] = 1  # the defaults otherwise: 200 connections, 100 before login
    cfg = env.write_config(f"127.0.0.1:{port}")
    proc = subprocess.Popen([str(BIN / "pop2gate"), "serve", "-c", str(cfg), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


async def idle(port: int, source: str, held: list) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 10)
        held.append(conn)


async def bad_login_loop(port: int, source: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        try:  # asyncio.timeout, not wait_for: a cancel must not be lost when a read ends with it
            async with asyncio.timeout(5):
                await reader.readline()
            writer.write(b"HELO alice wrong\r\n")
            await writer.drain()
            async with asyncio.timeout(40):
                await reader.read(-1)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()


async def normal_session(port: int, source: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        out = await reader.readline()
        for line in (f"HELO alice {PASSWORD}\r\n".encode(), b"READ\r\n", b"RETR\r\n", b"ACKS\r\n", b"QUIT\r\n"):
            writer.write(line)
            await writer.drain()
            if line.startswith(b"RETR"):
                out += await reader.readexactly(len(b"Subject: hello\r\n\r\nbody\r\n"))
            else:
                out += await reader.readline()
        return out
    finally:
        writer.close()


async def test_a_real_user_gets_in_while_idle_and_failing_clients_flood(served):
    port, proc = served
    # warm up: every password-hash worker has held its 19 MiB once (the allocator keeps it)
    await asyncio.gather(*(normal_session(port, f"127.5.1.{n + 1}") for n in range(6)))
    before = rss_kb(proc.pid)
    held: list = []
    stop = asyncio.Event()
    loops = [asyncio.create_task(bad_login_loop(port, f"127.3.0.{a + 1}", stop))
             for a in range(LOOP_ADDRESSES) for _ in range(LOOPS_PER_ADDRESS)]
    try:
        await asyncio.gather(*(idle(port, f"127.4.{a // 250}.{a % 250 + 1}", held)
                               for a in range(IDLE_ADDRESSES) for _ in range(IDLE_PER_ADDRESS)))
        await asyncio.sleep(1.5)  # the loops are in their delays, the idle ones hold what is left
        loop = asyncio.get_running_loop()
        start = loop.time()
        reply = await asyncio.wait_for(normal_session(port, "127.5.0.1"), 10)
        took = loop.time() - start
    finally:
        stop.set()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for _, writer in held:
            writer.close()
    assert reply.startswith(b"+ POP2 ") and b"#1 message in INBOX\r\n" in reply and reply.endswith(b"+ OK\r\n")
    assert took < 2.0, f"a normal session took {took:.2f} s"
    assert rss_kb(proc.pid) - before < 40_000  # kB: memory stays flat


async def open_from(srv, source: str):
    return await asyncio.open_connection(srv.host, srv.port, local_addr=(source, 0))


async def test_a_client_whose_helo_has_arrived_is_not_shed_as_idle(make_server, monkeypatch):
    srv = await make_server(limits={"max_prelogin_connections": 3, "max_logins_per_address": 1,
                                    "greeting_grace": 0})  # idle as soon as connected
    store = srv.gateway.stores["local"]
    real_login, go = store.login, asyncio.Event()

    async def held_login(*args):  # the address's one login turn stays taken until `go`
        await go.wait()
        return await real_login(*args)

    monkeypatch.setattr(store, "login", held_login)
    first, eager = await srv.open(), await srv.open()
    for _, writer in (first, eager):
        writer.write(HELO)  # at once, before the greeting, as a pipelining client does
        await writer.drain()
    # one is being checked, the other's HELO waits (for its turn, or unread): neither is idle
    idle = await srv.open()
    newcomer = await srv.open()
    assert await read_line(newcomer[0]) == GREETING
    assert await expect_closed(idle[0]) == GREETING + SHED  # the idle one gave way
    go.set()
    for reader, _ in (first, eager):
        assert await read_line(reader) == GREETING
        assert await read_line(reader) == b"#0 messages in INBOX\r\n"
    for reader, writer in (first, eager, newcomer):
        writer.write(b"QUIT\r\n")
        assert (await expect_closed(reader)).endswith(b"+ OK\r\n")
        writer.close()
    idle[1].close()


async def test_a_shed_connection_gets_its_reply_then_a_clean_close_not_a_reset(make_server):
    srv = await make_server(limits={"max_connections": 1, "bad_login_delay": 30})
    reader, writer = await srv.open()
    assert await read_line(reader) == GREETING
    writer.write(b"HELO alice wrong\r\n")
    await writer.drain()
    for _ in range(1000):  # until the failure is counted: the session waits out its delay
        if srv.gateway.throttle.penalized("127.0.0.1"):
            break
        await asyncio.sleep(0.01)
    # input the waiting session does not read: more than one read of the stream takes, so the
    # kernel holds the rest, and closing the socket over it would send a reset
    writer.write(b"NOOP\r\n" * 100_000)
    newcomer = await srv.open()
    assert await read_line(newcomer[0]) == GREETING
    assert await expect_closed(reader) == SHED  # then end of file, not ConnectionResetError
    writer.close()
    newcomer[1].write(b"QUIT\r\n")
    assert await expect_closed(newcomer[0]) == b"+ OK\r\n"
    newcomer[1].close()


async def test_a_bad_login_flood_from_other_addresses_does_not_queue_ahead_of_a_real_user(make_server):
    srv = await make_server(limits={"password_hash_workers": 1, "bad_login_delay": 0, "bad_login_max_delay": 0,
                                    "max_logins_per_address": 2})
    flooders = [f"127.3.0.{a + 1}" for a in range(8)]

    async def bad_login(source: str) -> None:
        reader, writer = await open_from(srv, source)
        assert await read_line(reader) == GREETING
        writer.write(b"HELO alice wrong\r\n")
        assert await expect_closed(reader, 60) == b"- Bad login\r\n"
        writer.close()

    await asyncio.gather(*(bad_login(source) for source in flooders))  # each has failed once
    done: list[str] = []

    async def flood(source: str) -> None:
        await bad_login(source)
        done.append("flood")

    floods = [asyncio.create_task(flood(source)) for source in flooders for _ in range(2)]
    for _ in range(2000):  # until every flood HELO is in (read by its session)
        if len(done) + sum(1 for session in srv.gateway._tasks if session.user) >= len(floods):
            break
        await asyncio.sleep(0.005)
    reader, writer = await open_from(srv, "127.5.0.1")
    assert await read_line(reader) == GREETING
    writer.write(HELO)
    assert await read_line(reader, 60) == b"#0 messages in INBOX\r\n"
    done.append("user")
    writer.write(b"QUIT\r\n")
    assert await expect_closed(reader) == b"+ OK\r\n"
    writer.close()
    await asyncio.gather(*floods)
    # checks run one at a time: the user's waited for at most the few that failing addresses
    # may have under way together, not for all sixteen
    assert done.index("user") <= 4, done
