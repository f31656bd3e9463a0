"""IMAP round trips per POP2 step: a login asks nothing it was already told; small messages
are read ahead (limits.imap_readahead), one `UID FETCH` for many, the octets held in
`imap_fetch_memory` until sent, every answer still confirmed by the server; ACKS flags go out
together; RETR of a body read ahead asks nothing, and a count already known asks with a NOOP
only once the selection or the last NOOP is `imap_recheck_interval` old.

The IMAP commands the gateway sends are counted on the wire by a relay between it and Dovecot.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from dovecot import HOST, USERS, Dovecot
from helpers import Gateways
from pop2gate.config import parse_config
from pop2gate.pop2.client import AsyncClient
from pop2gate.stores.imap import ImapStore


class Relay:
    """A TCP relay to Dovecot's IMAP port that keeps every line the gateway sends."""

    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot
        self.sent = bytearray()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, HOST, 0)
        return self.server.sockets[0].getsockname()[1]

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        up_r, up_w = await asyncio.open_connection(HOST, self.dovecot.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            try:
                while data := await src.read(65536):
                    if keep:
                        self.sent += data
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            dst.close()

        await asyncio.gather(pipe(reader, up_w, True), pipe(up_r, writer, False))

    def commands(self, pattern: str) -> list[bytes]:
        return re.findall(rb"^\S+ " + pattern.encode() + rb"[^\r\n]*", bytes(self.sent), re.M)

    async def logged_out(self) -> None:
        """Wait until the gateway has ended its IMAP session."""
        for _ in range(250):
            if self.commands("LOGOUT"):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("no LOGOUT")

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def relayed(dovecot):
    """A gateway in front of the relay; `make(limits)` -> (client port, relay, store)."""
    gateways, relays = Gateways(), []

    async def make(limits: dict | None = None) -> tuple[int, Relay, ImapStore]:
        relay = Relay(dovecot)
        relays.append(relay)
        port = await relay.start()
        config = parse_config({
            "server": {"hostname": "test.invalid", "listen": ["127.0.0.1:0"]},
            "limits": {"close_linger": 0.1, **(limits or {})},
            "backend": [{"name": "dc", "type": "imap", "url": f"imap://{HOST}:{port}", "tls": "none"}],
            "routing": {"default": "dc"},
        })
        host_port = await gateways.start(config)
        store = host_port[2].stores["dc"]
        assert isinstance(store, ImapStore)
        return host_port[1], relay, store

    yield make
    await gateways.aclose()
    for relay in relays:
        await relay.close()


def fill(dovecot: Dovecot, count: int, size: int) -> list[bytes]:
    dovecot.clear("alice")
    bodies = [b"Subject: m%d\r\n\r\n" % i + b"x" * size + (b"\r\n" if i % 3 else b"") for i in range(count)]
    for body in bodies:
        dovecot.append("alice", body)
    return bodies


async def drain(port: int) -> list[bytes]:
    """READ n, RETR, ACKS per message, each reply awaited."""
    c = await AsyncClient.connect(HOST, port, timeout=15)
    got = []
    for n in range(1, await c.helo("alice", USERS["alice"]) + 1):
        size = await c.read(n)
        body = await c.retr()
        assert len(body) == size
        got.append(body)
        await c.acks()
    await c.quit()
    return got


async def test_small_messages_come_in_one_fetch_for_many(dovecot, relayed):
    bodies = fill(dovecot, 30, 2000)
    port, relay, store = await relayed()
    got = await drain(port)
    await relay.logged_out()
    assert got == [wire(b) for b in bodies]
    fetches = relay.commands("UID FETCH")
    assert len(fetches) == 2, fetches  # the snapshot, then every body at once
    assert not relay.commands(r"UID FETCH \d+ \([^)]*BODY\.PEEK\[\]<")  # no tail fetches
    stores = relay.commands(r"UID STORE [\d:,]+ \+FLAGS\.SILENT \(\\Seen\)")
    assert len(stores) == 1 and uid_count(stores[0].split(b" ")[3]) == 30  # ACKS, all in one
    assert all(r"\Seen" in flags for flags in dovecot.uids("alice").values())
    assert store.budget.used == 0 and store.budget.held == 0  # all sent, nothing held


@pytest.mark.parametrize("end", ["quit", "drop"])
async def test_acks_flags_arrive_however_the_session_ends(dovecot, relayed, end):
    fill(dovecot, 4, 100)
    port, relay, _ = await relayed()
    c = await AsyncClient.connect(HOST, port, timeout=15)
    assert await c.helo("alice", USERS["alice"]) == 4
    assert await c.read(1) > 0
    for _ in range(3):
        await c.retr()
        await c.acks()
    if end == "quit":
        await c.quit()
    else:
        await c.close()  # gone without QUIT: the flags still go out, nothing is deleted
    await relay.logged_out()
    flags = [f for _, f in sorted(dovecot.uids("alice").items())]
    assert [r"\Seen" in f for f in flags] == [True, True, True, False]
    assert not any(r"\Deleted" in f for f in flags)


async def test_read_ahead_stops_at_its_octets_and_at_a_large_message(dovecot, relayed):
    dovecot.clear("alice")
    small = [b"Subject: s%d\r\n\r\n" % i + b"y" * 3000 + b"\r\n" for i in range(6)]
    large = b"Subject: large\r\n\r\n" + b"z" * 9000 + b"\r\n"
    for body in [*small[:3], large, *small[3:]]:
        dovecot.append("alice", body)
    port, relay, store = await relayed({"imap_readahead": 8192})
    assert await drain(port) == [*small[:3], large, *small[3:]]
    whole = relay.commands(r"UID FETCH [\d:,]+ \(RFC822\.SIZE BODY\.PEEK\[\]\)")
    # at most 8192 octets at a time: two small ones, one (the large one is next), the large
    # one alone when RETR asks for it (in one partial fetch), then two and one
    assert [uid_count(f.split(b" ")[3]) for f in whole] == [2, 1, 2, 1], whole
    assert len(relay.commands(r"UID FETCH \d+ \(RFC822\.SIZE BODY\.PEEK\[\]<\d+\.2>")) == 1  # the large one's tail
    assert len(relay.commands(r"UID FETCH \d+ \(BODY\.PEEK\[\]<0\.\d+>")) == 1  # its body, at RETR
    assert store.budget.used == 0


def wire(body: bytes) -> bytes:
    """What RETR sends for `body`: its last line ended."""
    return body if body.endswith(b"\r\n") else body + b"\r\n"


def uid_count(uid_set: bytes) -> int:
    return sum(int(b) - int(a) + 1 if b else 1
               for a, _, b in (part.partition(b":") for part in uid_set.split(b",")))


async def test_no_room_in_the_budget_reads_one_message_at_a_time(dovecot, relayed):
    bodies = fill(dovecot, 5, 3000)
    port, relay, store = await relayed({"imap_fetch_memory": 8192, "imap_fetch_chunk": 8192})
    store.budget.used = store.budget.held = 4096  # others' read-ahead: half the budget is taken
    try:
        got = await drain(port)
    finally:
        store.budget.used = store.budget.held = 0
    assert got == [wire(b) for b in bodies]
    assert len(relay.commands(r"UID FETCH \d+ \(RFC822\.SIZE BODY\.PEEK\[\]<\d+\.2>")) == 5  # each one's tail


async def test_read_ahead_is_released_when_the_session_ends_early(dovecot, relayed):
    fill(dovecot, 10, 2000)
    port, relay, store = await relayed()
    c = await AsyncClient.connect(HOST, port, timeout=15)
    assert await c.helo("alice", USERS["alice"]) == 10
    assert await c.read(1) > 0
    assert store.budget.held > 0  # the other nine wait in memory, counted
    await c.close()  # gone without QUIT
    for _ in range(200):
        if store.budget.used == 0:
            break
        await asyncio.sleep(0.02)
    assert store.budget.used == 0 and store.budget.held == 0


async def test_login_asks_nothing_it_was_told(dovecot, relayed):
    """Dovecot's greeting and its login answer carry CAPABILITY, and it takes the credentials
    with AUTHENTICATE (SASL-IR): HELO costs ID, AUTHENTICATE, SELECT, UID FETCH."""
    fill(dovecot, 1, 100)
    port, relay, _ = await relayed()
    c = await AsyncClient.connect(HOST, port, timeout=15)
    assert await c.helo("alice", USERS["alice"]) == 1
    await c.quit()
    await relay.logged_out()
    verbs = [line.split(b" ")[1].upper() for line in bytes(relay.sent).split(b"\r\n") if line]
    assert verbs == [b"ID", b"AUTHENTICATE", b"SELECT", b"UID", b"LOGOUT"], verbs
    assert len(relay.commands(r"AUTHENTICATE PLAIN \S+")) == 1  # the credentials in the command


async def test_retr_of_a_body_read_ahead_asks_nothing(dovecot, relayed):
    """RETR of a body read ahead sends it from memory: its count went out, the octets are in
    hand. Even with `imap_recheck_interval = 0` (an announcement always asks first)."""
    want = wire(fill(dovecot, 3, 2000)[1])
    port, relay, _ = await relayed({"imap_recheck_interval": 0})
    c = await AsyncClient.connect(HOST, port, timeout=15)
    assert await c.helo("alice", USERS["alice"]) == 3
    assert await c.read(2) == len(want)  # the first count: the read-ahead fetch, no NOOP
    assert len(relay.commands("NOOP")) == 0
    assert await c.retr() == want
    assert len(relay.commands("NOOP")) == 0  # RETR asked nothing
    assert await c.nack() == len(want)  # announced again: asks first (interval 0)
    assert len(relay.commands("NOOP")) == 1
    assert await c.retr() == want  # no longer in memory: fetched, without a NOOP
    assert len(relay.commands("NOOP")) == 1
    assert len(relay.commands(r"UID FETCH \d+ \(BODY\.PEEK\[\]<0\.\d+>\)")) == 1
    await c.nack()
    await c.quit()


@pytest.mark.parametrize(("interval", "noops"), [(0, 2 * 29), (3600, 0)])
async def test_announcements_ask_only_past_the_recheck_interval(dovecot, relayed, interval, noops):
    """A count known from the read-ahead fetch is announced without a NOOP while the selection
    (or the last NOOP) is younger than `imap_recheck_interval`; with 0, every announcement of a known
    count (READ n, and ACKS announcing the next) asks first. (3600 s stands for "within the
    interval": the drain's time does not matter.)"""
    bodies = fill(dovecot, 30, 2000)
    port, relay, store = await relayed({"imap_recheck_interval": interval})
    got = await drain(port)
    await relay.logged_out()
    assert got == [wire(b) for b in bodies]
    assert len(relay.commands("NOOP")) == noops
    assert len(relay.commands("UID FETCH")) == 2  # the snapshot, then every body at once
    assert store.budget.used == 0 and store.budget.held == 0
