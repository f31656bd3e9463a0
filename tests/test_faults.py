"""Faults against a real Dovecot: a backend killed, stopped or sending what cannot be read,
the gateway killed, a client cut off, another client expunging, two sessions of one user.

After each: nothing lost and nothing deleted that should stay on the Dovecot side; on the
POP2 side a `-` reply or a closed connection, never a wrong count; a log line, no traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import struct
import subprocess
from dataclasses import dataclass

import pytest

from dovecot import HOST, USERS, Dovecot
from helpers import BIN, PASSWORD, Gateways, MailEnv, ScriptConn, ScriptedServer, free_port, until_idle, wait_port
from pop2gate.config import parse_config
from pop2gate.gateway.listeners import Gateway
from pop2gate.pop2.client import Client, ConnectionClosed
from pop2gate.pop2.wire import Helo

BACKEND_ERROR = b"- Mail server error, try again later\r\n"


def message(i: int, size: int = 0) -> bytes:
    """Message `i`: a header and lines of text, about `size` octets (one line at least)."""
    body = b"".join(b"line %d of message %d, padding padding padding\r\n" % (n, i) for n in range(size // 48 + 1))
    return b"Subject: fault %d\r\n\r\n" % i + body


# --- the POP2 side -------------------------------------------------------------------


class Wire:
    """A POP2 client on raw streams that waits for each reply, as a real client does."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int, rcvbuf: int | None = None) -> Wire:
        """Connect and read the greeting; `rcvbuf` keeps the receive window small."""
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        wire = cls(reader, writer)
        assert (await wire.line()).startswith(b"+ POP2 ")
        return wire

    async def line(self, timeout: float = 15) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def send(self, line: str) -> bytes:
        """Send one command line; its reply line."""
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.line()

    async def helo(self, user: str, password: str) -> int:
        """Log in (the password quoted as a client would); the `#n` count."""
        self.writer.write(Helo(user, password).line())
        reply = await self.line()
        assert reply.startswith(b"#"), reply
        return int(reply[1:].split()[0])

    async def count(self, line: str) -> int:
        """Send a command whose reply is `=c`; c."""
        reply = await self.send(line)
        assert reply.startswith(b"="), reply
        return int(reply[1:].split()[0])

    async def data(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), 15)

    async def retr_ackd(self, body: bytes) -> int:
        """RETR, which must give exactly `body`, then ACKD; the next message's count."""
        self.writer.write(b"RETR\r\n")
        assert await self.data(len(body)) == body
        return await self.count("ACKD")

    async def quit(self) -> None:
        """QUIT: `+ OK`, then the server closes."""
        assert await self.send("QUIT") == b"+ OK\r\n"
        assert await self.rest() == b""

    async def rest(self, timeout: float = 15) -> bytes:
        """Everything until the server closes."""
        return await asyncio.wait_for(self.reader.read(-1), timeout)

    def close(self) -> None:
        self.writer.close()


@dataclass
class Gate:
    host: str
    port: int
    gateway: Gateway

    async def wire(self, rcvbuf: int | None = None) -> Wire:
        return await Wire.open(self.host, self.port, rcvbuf)

    async def idle(self, within: float = 15) -> None:
        """Wait until every session has ended (and logged out of the backend)."""
        await until_idle(self.gateway, within)


def imap_backend(server: Dovecot | ScriptedServer) -> dict:
    return {"name": "dc", "type": "imap", "url": f"imap://{HOST}:{server.port}", "tls": "none"}


@pytest.fixture
async def gate():
    """In-process gateways in front of an IMAP server; `make(server, limits)`."""
    gateways = Gateways()

    async def make(server: Dovecot | ScriptedServer, limits: dict | None = None) -> Gate:
        config = parse_config({
            "server": {"hostname": "test.invalid", "listen": ["127.0.0.1:0"]},
            "limits": {"bad_login_delay": 0.05, "close_linger": 0.1, **(limits or {})},
            "backend": [imap_backend(server)],
            "routing": {"default": "dc"},
        })
        return Gate(*await gateways.start(config))

    yield make
    await gateways.aclose()


