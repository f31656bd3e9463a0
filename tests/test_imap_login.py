"""What crosses the wire at login, against a scripted IMAP server that records it.

Dovecot always offers AUTHENTICATE PLAIN; this server does not, so the LOGIN
path (quoted strings and literals) is checked octet for octet.
"""

from __future__ import annotations

import logging
import re
import socket
import threading

import pytest

from pop2gate.config import ImapBackend, Limits
from pop2gate.stores.base import Peer, StoreError
from pop2gate.stores.imap import ImapStore

LITERAL = re.compile(rb"\{(\d+)(\+?)\}$")


class ScriptedImap:
    """Accepts connections on loopback; records each command with its literals."""

    def __init__(self, caps: str = "IMAP4rev1 LITERAL+ ID", login_ok: bool = False,
                 body: bytes = b"", claimed: int = 0):
        self.caps = caps
        self.login_ok = login_ok
        self.body, self.claimed = body, claimed  # one message, UID 7, and the size we claim
        self.commands: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _read_command(self, f, conn) -> bytes | None:
        out = b""
        while True:
            line = f.readline()
            if not line:
                return None
            out += line
            m = LITERAL.search(line.rstrip(b"\r\n"))
            if not m:
                return out
            if not m.group(2):
                conn.sendall(b"+ go on\r\n")
            out += f.read(int(m.group(1)))

    def _session(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        conn.sendall(b"* OK scripted server ready\r\n")
        with conn:
            while (cmd := self._read_command(f, conn)) is not None:
                self.commands.append(cmd)
                tag, _, rest = cmd.partition(b" ")
                verb = rest.split(b" ", 1)[0].rstrip(b"\r\n").upper()
                if verb == b"CAPABILITY":
                    conn.sendall(b"* CAPABILITY " + self.caps.encode() + b"\r\n" + tag + b" OK done\r\n")
                elif verb == b"ID":
                    conn.sendall(b"* ID NIL\r\n" + tag + b" OK done\r\n")
                elif verb == b"LOGIN" and self.login_ok:
                    conn.sendall(tag + b" OK logged in\r\n")
                elif verb == b"LOGIN":
                    conn.sendall(tag + b" NO [AUTHENTICATIONFAILED] nope\r\n")
                elif verb in (b"SELECT", b"LIST", b"UID"):
                    conn.sendall(self._mailbox(verb, rest.rstrip(b"\r\n")) + tag + b" OK done\r\n")
                elif verb == b"LOGOUT":
                    conn.sendall(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                    return
                else:
                    conn.sendall(tag + b" BAD unexpected\r\n")

    def _mailbox(self, verb: bytes, rest: bytes) -> bytes:
        if verb == b"SELECT":
            return b"* 1 EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n"
        if verb == b"LIST":
            return b'* LIST (\\Noselect) "/" ""\r\n'
        if b"RFC822.SIZE" in rest:
            return b"* 1 FETCH (UID 7 RFC822.SIZE %d FLAGS ())\r\n" % self.claimed
        m = re.search(rb"BODY\.PEEK\[\](?:<(\d+)\.(\d+)>)?", rest)
        start = int(m.group(1) or 0)
        part = self.body[start:start + int(m.group(2))] if m.group(1) else self.body
        origin = b"<%d>" % start if m.group(1) else b""
        return b"* 1 FETCH (UID 7 BODY[]%s {%d}\r\n%s)\r\n" % (origin, len(part), part)

    def sent(self, verb: bytes) -> list[bytes]:
        return [c.split(b" ", 1)[1] for c in self.commands if c.split(b" ", 2)[1].upper() == verb]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def scripted():
    made = []

    async def make(limits: Limits | None = None, **kw):
        server = ScriptedImap(**kw)
        store = ImapStore(ImapBackend(name="s", type="imap", url=f"imap://127.0.0.1:{server.port}",
                                      tls="none", timeout=5), limits or Limits())
        made.append((server, store))
        return server, store

    yield make
    for server, store in made:
        await store.aclose()
        server.close()


@pytest.mark.parametrize("user,password,wire", [
    ("alice", 'p" x\\y', b'LOGIN "alice" "p\\" x\\\\y"\r\n'),
    ('a"b', "pw\u00e9", b'LOGIN "a\\"b" {4}\r\npw\xc3\xa9\r\n'),
    ("j\u00fcrgen", "pw", b'LOGIN {7+}\r\nj\xc3\xbcrgen "pw"\r\n'),
    ("alice", 'x" a1 DELETE INBOX', b'LOGIN "alice" "x\\" a1 DELETE INBOX"\r\n'),
    ("alice", "{5}", b'LOGIN "alice" "{5}"\r\n'),
])
async def test_login_arguments_are_quoted_or_literal(scripted, user, password, wire):
    server, store = await scripted()
    assert await store.login(user, password, Peer("127.0.0.9", 4242)) is None
    assert server.sent(b"LOGIN") == [wire]


async def test_id_carries_the_client_address_before_login(scripted):
    server, store = await scripted()
    await store.login("alice", "pw", Peer("::ffff:127.0.0.9", 4242))
    verbs = [c.split(b" ")[1].rstrip(b"\r\n") for c in server.commands]
    assert verbs.index(b"ID") < verbs.index(b"LOGIN")
    assert server.sent(b"ID") == [b'ID ("x-originating-ip" "127.0.0.9" "x-originating-port" "4242")\r\n']


async def test_no_id_without_the_capability_or_a_real_address(scripted):
    server, store = await scripted(caps="IMAP4rev1")
    await store.login("alice", "pw", Peer("127.0.0.9", 1))
    server2, store2 = await scripted()
    await store2.login("alice", "pw", Peer("stdio", 0))
    assert server.sent(b"ID") == [] and server2.sent(b"ID") == []


async def test_master_login_needs_sasl_plain(scripted):
    server, store = await scripted()
    assert await store.login("alice*admin", "pw", Peer("127.0.0.9", 1)) is None
    assert server.sent(b"LOGIN") == []


async def test_non_ascii_user_without_literal_plus_is_refused_locally(scripted):
    server, store = await scripted(caps="IMAP4rev1")
    assert await store.login("j\u00fcrgen", "pw", Peer("127.0.0.9", 1)) is None
    assert server.sent(b"LOGIN") == []


async def test_starttls_required_when_configured(scripted):
    server, _ = await scripted(caps="IMAP4rev1")  # offers no STARTTLS
    store = ImapStore(ImapBackend(name="s", type="imap", url=f"imap://127.0.0.1:{server.port}",
                                  tls="starttls", timeout=5), Limits())
    try:
        with pytest.raises(StoreError):
            await store.login("alice", "pw", Peer("127.0.0.9", 1))
        assert server.sent(b"LOGIN") == []
    finally:
        await store.aclose()


BODY = b"Subject: x\r\n\r\n" + b"0123456789" * 1000 + b"\r\n"


@pytest.mark.parametrize("chunk", [4096, 1 << 20])  # partial fetches, and one whole fetch
@pytest.mark.parametrize("claimed", [len(BODY) - 100, len(BODY) + 100])
async def test_size_that_does_not_add_up_ends_the_transfer(scripted, caplog, chunk, claimed):
    limits = Limits(imap_fetch_chunk=chunk, imap_fetch_memory=1 << 20)
    _, store = await scripted(limits=limits, login_ok=True, caps="IMAP4rev1", body=BODY, claimed=claimed)
    box = await store.login("alice", "pw", Peer("127.0.0.9", 1))
    [ref] = await box.select("INBOX")
    announced = await box.wire_size(ref)
    sent = 0
    caplog.set_level(logging.WARNING, logger="pop2gate.imap")
    with pytest.raises(StoreError):
        async for piece in box.fetch(ref):
            sent += len(piece)
    assert sent <= announced  # never more than announced, and the caller sees the error
    assert any(f"announced {claimed} octets" in r.getMessage() for r in caplog.records)
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
