"""POP2 through pop2gate to each real IMAP server: the same tests against Dovecot, Cyrus in
both layouts, and Courier (the `imap_server` fixture, tests/backends.py).

Everything is checked against the server itself: the octets are each server's own
BODY.PEEK[], and what is left, flagged or removed is read back from it afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from backends import ImapServer
from helpers import Gateways, pop2_client, until_idle
from pop2gate.config import parse_config
from pop2gate.gateway.listeners import Gateway
from pop2gate.pop2.client import AsyncClient, Pop2Error

USER = "alice"
CORPUS = [
    b"From: a@example.org\r\nSubject: plain\r\n\r\nhello\r\n",
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n. \r\nend\r\n",
    b"Subject: 8bit body\r\n\r\n" + bytes(range(0x80, 0x100)) + b"\r\n\xe9t\xe9\r\n",
    b"Subject: long\r\n\r\n" + (b"x" * 998 + b"\r\n") * 40,
    b"Subject: empty lines\r\n\r\n\r\n\r\n",
    b"Subject: no final line end\r\n\r\nlast line without end",
]
_sources = itertools.count(1)

class Connect:
    """A gateway in front of the server: calling it connects a POP2 client (`source`: a
    loopback address to connect from); `idle()` waits until its sessions have ended."""

    def __init__(self, host: str, port: int, gateway: Gateway) -> None:
        self.host, self.port, self.gateway = host, port, gateway

    async def __call__(self, source: str | None = None) -> AsyncClient:
        client: AsyncClient = await pop2_client(self.host, self.port, source)
        return client

    async def idle(self) -> None:
        await until_idle(self.gateway)

def fresh_source() -> str:
    """A loopback source address of its own: servers delay failed logins per address."""
    n = next(_sources)
    return f"127.3.{n // 250}.{n % 250 + 1}"


def wire(data: bytes) -> bytes:
    """What POP2 sends for a message: its octets, the last line ended."""
    return data if data.endswith(b"\r\n") else data + b"\r\n"


@pytest.fixture
async def gate(imap_server: ImapServer) -> AsyncIterator[Callable[..., Awaitable[Connect]]]:
    """`await gate(limits=None, **backend_keys)` starts a gateway in front of the server (`Connect`)."""
    gateways = Gateways()

    async def make(limits: dict[str, object] | None = None, **extra: object) -> Connect:
        config = parse_config({
            "server": {"hostname": "test.invalid", "listen": ["127.0.0.1:0"]},
            "limits": {"bad_login_delay": 0.05, "close_linger": 0.1, **(limits or {})},
            "backend": [imap_server.backend(**extra)],
            "routing": {"default": "srv"},
        })
        return Connect(*await gateways.start(config))

    yield make
    await gateways.aclose()


async def logged_in(srv: ImapServer, gate, messages: list[bytes],
                    limits: dict[str, object] | None = None) -> tuple[AsyncClient, list[int], Connect]:
    """An INBOX holding just `messages`, and a POP2 client logged in to it through a new gateway."""
    srv.clear(USER)
    uids = [srv.append(USER, m) for m in messages]
    connect = await gate(limits)
    c = await connect()
    assert await c.helo(USER, srv.users[USER]) == len(messages)
    return c, uids, connect


async def test_fold_uses_the_personal_namespace(imap_server: ImapServer, gate) -> None:
    """POP2 folder names are the user's names, without the server's personal prefix
    (`INBOX.` on Courier and Debian's Cyrus); a name that carries the prefix still works."""
    srv = imap_server
    folders = {"Archive": 3, "Archive/2024": 1, "\u00dcbersicht": 2}
    for name, count in folders.items():
        for i in range(count):
            srv.append(USER, f"Subject: {name} {i}\r\n\r\nin {name}\r\n".encode(), folder=name)
    want = {name: len(srv.uids(USER, name)) for name in folders}
    assert all(want[name] >= count for name, count in folders.items())
    connect = await gate()
    c = await connect()
    await c.helo(USER, srv.users[USER])
    for name in folders:
        assert await c.fold(name) == want[name], name
        bodies = srv.bodies(USER, name)
        assert await c.read(1) == len(wire(bodies[min(bodies)]))
        assert await c.retr() == wire(bodies[min(bodies)])
        await c.nack()
    assert await c.fold("Nonexistent") == 0
    if srv.prefix:
        assert await c.fold("INBOX/Archive") == want["Archive"]
    assert await c.fold("inbox") == len(srv.uids(USER))
    await c.quit()


async def test_drain_is_byte_exact_and_ackd_quit_removes_exactly_those(imap_server: ImapServer, gate) -> None:
    """Every message as the server's own BODY.PEEK[] gives it; a message another client
    flagged \\Deleted is not offered and stays; ACKD + QUIT removes exactly the ACKD UIDs."""
    srv = imap_server
    srv.clear(USER)
    uids = [srv.append(USER, m) for m in CORPUS]
    theirs = srv.append(USER, b"Subject: theirs\r\n\r\nflagged elsewhere\r\n", flags=r"\Deleted")
    stored = srv.bodies(USER)
    connect = await gate()
    c = await connect()
    assert await c.helo(USER, srv.users[USER]) == len(CORPUS)
    kept = uids[1]
    for n, uid in enumerate(uids, 1):
        assert await c.read(n) == len(wire(stored[uid])), srv.layout
        assert await c.retr() == wire(stored[uid])
        if uid == kept:
            await c.nack()
        else:
            await c.ackd()
    await c.quit()
    left = srv.uids(USER)
    assert sorted(left) == [kept, theirs]
    assert r"\Seen" not in left[kept]  # read with PEEK, never ACKS'd
    assert r"\Deleted" in left[theirs] and r"\Deleted" not in left[kept]
    assert srv.bodies(USER)[kept] == stored[kept]


async def test_acks_sets_seen_and_deletes_nothing(imap_server: ImapServer, gate) -> None:
    srv = imap_server
    c, uids, _ = await logged_in(srv, gate, CORPUS[:3])
    assert await c.read(2) > 0
    await c.retr()
    await c.acks()
    await c.quit()
    left = srv.uids(USER)
    assert sorted(left) == uids
    assert [r"\Seen" in left[u] for u in uids] == [False, True, False]


async def test_ackd_then_drop_removes_nothing(imap_server: ImapServer, gate) -> None:
    srv = imap_server
    c, uids, connect = await logged_in(srv, gate, CORPUS[:3])
    for n in (1, 2):
        await c.read(n)
        await c.retr()
        await c.ackd()
    await c.close()  # gone without QUIT
    await connect.idle()
    left = srv.uids(USER)
    assert sorted(left) == uids
    assert not any(r"\Deleted" in f for f in left.values())


@pytest.mark.parametrize("announced", [False, True], ids=["first-read", "read-again"])
async def test_message_another_client_expunged_reads_zero(imap_server: ImapServer, gate, announced) -> None:
    """A message another client removed after HELO reads `=0`, on its first READ too (and on
    the next, with `imap_recheck_interval = 0`: a count already known always asks); the others
    are served and nothing else goes."""
    srv = imap_server
    c, uids, _ = await logged_in(srv, gate, CORPUS[:3], {"imap_recheck_interval": 0})
    stored = srv.bodies(USER)
    if announced:
        assert await c.read(2) == len(wire(stored[uids[1]]))
    srv.store(USER, uids[1], r"\Deleted", expunge=True)
    assert await c.read(2) == 0, srv.layout
    assert await c.read(3) == len(wire(stored[uids[2]]))
    assert await c.retr() == wire(stored[uids[2]])
    assert await c.ackd() == 0
    await c.quit()
    assert sorted(srv.uids(USER)) == [uids[0]]


async def test_message_read_ahead_then_removed_is_sent_whole(imap_server: ImapServer, gate) -> None:
    """A message read ahead and announced, then removed by another client: RETR sends every
    announced octet from what was read (Courier's placeholder never reaches the client); the
    session goes on and nothing else goes."""
    srv = imap_server
    c, uids, _ = await logged_in(srv, gate, CORPUS[:3], {"imap_recheck_interval": 0})
    stored = srv.bodies(USER)
    assert await c.read(2) == len(wire(stored[uids[1]]))
    srv.store(USER, uids[1], r"\Deleted", expunge=True)
    assert await c.retr() == wire(stored[uids[1]]), srv.layout
    assert await c.ackd() == len(wire(stored[uids[2]]))
    assert await c.retr() == wire(stored[uids[2]])
    await c.nack()
    await c.quit()
    assert sorted(srv.uids(USER)) == [uids[0], uids[2]]


async def test_removal_older_than_the_recheck_interval_reads_zero(imap_server: ImapServer, gate) -> None:
    """A message announced, then removed by another client more than `imap_recheck_interval`
    ago, reads `=0` when announced again, even though other commands were answered since
    (Courier reports an EXPUNGE only with a NOOP's answer, never with a UID FETCH's)."""
    srv = imap_server
    c, uids, _ = await logged_in(srv, gate, CORPUS[:3], {"imap_recheck_interval": 0.3, "imap_readahead": 0})
    stored = srv.bodies(USER)
    assert await c.read(2) == len(wire(stored[uids[1]]))
    srv.store(USER, uids[1], r"\Deleted", expunge=True)
    await asyncio.sleep(0.4)  # the removal is now older than the interval
    assert await c.read(3) == len(wire(stored[uids[2]]))  # a fetch, answered just now
    assert await c.read(2) == 0, srv.layout
    await c.quit()
    assert sorted(srv.uids(USER)) == [uids[0], uids[2]]


async def test_wrong_password_is_a_bad_login(imap_server: ImapServer, gate, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pop2gate")
    connect = await gate()
    c = await connect(fresh_source())
    with pytest.raises(Pop2Error, match="^Bad login$"):
        await c.helo(USER, "not-" + imap_server.users[USER])
    await c.close()
    assert "login refused" in caplog.text and "Traceback" not in caplog.text


async def test_master_login_opens_the_users_mailbox_or_is_refused(imap_server: ImapServer, gate, caplog) -> None:
    """`HELO user*master` reads `user`'s mailbox where the server honours the authorization
    identity (Dovecot master users, Cyrus proxy servers); Courier ignores it and would open the
    master's own mailbox, so there it is refused and nobody's mail is offered. Without
    `master_login = true` it is refused everywhere, before any connection."""
    caplog.set_level(logging.INFO, logger="pop2gate")
    srv = imap_server
    mine = {}
    for user in ("alice", "bob"):
        srv.clear(user)
        mine[user] = srv.append(user, f"Subject: for {user}\r\n\r\nonly {user} reads this\r\n".encode())
    master, password = srv.master or ("bob", srv.users["bob"])  # Courier: a real user as "master"

    connect = await gate()
    c = await connect(fresh_source())
    with pytest.raises(Pop2Error, match="^Bad login$"):
        await c.helo(f"alice*{master}", password)
    await c.close()
    assert "master_login is off" in caplog.text

    connect = await gate(master_login=True)
    if srv.master is None:
        c = await connect(fresh_source())
        with pytest.raises(Pop2Error, match="^Bad login$"):
            await c.helo(f"alice*{master}", password)
        await c.close()
        assert "master login 'alice*bob' refused" in caplog.text
        assert "LOGIN, user=bob," in srv.log()  # the server did open bob's mailbox for alice*bob
    else:
        for user in ("alice", "bob"):
            c = await connect()
            assert await c.helo(f"{user}*{master}", password) == 1
            assert await c.read(1) > 0
            assert await c.retr() == srv.bodies(user)[mine[user]]
            await c.ackd()
            await c.quit()
            assert srv.uids(user) == {}  # deleted from the mailbox the login named
    assert sorted(srv.uids("alice")) == ([] if srv.master else [mine["alice"]])
