"""POP2 on the wire through pop2gate to a real Dovecot: large messages, routing, TLS, failures.

What every IMAP server must do alike is in test_imap_servers.py, run against each."""

from __future__ import annotations

import asyncio
import itertools
import signal

import pytest

from dovecot import HOST, MASTER, OTHER_HOST, USERS
from helpers import ScriptConn, ScriptedServer, pop2_client, until_idle
from pop2gate.config import parse_config
from pop2gate.gateway.listeners import Gateway
from pop2gate.pop2.client import AsyncClient, Pop2Error

EDGE = [
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n. \r\nend\r\n",
    b"Subject: 8bit\r\n\r\n" + bytes(range(1, 256)).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n",
    b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n",
    b"Subject: no final line end\r\n\r\nlast line without end",
]
_sources = itertools.count(1)


def wire(data: bytes) -> bytes:
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def big_message(size: int) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
    return b"Subject: big\r\n\r\n" + line * (size // len(line))


class Gate:
    """A pop2gate Gateway on a free loopback port."""

    def __init__(self, config):
        self.gateway = Gateway(config)
        self.servers: list = []

    async def start(self) -> Gate:
        self.servers = await self.gateway.start()
        self.host, self.port = self.servers[0].sockets[0].getsockname()[:2]
        return self

    async def client(self, source: str | None = None) -> AsyncClient:
        """A POP2 client; `source` picks a loopback source address (Dovecot penalises per address)."""
        client: AsyncClient = await pop2_client(self.host, self.port, source)
        return client

    async def idle(self, within: float = 10) -> None:
        """Wait until every session has ended."""
        await until_idle(self.gateway, within)

    async def stop(self) -> None:
        for s in self.servers:
            s.close()
            await s.wait_closed()
        await self.gateway.aclose()


def assert_untouched(dovecot, user: str, uids: list[int]) -> None:
    """Every one of `uids` is still in the mailbox, and none is flagged \\Deleted."""
    left = dovecot.uids(user)
    assert sorted(left) == uids
    assert not any(r"\Deleted" in f for f in left.values())


def fresh_source() -> str:
    n = next(_sources)
    return f"127.2.{n // 250}.{n % 250 + 1}"


def backend(dovecot, tls: str = "none", host: str = HOST, name: str = "dc") -> dict:
    if tls == "implicit":
        return {"name": name, "type": "imap", "url": f"imaps://{host}:{dovecot.tls_port}",
                "ca_file": str(dovecot.ca_file)}
    b = {"name": name, "type": "imap", "url": f"imap://{host}:{dovecot.port}", "tls": tls}
    if tls == "starttls":
        b["ca_file"] = str(dovecot.ca_file)
    return b


@pytest.fixture
async def gate(dovecot):
    started: list[Gate] = []

    async def make(backends: list[dict] | None = None, routing: dict | None = None,
                   limits: dict | None = None) -> Gate:
        config = parse_config({
            "server": {"hostname": "test.invalid", "listen": ["127.0.0.1:0"]},
            "limits": {"bad_login_delay": 0.05, "close_linger": 0.1, **(limits or {})},
            "backend": backends or [backend(dovecot)],
            "routing": routing or {"default": "dc"},
        })
        g = await Gate(config).start()
        started.append(g)
        return g

    yield make
    for g in started:
        await g.stop()


@pytest.mark.parametrize("tls", ["none", "implicit"])
async def test_drain_mailbox_byte_for_byte(dovecot, gate, tls):
    dovecot.clear("alice")
    messages = EDGE + [big_message(20 * 1024 * 1024)]
    uids = [dovecot.append("alice", m) for m in messages]
    keep = dovecot.append("alice", b"Subject: kept\r\n\r\nkeep me\r\n")
    other = dovecot.append("alice", b"Subject: theirs\r\n\r\nflagged elsewhere\r\n", flags=r"\Deleted")
    g = await gate([backend(dovecot, tls)])
    c = await g.client()
    assert await c.helo("alice", USERS["alice"]) == len(messages) + 1  # \Deleted is not offered
    for n, data in enumerate(messages, 1):
        assert await c.read(n) == len(wire(data))
        assert await c.retr() == wire(data)
        await c.ackd()
    assert await c.read(len(messages) + 1) == len(b"Subject: kept\r\n\r\nkeep me\r\n")
    assert await c.retr() == b"Subject: kept\r\n\r\nkeep me\r\n"
    assert await c.acks() == 0
    await c.quit()
    left = dovecot.uids("alice")
    assert sorted(left) == [keep, other]  # exactly the ACKD UIDs went
    assert r"\Seen" in left[keep] and r"\Deleted" in left[other]
    assert not set(uids) & set(left)


def hang_up(conn: ScriptConn) -> None:
    """A script for a listener that only counts connections (`ScriptedServer.connections`)."""


async def test_client_named_host_connects_nowhere(dovecot, gate):
    default = ScriptedServer(hang_up, HOST)
    named = []
    for port in (143, 993):  # where a client-named 127.0.0.3 would be reached
        try:
            named.append(ScriptedServer(hang_up, "127.0.0.3", port))
        except OSError:
            pass
    try:
        g = await gate([{"name": "rec", "type": "imap", "url": f"imap://{HOST}:{default.port}", "tls": "none"},
                        {**backend(dovecot), "selectable": True}], routing={"default": "rec"})
        for login in ("otherhost:alice", "127.0.0.3:alice", "127.0.0.3:143:alice", ":alice", "dc2:alice"):
            c = await g.client()
            with pytest.raises(Pop2Error, match="^Bad login$"):
                await c.helo(login, USERS["alice"])
            await c.close()
        await asyncio.sleep(0.1)
        assert default.connections == 0 and all(r.connections == 0 for r in named)
        c = await g.client()  # a configured alias is allowed
        assert await c.helo("dc:alice", USERS["alice"]) >= 0
        await c.quit()
        c = await g.client()  # and a plain name goes to the default, which the listener sees
        with pytest.raises(Pop2Error):
            await c.helo("alice", USERS["alice"])
        await c.close()
        assert default.connections == 1
    finally:
        default.close()
        for r in named:
            r.close()


async def test_routing_users_and_master_login(dovecot, gate):
    dovecot.clear("carol")
    dovecot.append("carol", b"Subject: c\r\n\r\nfor carol\r\n")
    dead = ScriptedServer(hang_up, HOST)
    try:
        g = await gate([{"name": "dead", "type": "imap", "url": f"imap://{HOST}:{dead.port}", "tls": "none"},
                        {**backend(dovecot), "master_login": True}],
                       routing={"default": "dead", "users": {"carol": "dc"}, "domains": {"example.org": "dead"}})
        c = await g.client()
        assert await c.helo(f"carol*{MASTER[0]}", MASTER[1]) == 1
        assert await c.read(1) == len(b"Subject: c\r\n\r\nfor carol\r\n")
        await c.quit()
        assert dead.connections == 0
    finally:
        dead.close()


async def test_injection_attempts_are_harmless(dovecot, gate):
    dovecot.clear("alice")
    dovecot.clear("alice", "Archive")
    dovecot.append("alice", b"Subject: a\r\n\r\nx\r\n")
    dovecot.append("alice", b"Subject: b\r\n\r\nx\r\n", folder="Archive")
    g = await gate()
    for pw in ['x" a1 DELETE INBOX', "x) a1 LOGOUT", "{3}"]:
        c = await g.client(fresh_source())
        with pytest.raises(Pop2Error, match="^Bad login$"):
            await c.helo("alice", pw)
        await c.close()
    c = await g.client()
    assert await c.helo("alice", USERS["alice"]) == 1
    assert await c.fold('Archive" DELETE "INBOX') == 0
    assert await c.fold("Archive) (") == 0
    assert await c.fold("Archive") == 1
    with pytest.raises(Pop2Error, match="^Invalid folder name$"):
        await c.fold("{5}")
    await c.close()
    assert len(dovecot.uids("alice")) == 1
    assert len(dovecot.uids("alice", "Archive")) == 1


@pytest.mark.parametrize("host,tls", [(OTHER_HOST, "implicit"), (OTHER_HOST, "starttls")])
async def test_certificate_mismatch_refuses_login(dovecot, gate, host, tls):
    g = await gate([backend(dovecot, tls, host)])
    c = await g.client()
    with pytest.raises(Pop2Error) as err:
        await c.helo("alice", USERS["alice"])
    assert "127.0.0" not in str(err.value) and "certificate" not in str(err.value)
    await c.close()


async def test_backend_killed_mid_retr(dovecot, gate):
    dovecot.clear("carol")
    first = b"Subject: first\r\n\r\nsmall\r\n"
    uids = [dovecot.append("carol", first), dovecot.append("carol", big_message(20 * 1024 * 1024))]
    g = await gate(limits={"imap_fetch_chunk": 65536, "imap_fetch_memory": 131072})
    reader, writer = await asyncio.open_connection(g.host, g.port)
    await reader.readline()
    writer.write(f"HELO carol {USERS['carol']}\r\nREAD 1\r\nRETR\r\n".encode())
    assert (await reader.readline()).startswith(b"#2")
    assert (await reader.readline()).startswith(b"=")
    assert await reader.readexactly(len(first)) == first
    writer.write(b"ACKD\r\n")
    announced = int((await reader.readline())[1:].split()[0])
    writer.write(b"RETR\r\n")
    got = len(await reader.readexactly(100_000))
    assert dovecot.kill_sessions("carol") == 1
    rest = await asyncio.wait_for(reader.read(-1), 30)
    writer.close()
    assert got + len(rest) < announced  # the session ended short; the client can tell
    await g.idle()
    assert_untouched(dovecot, "carol", uids)  # the ACKD message is still there


async def test_backend_sees_the_real_client_address(dovecot, gate):
    g = await gate()
    source = fresh_source()
    c = await g.client(source)
    await c.helo("alice", USERS["alice"])
    await c.quit()
    assert any("Login: user=<alice>" in line and f"rip={source}," in line
               for line in dovecot.log().splitlines())


async def test_backend_timeout_at_quit_deletes_nothing(dovecot, gate):
    dovecot.clear("carol")
    uids = [dovecot.append("carol", f"Subject: {i}\r\n\r\nbody\r\n".encode()) for i in range(2)]
    b = backend(dovecot)
    b["timeout"] = 1
    g = await gate([b])
    c = await g.client()
    assert await c.helo("carol", USERS["carol"]) == 2
    await c.read(1)
    await c.retr()
    await c.ackd()
    assert dovecot.kill_sessions("carol", signal.SIGSTOP) == 1  # the backend hangs
    try:
        with pytest.raises(Pop2Error, match="^Mail server error"):
            await c.quit()
    finally:
        dovecot.kill_sessions("carol", signal.SIGKILL)
        dovecot.kill_sessions("carol", signal.SIGCONT)
    await g.idle()
    assert_untouched(dovecot, "carol", uids)


async def test_many_sessions_share_few_login_slots(dovecot, gate):
    dovecot.clear("bob")
    body = b"Subject: shared\r\n\r\nhello\r\n"
    dovecot.append("bob", body)
    g = await gate(limits={"imap_max_logins": 2, "max_connections": 100, "max_connections_per_address": 100})

    async def one():
        c = await g.client()
        assert await c.helo("bob", USERS["bob"]) == 1
        assert await c.read(1) == len(body)
        assert await c.retr() == body
        await c.acks()
        await c.quit()

    await asyncio.gather(*(one() for _ in range(60)))
    assert len(dovecot.uids("bob")) == 1


async def test_no_credential_in_any_log_line(gate, dovecot, caplog):
    """Neither the password nor the AUTHENTICATE PLAIN payload reaches a log line."""
    import base64
    import logging

    caplog.set_level(logging.DEBUG)
    g = await gate()
    c = await g.client(fresh_source())
    await c.helo("carol", USERS["carol"])
    await c.quit()
    c = await g.client(fresh_source())
    with pytest.raises(Pop2Error):
        await c.helo("carol", "carol-wrong-secret")
    await g.idle()
    text = caplog.text
    assert "login peer=" in text and "bad login" in text
    secrets = [USERS["carol"], "carol-wrong-secret"]
    payloads = [base64.b64encode(f"\0carol\0{p}".encode()).decode() for p in secrets]
    assert not any(s in text for s in secrets + payloads)


async def test_non_utf8_password_is_a_bad_login(gate, caplog):
    """Credentials go to IMAP as the octets the client sent; a refusal is a bad login, and the
    log says nothing about the password."""
    import logging

    caplog.set_level(logging.DEBUG, logger="pop2gate")
    g = await gate()
    # from an address of its own: the backend's penalty for the failure stays with it
    reader, writer = await asyncio.open_connection(g.host, g.port, local_addr=(fresh_source(), 0))
    try:
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"+ POP2 ")
        writer.write(b"HELO alice x\xff\xfe\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(-1), 30) == b"- Bad login\r\n"
    finally:
        writer.close()
    assert "Traceback" not in caplog.text
    assert "codec" not in caplog.text and "position" not in caplog.text


async def test_name_user_cannot_pick_a_backend_the_rules_do_not_give(dovecot, gate):
    """`HELO name:user` may name only the user's own backend or one marked selectable."""
    other = ScriptedServer(lambda conn: None)
    try:
        g = await gate([{"name": "rec", "type": "imap", "url": f"imap://{HOST}:{other.port}", "tls": "none"},
                        backend(dovecot)], routing={"default": "rec"})
        c = await g.client()
        with pytest.raises(Pop2Error, match="^Bad login$"):
            await c.helo("dc:alice", USERS["alice"])  # dc is configured, but alice's backend is rec
        await c.close()
        assert other.connections == 0
    finally:
        other.close()
