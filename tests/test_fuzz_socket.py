"""Fuzzing a running server over real sockets (the `make_server` fixture): random command lines
in a dialogue that waits for each reply, and byte soup sent at once. The only outcomes are
protocol replies (message data exactly as announced) and a clean close; afterwards the server
still serves a normal session, and no log line holds a traceback. `make fuzz` runs it longer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time

from hypothesis import HealthCheck, event, given
from hypothesis import strategies as st

from fuzzing import fuzz
from helpers import PASSWORD
from pop2gate.pop2.client import AsyncClient
from pop2gate.pop2.wire import MAX_LINE, MAX_REPLY_LINE

GREETING = b"+ POP2 test.invalid pop2gate server ready\r\n"
MESSAGES = [b"Subject: fuzz 1\n\nfirst\n", b"Subject: fuzz 2\n\nsecond\nno line end",
            b"Subject: fuzz 3\n\n" + b"x" * 3000]
WIRE = {m.replace(b"\n", b"\r\n") + (b"" if m.endswith(b"\n") else b"\r\n") for m in MESSAGES}
REPLY = re.compile(rb"(\+|-|#[0-9]+|=[0-9]+)( [^\r\n]*)?\r\n")
LOGIN = f"HELO alice {PASSWORD}".encode()

# Mostly commands that keep a session going, so it reaches every state; then the rest.
GOOD = [b"READ", b"READ 1", b"READ 2", b"READ 3", b"RETR", b"ACKS", b"ACKD", b"NACK", b"FOLD INBOX", b"QUIT"]
BAD = [LOGIN, b"HELO alice wrong", b"HELO nobody x", b"HELO", b"HELO alice", b"helo alice\\ x y",
       b"FOLD inbox", b"FOLD Archive", b"FOLD ../x", b"FOLD /etc", b"FOLD {x}", b"FOLD a/./b", b"FOLD",
       b"READ 4", b"READ 0", b"READ -1", b"READ x", b"READ 1 2", b"READ 99999999999999999999999", b"read  2 ",
       b"retr", b"RETR 1", b"ackd", b"quit ", b"NOOP", b"", b" ", b"\x00", b"READ\x7f", b"RETR\r"]
random_line = st.binary(max_size=80).filter(lambda b: b"\n" not in b)
long_line = st.integers(MAX_LINE - 4, MAX_LINE + 40).map(lambda n: b"A" * n)
commands = st.sampled_from(GOOD * 6 + BAD)
# A command word with random octets for its arguments.
random_arguments = st.tuples(st.sampled_from([b"HELO ", b"HELO alice ", b"FOLD ", b"READ ", b"RETR ", b"ACKD "]),
                             random_line).map(b"".join)
# One line in ten is random octets, one in ten too long, one in ten has random arguments.
line = st.integers(0, 9).flatmap(
    lambda k: [random_line, long_line, random_arguments][k] if k < 3 else commands)
# A message's round trip, as clients do it: READ, RETR, then ACKS, ACKD or NACK.
transfer = st.tuples(st.sampled_from([b"READ", b"READ 1", b"READ 2", b"READ 3"]), st.just(b"RETR"),
                     st.sampled_from([b"ACKS", b"ACKD", b"NACK"])).map(list)
steps = st.lists(st.one_of(line.map(lambda x: [x]), transfer), max_size=8).map(lambda ss: [x for s in ss for x in s])
lines = st.tuples(steps, st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=24, max_size=24)).map(
    lambda d: [x + end for x, end in zip(d[0], d[1], strict=False)])
logged_in = st.tuples(st.booleans(), lines).map(lambda d: ([LOGIN + b"\r\n"] if d[0] else []) + d[1])
dialogues = logged_in
soups = st.tuples(logged_in, st.lists(st.tuples(st.integers(0, 12), st.binary(max_size=600)), max_size=3)).map(
    lambda d: splice(*d))


def splice(pieces: list[bytes], junk: list[tuple[int, bytes]]) -> list[bytes]:
    """`pieces` with byte soup put in between."""
    out = list(pieces)
    for at, soup in junk:
        out.insert(min(at, len(out)), soup)
    return out


def reset_mailbox(env) -> None:
    """The same three messages in INBOX before every example (ACKD and QUIT may have removed some)."""
    inbox = env.folder("alice")
    for sub in ("new", "cur"):
        for entry in (inbox / sub).iterdir():
            entry.unlink()
    for m in MESSAGES:
        env.deliver("alice", m)


class Conn:
    """A blocking client socket reading the server's output in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        assert self.file.readline() == GREETING

    def reply(self, announced: int) -> bytes:
        """One reply line, or the announced message data (it starts with `Subject:`)."""
        line = self.file.readline(MAX_REPLY_LINE + 1)
        if line.startswith(b"Subject:"):
            data = line + self.file.read(max(announced - len(line), 0))
            assert len(data) == announced and data in WIRE, "message data not as announced"
            event("message data")
            return data
        assert REPLY.fullmatch(line), f"not a reply line: {line!r}"
        return line

    def closed(self) -> None:
        """Nothing follows but the server's FIN."""
        assert self.file.read() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def converse(port: int, dialogue: list[bytes]) -> None:
    """Send each line and wait for its reply, as a client does; after `-` or `+ OK` only a close."""
    c = Conn(port)
    try:
        announced = 0
        for line in dialogue:
            c.sock.sendall(line)
            got = c.reply(announced)
            if got.startswith(b"="):
                announced = int(got[1:].split()[0])
            if got.startswith(b"- ") or got == b"+ OK\r\n":
                event(f"closed after {got[:1].decode()}")
                c.closed()
                return
    finally:
        c.close()