@pytest.fixture(scope="module")
def own_dovecot():
    """A Dovecot of this module's own, for the tests that kill or stop the whole server."""
    server = Dovecot().start()
    try:
        yield server
    finally:
        server.signal_all(signal.SIGCONT)
        server.stop()


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="pop2gate")
    return caplog


def assert_logged(caplog, *texts: str) -> None:
    """Each text is in some log line, and no line carries a traceback."""
    for text in texts:
        assert text in caplog.text, f"no log line with {text!r}"
    assert not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in caplog.text


# --- the Dovecot side ----------------------------------------------------------------


def fill(dovecot: Dovecot, user: str, messages: list[bytes]) -> dict[int, bytes]:
    dovecot.clear(user)
    return {dovecot.append(user, m): m for m in messages}


def assert_kept(dovecot: Dovecot, user: str, kept: dict[int, bytes]) -> None:
    """Exactly `kept` is in the mailbox, byte for byte, none of it flagged \\Deleted."""
    assert dovecot.bodies(user) == kept
    assert not any(r"\Deleted" in flags for flags in dovecot.uids(user).values())


# --- the backend fails ---------------------------------------------------------------


async def test_backend_killed_mid_retr(own_dovecot, gate, logs):
    """The whole Dovecot is SIGKILLed while a large message is on its way: the client gets
    fewer octets than announced and a close; after a restart every message is there."""
    stored = fill(own_dovecot, "alice", [message(1), message(2, 8 * 1024 * 1024), message(3)])
    first, big, _ = stored  # their UIDs
    g = await gate(own_dovecot, {"imap_fetch_chunk": 65536, "imap_fetch_memory": 131072})
    c = await g.wire(rcvbuf=32768)  # a small window: the transfer stalls on the client
    assert await c.helo("alice", USERS["alice"]) == 3
    assert await c.count("READ 1") == len(stored[first])
    c.writer.write(b"RETR\r\n")
    assert await c.data(len(stored[first])) == stored[first]
    announced = await c.count("ACKD")
    assert announced == len(stored[big])
    c.writer.write(b"RETR\r\n")
    got = len(await c.data(100_000))
    try:
        own_dovecot.kill()
        rest = await c.rest()
    finally:
        c.close()
        own_dovecot.restart()
    assert got + len(rest) < announced  # short, then closed: the client can tell
    await g.idle()
    assert_logged(logs, "retr failed", "ACKD message(s) kept")
    assert_kept(own_dovecot, "alice", stored)  # the ACKD message too


async def stopped_session(dovecot: Dovecot, gate, where: str) -> dict[int, bytes]:
    """Log in, RETR and ACKD message 1, then SIGSTOP the whole Dovecot before the command
    `where` (or before HELO); the gateway's IMAP timeouts must end the session. SIGCONT after."""
    stored = fill(dovecot, "alice", [message(i) for i in range(1, 4)])
    uids = list(stored)
    # No read-ahead: every step after the stop asks the server (a body read ahead is sent,
    # and a count read ahead announced, from memory).
    g = await gate(dovecot, {"imap_command_timeout": 0.5, "imap_connect_timeout": 0.5, "imap_readahead": 0})
    c = await g.wire()
    try:
        if where != "login":
            assert await c.helo("alice", USERS["alice"]) == 3
            assert await c.count("READ 1") == len(stored[uids[0]])
            c.writer.write(b"RETR\r\n")
            assert await c.data(len(stored[uids[0]])) == stored[uids[0]]
            assert await c.count("ACKD") == len(stored[uids[1]])
        assert dovecot.signal_all(signal.SIGSTOP) > 0
        if where == "retr":  # `=c` was announced: no reply line can follow, only a close
            c.writer.write(b"RETR\r\n")
            assert len(await c.rest()) < len(stored[uids[1]])
        else:
            line = {"login": f"HELO alice {USERS['alice']}", "read": "READ 3", "quit": "QUIT"}[where]
            assert await c.send(line) == BACKEND_ERROR
            assert await c.rest() == b""
        await g.idle()
    finally:
        c.close()
        dovecot.signal_all(signal.SIGCONT)
    return stored


