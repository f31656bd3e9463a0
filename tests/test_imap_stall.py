"""IMAP sessions whose clients stop reading pin no shared memory (stores/imap/budget.py)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from dovecot import USERS
from helpers import expect_closed, read_line
from pop2gate.config import Config, parse_config
from test_imap_e2e import Gate, backend, big_message

STALLED = 64
SMALL = b"Subject: small\r\n\r\nfor carol\r\n"


@pytest.fixture(scope="module")
def mail(dovecot):
    """One 30 MB message for alice (built and stored once), one small one for carol."""
    dovecot.clear("alice")
    dovecot.clear("carol")
    dovecot.append("alice", big_message(30 * 1024 * 1024))
    dovecot.append("carol", SMALL)
    yield
    dovecot.clear("alice")


def config(dovecot, limits: dict) -> Config:
    return parse_config({
        "server": {"hostname": "test.invalid", "listen": ["127.0.0.1:0"]},
        "limits": {"close_linger": 0.1, **limits},
        "backend": [backend(dovecot)],
        "routing": {"default": "dc"},
    })


async def stalled_retr(g: Gate, n: int) -> socket.socket:
    """A client (from an address of its own) that sends RETR for alice's message, takes its
    first octets, and reads no more. Its receive buffer is small, so the server soon waits."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((f"127.3.{n // 250}.{n % 250 + 1}", 0))
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (g.host, g.port))
        for command, reply in ((None, b"+"), (f"HELO alice {USERS['alice']}", b"#1"),
                               ("READ 1", b"="), ("RETR", b"Subject: big")):
            if command:
                await loop.sock_sendall(sock, command.encode() + b"\r\n")
            got = b""
            while len(got) < len(reply) or (command != "RETR" and not got.endswith(b"\r\n")):
                part = await loop.sock_recv(sock, 512)
                assert part, f"closed after {got!r}"
                got += part
            assert got.startswith(reply), got
    except BaseException:
        sock.close()
        raise
    return sock


@pytest.mark.parametrize("limits", [{}, {"imap_fetch_memory": 4 * 1024 * 1024}],
                         ids=["default", "small-memory"])
async def test_clients_that_stop_reading_do_not_block_others(dovecot, mail, limits):
    # The budget is shared by every user, so one user's sessions stand for many users'.
    g = await Gate(config(dovecot, {"max_sessions_per_user": STALLED, **limits})).start()
    tasks = [asyncio.create_task(stalled_retr(g, n)) for n in range(STALLED)]
    try:
        # Old code: past the budget, these never get their first octets; go on regardless.
        await asyncio.wait(tasks, timeout=20)
        c = await g.client()
        assert await c.helo("carol", USERS["carol"]) == 1
        assert await c.read(1) == len(SMALL)
        start = time.monotonic()
        try:
            async with asyncio.timeout(5):
                assert await c.retr() == SMALL
        except TimeoutError:
            pytest.fail(f"another user's RETR still waiting after 5 s behind {STALLED} stalled sessions")
        elapsed = time.monotonic() - start
        await c.nack()
        await c.quit()
        assert elapsed < 1, f"another user's RETR took {elapsed:.1f} s"
        assert all(t.done() and t.exception() is None for t in tasks)  # every stalled RETR had started
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is None:
                t.result().close()
        await g.stop()
    assert len(dovecot.uids("alice")) == 1  # a dropped RETR deletes nothing


async def test_no_room_in_time_ends_the_retr_and_deletes_nothing(dovecot, mail, caplog):
    g = await Gate(config(dovecot, {"imap_budget_timeout": 0.2})).start()
    try:
        budget = g.gateway.stores["dc"].budget
        await budget.acquire(budget.limit, 1)  # other fetches hold all of it
        reader, writer = await asyncio.open_connection(g.host, g.port)
        assert (await read_line(reader)).startswith(b"+")
        writer.write(f"HELO carol {USERS['carol']}\r\n".encode())
        assert (await read_line(reader)).startswith(b"#1")
        writer.write(b"READ 1\r\n")
        assert (await read_line(reader)).startswith(f"={len(SMALL)} ".encode())
        writer.write(b"RETR\r\n")
        assert await expect_closed(reader) == b""  # closed before any octet: the count is never wrong
        writer.close()
        await g.idle()
        budget.release(budget.limit)
    finally:
        await g.stop()
    assert len(dovecot.uids("carol")) == 1
    lines = [r.getMessage() for r in caplog.records if "imap_budget_timeout" in r.getMessage()]
    assert len(lines) == 1 and "user 'carol'" in lines[0]