def check_output(out: bytes) -> None:
    """The greeting, then reply lines and announced message data; `-` or `+ OK` only last."""
    assert out.startswith(GREETING)
    pos, announced = len(GREETING), 0
    while pos < len(out):
        if out.startswith(b"Subject:", pos):
            data = out[pos : pos + announced]
            assert len(data) == announced and data in WIRE, "message data not as announced"
            event("message data")
            pos += announced
            continue
        end = out.find(b"\r\n", pos) + 2
        line = out[pos:end] if end > 1 else out[pos:]
        assert REPLY.fullmatch(line) and len(line) <= MAX_REPLY_LINE, f"not a reply line: {line!r}"
        pos = end
        if line.startswith(b"="):
            announced = int(line[1:].split()[0])
        if line.startswith(b"- ") or line == b"+ OK\r\n":
            event(f"closed after {line[:1].decode()}")
            assert pos == len(out), "output after the last reply"


def pour(port: int, soup: list[bytes]) -> None:
    """Send everything at once, half-close, read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(soup))
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    check_output(out)


async def normal_session(port: int) -> None:
    c = await AsyncClient.connect("127.0.0.1", port, timeout=10)
    assert await c.helo("alice", PASSWORD) == len(MESSAGES)
    assert await c.read(1) > 0
    assert await c.retr() in WIRE
    assert await c.acks() > 0
    await c.quit()


async def idle(gateway) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while gateway.active and loop.time() < deadline:  # noqa: ASYNC110 - the gateway has no event for it
        await asyncio.sleep(0.02)
    assert gateway.active == 0


def assert_no_traceback(caplog) -> None:
    assert not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


async def run_campaign(make_server, env, caplog, send, strategy, examples: int) -> None:
    """Run `send(port, example)` for each example in a thread while the server runs here."""
    caplog.set_level(logging.INFO, logger="pop2gate")
    srv = await make_server(limits={"bad_login_delay": 0, "bad_login_max_delay": 0, "close_linger": 0.5})

    @fuzz(examples, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(strategy)
    def campaign(example: list[bytes]) -> None:
        # The previous example's session may still be ending (ACKS flags go into the Maildir
        # when it ends): the files are reset only once no session is left.
        deadline = time.monotonic() + 10
        while srv.gateway.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.gateway.active == 0
        reset_mailbox(env)
        send(srv.port, example)

    await asyncio.to_thread(campaign)
    await idle(srv.gateway)
    reset_mailbox(env)
    await normal_session(srv.port)
    await idle(srv.gateway)
    assert_no_traceback(caplog)


async def test_random_dialogues(make_server, env, caplog):
    await run_campaign(make_server, env, caplog, converse, dialogues, 60)


async def test_byte_soup(make_server, env, caplog):
    await run_campaign(make_server, env, caplog, pour, soups, 60)