@pytest.mark.parametrize("where", ["login", "read", "retr", "quit"])
async def test_backend_stopped(own_dovecot, gate, logs, where):
    """The whole Dovecot hangs (SIGSTOP): `- Mail server error` or a close, nothing deleted."""
    stored = await stopped_session(own_dovecot, gate, where)
    assert_logged(logs, "timed out")
    assert own_dovecot.bodies("alice") == stored  # nothing expunged, also once Dovecot runs again
    flagged = {uid for uid, flags in own_dovecot.uids("alice").items() if r"\Deleted" in flags}
    # At QUIT the UID STORE that timed out is applied once Dovecot runs again (docs/imap.md):
    # only ever to the message the client ACKD, and nothing is expunged.
    assert flagged <= ({next(iter(stored))} if where == "quit" else set())


def unreadable_backend(fetch_reply: bytes):
    """A ScriptedServer script: an IMAP server that logs anyone in, then answers UID FETCH with `fetch_reply`."""

    def script(conn: ScriptConn) -> None:
        conn.send(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        while line := conn.readline():
            tag, _, rest = line.partition(b" ")
            verb = rest.split(b" ", 1)[0].strip().upper()
            if verb == b"CAPABILITY":
                conn.send(b"* CAPABILITY IMAP4rev1\r\n" + tag + b" OK done\r\n")
            elif verb == b"LOGIN":
                conn.send(tag + b" OK logged in\r\n")
            elif verb == b"SELECT":
                conn.send(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n" + tag + b" OK [READ-WRITE] done\r\n")
            elif verb == b"UID":
                conn.send(fetch_reply + tag + b" OK done\r\n")
            elif verb == b"LOGOUT":
                conn.send(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                return
            else:
                conn.send(tag + b" BAD unexpected\r\n")

    return script


@pytest.mark.parametrize("fetch_reply", [
    b"* 1 FETCH (UID 7 RFC822.SIZE 10 FLAGS " + b"(" * 5000 + b")" * 5000 + b")\r\n",
    b"* 1 FETCH (UID " + b"7" * 5000 + b" RFC822.SIZE 10 FLAGS ())\r\n",
    b"* " + b"1" * 5000 + b" FETCH (UID 7 RFC822.SIZE 10 FLAGS ())\r\n",
    b'* 1 FETCH (UID 7 RFC822.SIZE 10 FLAGS ("unterminated)\r\n',
], ids=["nested", "long-uid", "long-number", "unterminated"])
async def test_backend_sends_an_unreadable_fetch(gate, logs, fetch_reply):
    """A FETCH response the gateway cannot read is a backend failure: `- Mail server error`."""
    with ScriptedServer(unreadable_backend(fetch_reply)) as backend:
        g = await gate(backend)
        c = await g.wire()
        c.writer.write(b"HELO alice pw\r\n")
        assert await c.line() == BACKEND_ERROR
        assert await c.rest() == b""
        c.close()
        await g.idle()
    assert_logged(logs, "backend error")


# --- the gateway or the client goes away ----------------------------------------------


def imap_config_file(env: MailEnv, dovecot: Dovecot, port: int) -> str:
    """A config file for `pop2gate serve`: one IMAP backend, the shared Dovecot."""
    path = env.root / "imap.toml"
    path.write_text(
        "[server]\nhostname = \"test.invalid\"\n"
        f"listen = [\"127.0.0.1:{port}\"]\n"
        "[limits]\nbad_login_delay = 0.05\n"
        f"[[backend]]\nname = \"dc\"\ntype = \"imap\"\nurl = \"imap://{HOST}:{dovecot.port}\"\ntls = \"none\"\n"
        "[routing]\ndefault = \"dc\"\n"
    )
    return str(path)


@pytest.mark.parametrize("kind", ["imap", "maildir"])
def test_gateway_sigkilled_after_ackd(dovecot, env, kind):
    """`pop2gate serve` is SIGKILLed after two ACKDs: the client sees a close, nothing is deleted."""
    messages = [message(i) for i in range(1, 4)]
    if kind == "imap":
        stored = fill(dovecot, "bob", messages)
        user, password = "bob", USERS["bob"]
    else:
        names = [env.deliver("alice", m) for m in messages]
        user, password = "alice", PASSWORD
    port = free_port()
    cfg = imap_config_file(env, dovecot, port) if kind == "imap" else str(env.write_config(f"127.0.0.1:{port}"))
    proc = subprocess.Popen([str(BIN / "pop2gate"), "serve", "-c", cfg], stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, proc)
        with Client.connect("127.0.0.1", port, timeout=15) as c:
            assert c.helo(user, password) == 3
            for n in (1, 2):
                assert c.read(n) == len(messages[n - 1])
                assert c.retr() == messages[n - 1]
                assert c.ackd() == len(messages[n])
            proc.kill()
            proc.wait(10)
            with pytest.raises(ConnectionClosed):
                c.read(3)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
    assert "login peer=127.0.0.1:" in err and "retr " in err  # it logged the session
    assert "Traceback" not in err
    if kind == "imap":
        assert_kept(dovecot, "bob", stored)
    else:
        assert env.files("alice") == sorted(names)


@pytest.mark.parametrize("how", ["close", "reset", "half-close", "mid-retr"])
async def test_client_cut_after_ackd(dovecot, gate, logs, how):
    """The client goes away after ACKD without QUIT (FIN, RST, shutdown, or in the middle of the
    next message): nothing is deleted."""
    stored = fill(dovecot, "carol", [message(1), message(2, 256 * 1024), message(3)])
    first, second, _ = stored
    g = await gate(dovecot)
    c = await g.wire(rcvbuf=32768)
    assert await c.helo("carol", USERS["carol"]) == 3
    assert await c.count("READ 1") == len(stored[first])
    c.writer.write(b"RETR\r\n")
    assert await c.data(len(stored[first])) == stored[first]
    assert await c.count("ACKD") == len(stored[second])
    sock = c.writer.get_extra_info("socket")
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    elif how == "half-close":
        c.writer.write_eof()
        assert await c.rest() == b""
    elif how == "mid-retr":
        c.writer.write(b"RETR\r\n")
        assert len(await c.data(1000)) == 1000
    c.close()
    await g.idle()
    assert_logged(logs, "1 ACKD message(s) kept, session did not end cleanly")
    assert_kept(dovecot, "carol", stored)


# --- other clients of the same mailbox ---------------------------------------------------


async def test_other_client_expunges_mid_session(dovecot, gate, logs):
    """Messages another IMAP client removed after selection: one never read gives `=0`; with
    one ACKD'd among them, QUIT still releases exactly what is left to release."""
    stored = fill(dovecot, "alice", [message(i) for i in range(1, 6)])
    uids = list(stored)
    g = await gate(dovecot)
    c = await g.wire()
    assert await c.helo("alice", USERS["alice"]) == 5
    assert await c.count("READ 4") == len(stored[uids[3]])
    c.writer.write(b"RETR\r\n")
    assert await c.data(len(stored[uids[3]])) == stored[uids[3]]
    assert await c.count("ACKD") == len(stored[uids[4]])
    for uid in (uids[0], uids[3]):  # one never read, one ACKD'd
        dovecot.expunge("alice", uid)
    assert await c.send("READ 1") == b"=0 no message 1\r\n"
    assert await c.count("READ 2") == len(stored[uids[1]])
    assert await c.retr_ackd(stored[uids[1]]) == len(stored[uids[2]])
    await c.quit()
    await g.idle()
    assert_logged(logs, "deleted ", "quit ")
    assert_kept(dovecot, "alice", {u: stored[u] for u in (uids[2], uids[4])})


async def test_other_client_expunges_an_announced_message(dovecot, gate, logs):
    """`=c` went out, then another client removed the message, which was not read ahead
    (`imap_readahead = 0`): RETR sends fewer than c octets and closes; nothing else is
    touched."""
    stored = fill(dovecot, "alice", [message(i) for i in range(1, 4)])
    uids = list(stored)
    g = await gate(dovecot, {"imap_readahead": 0})
    c = await g.wire()
    assert await c.helo("alice", USERS["alice"]) == 3
    announced = await c.count("READ 2")
    dovecot.expunge("alice", uids[1])
    c.writer.write(b"RETR\r\n")
    assert len(await c.rest()) < announced
    await g.idle()
    assert_logged(logs, "retr failed")
    assert_kept(dovecot, "alice", {u: stored[u] for u in (uids[0], uids[2])})


async def test_other_client_expunges_an_announced_message_read_ahead(dovecot, gate, logs):
    """`=c` went out for a message read ahead, then another client removed it: its octets are
    in hand, so RETR sends all c of them (the only correct end once `=c` is out); ACKD of it
    deletes nothing else, and the session goes on."""
    stored = fill(dovecot, "alice", [message(i) for i in range(1, 4)])
    uids = list(stored)
    g = await gate(dovecot, {"imap_recheck_interval": 0})  # even when every announcement asks
    c = await g.wire()
    assert await c.helo("alice", USERS["alice"]) == 3
    assert await c.count("READ 2") == len(stored[uids[1]])
    dovecot.expunge("alice", uids[1])
    assert await c.retr_ackd(stored[uids[1]]) == len(stored[uids[2]])
    await c.quit()
    await g.idle()
    assert_logged(logs, "quit ")
    assert_kept(dovecot, "alice", {u: stored[u] for u in (uids[0], uids[2])})


async def test_read_again_after_other_client_expunged(dovecot, gate):
    """READ of a message announced before another client removed it gives `=0` (protocol.md
    §4.3) once the selection (and any NOOP) is older than `imap_recheck_interval` (the default,
    1 s, waited out here): a NOOP before the answer lets the server say so."""
    stored = fill(dovecot, "alice", [message(i) for i in range(1, 4)])
    uids = list(stored)
    g = await gate(dovecot)
    c = await g.wire()
    assert await c.helo("alice", USERS["alice"]) == 3
    assert await c.count("READ 2") == len(stored[uids[1]])
    dovecot.expunge("alice", uids[1])
    await asyncio.sleep(1.2)  # past the default imap_recheck_interval
    assert await c.send("READ 2") == b"=0 no message 2\r\n"
    assert await c.count("READ 3") == len(stored[uids[2]])  # the others keep their numbers
    assert await c.send("QUIT") == b"+ OK\r\n"


async def test_read_again_within_the_recheck_interval(dovecot, gate):
    """Within `imap_recheck_interval` of the selection a count already known is
    announced as it was, without asking: a message read ahead that another client removed
    meanwhile reads its old count and is sent whole from what was read; nothing is lost."""
    stored = fill(dovecot, "alice", [message(i) for i in range(1, 4)])
    uids = list(stored)
    g = await gate(dovecot, {"imap_recheck_interval": 3600})
    c = await g.wire()
    assert await c.helo("alice", USERS["alice"]) == 3
    assert await c.count("READ 2") == len(stored[uids[1]])
    dovecot.expunge("alice", uids[1])
    assert await c.count("READ 2") == len(stored[uids[1]])
    c.writer.write(b"RETR\r\n")
    assert await c.data(len(stored[uids[1]])) == stored[uids[1]]
    assert await c.count("NACK") == len(stored[uids[1]])
    assert await c.send("QUIT") == b"+ OK\r\n"
    assert_kept(dovecot, "alice", {u: stored[u] for u in (uids[0], uids[2])})


async def test_two_sessions_of_one_user(dovecot, gate, logs):
    """Two sessions of one user each ACKD a different message and QUIT: exactly those two go."""
    stored = fill(dovecot, "bob", [message(i) for i in range(1, 6)])
    uids = list(stored)
    g = await gate(dovecot)
    a, b = await g.wire(), await g.wire()
    for c in (a, b):
        assert await c.helo("bob", USERS["bob"]) == 5
    for c, n in ((a, 2), (b, 4)):
        assert await c.count(f"READ {n}") == len(stored[uids[n - 1]])
        c.writer.write(b"RETR\r\n")
        assert await c.data(len(stored[uids[n - 1]])) == stored[uids[n - 1]]
        assert await c.count("ACKD") == len(stored[uids[n]])
    assert await asyncio.gather(a.send("QUIT"), b.send("QUIT")) == [b"+ OK\r\n"] * 2
    for c in (a, b):
        assert await c.rest() == b""
    await g.idle()
    assert_logged(logs, "deleted ")
    assert_kept(dovecot, "bob", {u: stored[u] for u in (uids[0], uids[2], uids[4])})
