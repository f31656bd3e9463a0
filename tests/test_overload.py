"""Overload that favours real users: a real server process under idle and bad-login floods."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, PASSWORD, free_port, wait_port

IDLE_ADDRESSES = 250
IDLE_PER_ADDRESS = 8  # 2,000 idle connections
LOOP_ADDRESSES = 10
LOOPS_PER_ADDRESS = 20  # 200 bad-login loops


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
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        try:
            await asyncio.wait_for(reader.readline(), 5)
            writer.write(b"HELO alice wrong\r\n")
            await writer.drain()
            await asyncio.wait_for(reader.read(-1), 40)
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
