"""What crosses the wire at login, against a scripted IMAP server that records it.

Dovecot always offers AUTHENTICATE PLAIN; this server does not, so the LOGIN
path (quoted strings and literals) is checked octet for octet.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time

import pytest

from helpers import ScriptConn, ScriptedServer
from pop2gate.config import Limits
from pop2gate.stores.base import Peer, StoreError
from pop2gate.stores.imap import ImapBackend, ImapStore, split_master
from pop2gate.stores.imap.store import honours_authzid
from pop2gate.stores.imap.wire import id_name

LITERAL = re.compile(rb"\{(\d+)(\+?)\}$")


class ImapScript:
    """A ScriptedServer's script playing an IMAP server; records each command with its literals."""

    def __init__(self, caps: str = "IMAP4rev1 LITERAL+ ID", login_ok: bool = False,
                 body: bytes = b"", claimed: int = 0):
        self.caps = caps
        self.login_ok = login_ok
        self.body, self.claimed = body, claimed  # one message, UID 7, and the size we claim
        self.later: int | None = None  # the size claimed after the snapshot, if another
        self.commands: list[bytes] = []

    def _read_command(self, conn: ScriptConn) -> bytes | None:
        out = b""
        while True:
            line = conn.readline()
            if not line:
                return None
            out += line
            m = LITERAL.search(line.rstrip(b"\r\n"))
            if not m:
                return out
            if not m.group(2):
                conn.send(b"+ go on\r\n")
            out += conn.read(int(m.group(1)))

    def __call__(self, conn: ScriptConn) -> None:
        conn.send(b"* OK scripted server ready\r\n")
        while (cmd := self._read_command(conn)) is not None:
            self.commands.append(cmd)
            tag, _, rest = cmd.partition(b" ")
            verb = rest.split(b" ", 1)[0].rstrip(b"\r\n").upper()
            if verb == b"CAPABILITY":
                conn.send(b"* CAPABILITY " + self.caps.encode() + b"\r\n" + tag + b" OK done\r\n")
            elif verb == b"ID":
                conn.send(b"* ID NIL\r\n" + tag + b" OK done\r\n")
            elif verb == b"LOGIN" and self.login_ok:
                conn.send(tag + b" OK logged in\r\n")
            elif verb == b"LOGIN":
                conn.send(tag + b" NO [AUTHENTICATIONFAILED] nope\r\n")
            elif verb in (b"SELECT", b"LIST", b"UID"):
                conn.send(self._mailbox(verb, rest.rstrip(b"\r\n")) + tag + b" OK done\r\n")
            elif verb == b"NOOP":
                conn.send(tag + b" OK nothing new\r\n")
            elif verb == b"LOGOUT":
                conn.send(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                return
            else:
                conn.send(tag + b" BAD unexpected\r\n")

    def _mailbox(self, verb: bytes, rest: bytes) -> bytes:
        if verb == b"SELECT":
            return b"* 1 EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n"
        if verb == b"LIST":
            return b'* LIST (\\Noselect) "/" ""\r\n'
        if b"FLAGS" in rest:  # the snapshot
            return b"* 1 FETCH (UID 7 RFC822.SIZE %d FLAGS ())\r\n" % self.claimed
        m = re.search(rb"BODY\.PEEK\[\](?:<(\d+)\.(\d+)>)?", rest)
        assert m is not None, rest
        start = int(m.group(1) or 0)
        part = self.body[start:start + int(m.group(2))] if m.group(1) else self.body
        origin = b"<%d>" % start if m.group(1) else b""
        size = b"RFC822.SIZE %d " % (self.claimed if self.later is None else self.later) if b"SIZE" in rest else b""
        return b"* 1 FETCH (UID 7 %sBODY[]%s {%d}\r\n%s)\r\n" % (size, origin, len(part), part)

    def sent(self, verb: bytes) -> list[bytes]:
        return [c.split(b" ", 1)[1] for c in self.commands if c.split(b" ", 2)[1].upper() == verb]


def imap_backend(server: ScriptedServer, tls: str = "none") -> ImapBackend:
    return ImapBackend(name="s", type="imap", url=f"imap://127.0.0.1:{server.port}", tls=tls, timeout=5)


@pytest.fixture
async def scripted():
    made: list[tuple[ScriptedServer, ImapStore]] = []

    async def make(limits: Limits | None = None, uw_compat: bool = False, **kw) -> tuple[ImapScript, ImapStore]:
        script = ImapScript(**kw)
        server = ScriptedServer(script)
        store = ImapStore(imap_backend(server), limits or Limits(), uw_compat=uw_compat)
        made.append((server, store))
        return script, store

    yield make
    for server, store in made:
        await store.aclose()
        server.close()


def test_split_master():
    assert split_master("alice") == ("", "alice")
    assert split_master("alice*admin") == ("alice", "admin")
    assert split_master("*admin") is None
    assert split_master("alice*") is None


@pytest.mark.parametrize("user,password,caps,wire", [
    ("alice", 'p" x\\y', "IMAP4rev1 LITERAL+ ID", b'LOGIN "alice" "p\\" x\\\\y"\r\n'),
    ('a"b', "pw\u00e9", "IMAP4rev1 LITERAL+ ID", b'LOGIN "a\\"b" {4+}\r\npw\xc3\xa9\r\n'),
    ('a"b', "pw\u00e9", "IMAP4rev1 ID", b'LOGIN "a\\"b" {4}\r\npw\xc3\xa9\r\n'),  # waits for "+"
    ("j\u00fcrgen", "pw", "IMAP4rev1 LITERAL+ ID", b'LOGIN {7+}\r\nj\xc3\xbcrgen "pw"\r\n'),
    ("alice", 'x" a1 DELETE INBOX', "IMAP4rev1 LITERAL+ ID", b'LOGIN "alice" "x\\" a1 DELETE INBOX"\r\n'),
    ("alice", "{5}", "IMAP4rev1 LITERAL+ ID", b'LOGIN "alice" "{5}"\r\n'),
])
async def test_login_arguments_are_quoted_or_literal(scripted, user, password, caps, wire):
    script, store = await scripted(caps=caps)
    assert await store.login(user, password, Peer("127.0.0.9", 4242)) is None
    assert script.sent(b"LOGIN") == [wire]


async def test_id_carries_the_client_address_before_login(scripted):
    script, store = await scripted()
    await store.login("alice", "pw", Peer("::ffff:127.0.0.9", 4242))
    verbs = [c.split(b" ")[1].rstrip(b"\r\n") for c in script.commands]
    assert verbs.index(b"ID") < verbs.index(b"LOGIN")
    assert script.sent(b"ID") == [b'ID ("x-originating-ip" "127.0.0.9" "x-originating-port" "4242")\r\n']


async def test_no_id_without_the_capability_or_a_real_address(scripted):
    script, store = await scripted(caps="IMAP4rev1")
    await store.login("alice", "pw", Peer("127.0.0.9", 1))
    script2, store2 = await scripted()
    await store2.login("alice", "pw", Peer("stdio", 0))
    assert script.sent(b"ID") == [] and script2.sent(b"ID") == []


async def test_master_login_needs_sasl_plain(scripted):
    script, store = await scripted()
    assert await store.login("alice*admin", "pw", Peer("127.0.0.9", 1)) is None
    assert script.sent(b"LOGIN") == []


async def test_non_ascii_user_without_literal_plus_is_refused_locally(scripted):
    script, store = await scripted(caps="IMAP4rev1")
    assert await store.login("j\u00fcrgen", "pw", Peer("127.0.0.9", 1)) is None
    assert script.sent(b"LOGIN") == []


async def test_starttls_required_when_configured():
    script = ImapScript(caps="IMAP4rev1")  # offers no STARTTLS
    with ScriptedServer(script) as server:
        store = ImapStore(imap_backend(server, tls="starttls"), Limits())
        try:
            with pytest.raises(StoreError):
                await store.login("alice", "pw", Peer("127.0.0.9", 1))
            assert server.connections == 1
            assert script.sent(b"LOGIN") == []
        finally:
            await store.aclose()


BODY = b"Subject: x\r\n\r\n" + b"0123456789" * 1000 + b"\r\n"


@pytest.mark.parametrize("chunk", [4096, 1 << 20])  # partial fetches, and one whole fetch
@pytest.mark.parametrize("claimed", [len(BODY) - 100, len(BODY) + 100])
async def test_size_that_does_not_add_up_ends_the_transfer(scripted, caplog, chunk, claimed):
    limits = Limits(imap_fetch_chunk=chunk, imap_fetch_memory=1 << 20, imap_readahead=0)
    _, store = await scripted(limits=limits, login_ok=True, caps="IMAP4rev1", body=BODY, claimed=claimed)
    box = await store.login("alice", "pw", Peer("127.0.0.9", 1))
    [ref] = await box.select("INBOX")
    caplog.set_level(logging.WARNING, logger="pop2gate.imap")
    announced = await box.wire_size(ref)
    if claimed > len(BODY):  # its last octets do not come back: the size is never announced
        assert announced == 0
        assert any(f"RFC822.SIZE {claimed} not confirmed" in r.getMessage() for r in caplog.records)
    sent = 0
    with pytest.raises(StoreError):
        async for piece in box.fetch(ref):
            sent += len(piece)
    assert sent <= announced  # never more than announced, and the caller sees the error
    if claimed < len(BODY):
        assert any(f"announced {claimed} octets" in r.getMessage() for r in caplog.records)
    await box.close()


@pytest.mark.parametrize("claimed", [len(BODY) - 100, len(BODY) + 100])
async def test_size_that_does_not_add_up_is_never_announced_when_read_ahead(scripted, caplog, claimed):
    _, store = await scripted(limits=Limits(imap_readahead=1 << 20), login_ok=True, caps="IMAP4rev1",
                              body=BODY, claimed=claimed)
    box = await store.login("alice", "pw", Peer("127.0.0.9", 1))
    [ref] = await box.select("INBOX")
    caplog.set_level(logging.WARNING, logger="pop2gate.imap")
    assert await box.wire_size(ref) == 0  # the body read ahead is not RFC822.SIZE octets long
    assert any(f"RFC822.SIZE {claimed} not confirmed" in r.getMessage() for r in caplog.records)
    with pytest.raises(StoreError):
        async for _ in box.fetch(ref):
            raise AssertionError("no octet of it may go out")
    await box.close()


async def test_a_size_the_server_no_longer_gives_is_not_announced(scripted):
    """Courier serves a placeholder for a message another session removed, with another
    RFC822.SIZE: the size asked again with the last octets must match the snapshot's."""
    script, store = await scripted(login_ok=True, caps="IMAP4rev1", body=BODY, claimed=len(BODY))
    box = await store.login("alice", "pw", Peer("127.0.0.9", 1))
    [ref] = await box.select("INBOX")
    script.later = 129
    assert await box.wire_size(ref) == 0
    with pytest.raises(StoreError):
        async for _ in box.fetch(ref):
            pass
    [tail] = [c for c in script.sent(b"UID") if b"BODY.PEEK" in c]
    assert b"RFC822.SIZE" in tail  # asked in the same command: no extra round trip
    await box.close()


async def test_honest_sizes_stream_whole(scripted):
    limits = Limits(imap_fetch_chunk=4096, imap_fetch_memory=8192)
    _, store = await scripted(limits=limits, login_ok=True, caps="IMAP4rev1", body=BODY[:-2], claimed=len(BODY) - 2)
    box = await store.login("alice", "pw", Peer("127.0.0.9", 1))
    [ref] = await box.select("INBOX")
    assert await box.wire_size(ref) == len(BODY)
    out = b""
    async for piece in box.fetch(ref):
        out += piece
    assert out == BODY
    await box.close()


@pytest.mark.parametrize("chunk", [4096, 1 << 20])  # partial fetches, and one whole fetch
async def test_uw_form_across_pieces(scripted, chunk):
    head = b"X: " + b"h" * 1019 + b"\r\n"  # 1024 octets: the blank line straddles the first piece
    body = head + b"\r\n" + b"0123456789" * 1000  # and the last line has no end
    limits = Limits(imap_fetch_chunk=chunk, imap_fetch_memory=1 << 20, retr_chunk_size=1024)
    _, store = await scripted(limits=limits, uw_compat=True, login_ok=True, caps="IMAP4rev1", body=body,
                              claimed=len(body))
    box = await store.login("alice", "pw", Peer("127.0.0.9", 1))
    [ref] = await box.select("INBOX")
    wire = head + b"Status:  O\r\n\r\n" + b"0123456789" * 1000 + b"\r\n" + b"\r\n"
    assert await box.wire_size(ref) == len(wire)
    out = b""
    async for piece in box.fetch(ref):
        out += piece
    assert out == wire
    await box.close()


async def test_a_login_whose_session_gives_way_leaves_no_backend_connection():
    """The session is cancelled (it gave way) while the backend is still logging it in: once
    the login completes, the connection it opened is dropped and closed, not left logged in."""
    closed = threading.Event()

    def slow_server(conn: ScriptConn) -> None:
        conn.send(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        while line := conn.readline():
            tag = line.split(b" ", 1)[0]
            if b" LOGIN " in line.upper():
                time.sleep(0.5)  # the session gives way meanwhile
                conn.send(tag + b" OK logged in\r\n")
            else:
                conn.send(tag + b" OK done\r\n")
        closed.set()  # the gateway closed its side

    with ScriptedServer(slow_server) as server:
        store = ImapStore(imap_backend(server), Limits())
        try:
            task = asyncio.create_task(store.login("alice", "pw", Peer("127.0.0.9", 1)))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.to_thread(closed.wait, 5)
        finally:
            await store.aclose()


async def test_master_login_is_off_unless_enabled(scripted):
    script, store = await scripted(login_ok=True)
    assert await store.login("alice*admin", "pw", Peer("127.0.0.9", 1)) is None
    assert script.commands == []  # refused before any connection


async def test_master_login_refused_where_the_server_cannot_confirm_it():
    """A server that does not say (ID) it is one that honours the authorization identity:
    `user*admin` is refused after the login, never served."""
    script = ImapScript(login_ok=True, caps="IMAP4rev1 AUTH=PLAIN")
    with ScriptedServer(script) as server:
        backend = ImapBackend(name="s", type="imap", url=f"imap://127.0.0.1:{server.port}", tls="none",
                              timeout=5, master_login=True)
        store = ImapStore(backend, Limits())
        try:
            assert await store.login("alice*admin", "pw", Peer("127.0.0.9", 1)) is None
        finally:
            await store.aclose()


def test_id_name():
    assert id_name(b'("name" "Dovecot" "version" "2.3")') == "Dovecot"
    assert id_name(b'("version" "1" "NAME" "Cyrus IMAPd")') == "Cyrus IMAPd"
    assert id_name(b"NIL") is None
    assert honours_authzid("Dovecot") and honours_authzid("Cyrus IMAP") and not honours_authzid(None)
    assert not honours_authzid("Courier-IMAP")
