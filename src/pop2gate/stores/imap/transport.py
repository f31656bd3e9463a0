"""The pipelined transport under `conn.ImapConn`: tagged commands and their answers.

Commands are written whole, several at once where one does not depend on the answer to
another, each with its own tag; answers are matched by tag, and untagged data goes to the
oldest command it answers. Every command has one deadline (`imap_command_timeout`). Any
failure (lost connection, BYE, timeout, unreadable data) raises ConnError and leaves the
connection unusable; so does a command interrupted half way. Nothing here logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from .config import TlsMode
from .parser import Continuation, Event, LiteralPiece, ResponseError, ResponseReader, Tagged, Untagged
from .wire import ParseError

T = TypeVar("T")
READ_SIZE = 256 * 1024  # octets asked of the socket at a time
# The untagged responses that answer each command pop2gate sends (any status response
# goes to the oldest command).
_ANSWERS = {
    "CAPABILITY": frozenset({"CAPABILITY"}),
    "AUTHENTICATE": frozenset({"CAPABILITY"}),
    "LOGIN": frozenset({"CAPABILITY"}),
    "ID": frozenset({"ID"}),
    "NAMESPACE": frozenset({"NAMESPACE"}),
    "LIST": frozenset({"LIST"}),
    "SELECT": frozenset({"FLAGS", "EXISTS", "RECENT"}),
    "UID FETCH": frozenset({"FETCH"}),
}


class ConnError(Exception):
    """The backend failed; the text is for the log and holds no secrets."""


@dataclass(frozen=True)
class Target:
    """Where and how to connect."""

    host: str
    port: int
    tls: TlsMode
    ssl_context: ssl.SSLContext | None
    connect_timeout: float
    command_timeout: float
    max_literal: int = 1 << 20


def reason(err: BaseException) -> str:
    """A failure in a few words for ConnError's text."""
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {err.verify_message}"
    text = " ".join(str(err).split())[:100]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


FAILURES = (OSError, EOFError, ParseError, ValueError)


@dataclass
class Command:
    """A command sent: its tag, the untagged data that came with it, its completion."""

    tag: bytes
    name: str
    segments: deque[bytes]  # the first written at once, each other after a continuation request
    answer: Callable[[bytes], bytes] | None = None  # a SASL exchange's reply to a challenge
    untagged: list[Untagged] = field(default_factory=list)
    wants: frozenset[str] = frozenset()  # the untagged responses that answer it
    done: Tagged | None = None
    on_piece: Callable[[LiteralPiece], None] | None = None  # where a streamed literal goes

    @property
    def status(self) -> str:
        assert self.done is not None
        return self.done.status

    def ok_or_expunge_issued(self) -> bool:
        """OK, or NO [EXPUNGEISSUED]: some of the messages were removed by someone else."""
        done = self.done
        assert done is not None
        return done.status == "OK" or (done.status == "NO" and done.code.upper().startswith(b"EXPUNGEISSUED"))

    def data(self, kind: str) -> list[Untagged]:
        return [u for u in self.untagged if u.kind == kind]


def _arg(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("ascii")


class Transport:
    """Commands over one connection, one operation at a time: the base of ImapConn."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Target) -> None:
        self._reader, self._writer = reader, writer
        self._target = target
        self._parser = ResponseReader(target.max_literal)
        self._tags = itertools.count(1)
        self._inflight: deque[Command] = deque()
        self._bye: bytes | None = None
        self._broken = False
        self._busy = False
        self._uidvalidity = False  # a UIDVALIDITY outside SELECT: UIDs no longer name the same messages
        self.sequence: list[int] = []  # the selected folder's UIDs in sequence order
        self.gone: set[int] = set()  # UIDs another client expunged since the snapshot
        with contextlib.suppress(OSError, AttributeError):
            # Commands are small and each waits for its answer: never wait for a delayed ACK.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def sock(self) -> socket.socket:
        sock: socket.socket = self._writer.get_extra_info("socket")
        return sock

    def _command(self, name: str, *args: str | bytes, more: Iterable[bytes] = (),
                 answer: Callable[[bytes], bytes] | None = None) -> Command:
        tag = b"P%d" % next(self._tags)
        line = b" ".join((tag, name.encode("ascii"), *map(_arg, args))) + b"\r\n"
        verb = f"{name} {_arg(args[0]).decode('ascii')}" if name == "UID" else name
        return Command(tag, name, deque((line, *more)), answer, wants=_ANSWERS.get(verb, frozenset()))

    def _send(self, *cmds: Command) -> None:
        """Write the commands in one write: pipelined, answered in turn."""
        self._writer.write(b"".join(cmd.segments.popleft() for cmd in cmds))
        self._inflight.extend(cmds)

    async def _finish(self, cmd: Command) -> Command:
        """Read until `cmd` completes, within one `imap_command_timeout`."""
        async with asyncio.timeout(self._target.command_timeout):
            await self._writer.drain()
            while cmd.done is None:
                self._take(await self._reader.read(READ_SIZE))
        if self._bye is not None and cmd.name != "LOGOUT":
            raise ConnError(f"{cmd.name}: server said BYE{self._bye_text()}")
        if self._uidvalidity:
            raise ConnError("UIDVALIDITY changed during the session")
        return cmd

    def _take(self, data: bytes) -> None:
        """Route what the server sent (nothing: it closed the connection)."""
        if not data:
            raise EOFError("connection closed" + self._bye_text())
        for event in self._parser.feed(data):
            self._route(event)

    def _bye_text(self) -> str:
        return f" ({self._bye.decode('utf-8', 'replace')[:80]})" if self._bye else ""

    async def _run(self, name: str, *args: str | bytes) -> Command:
        cmd = self._command(name, *args)
        self._send(cmd)
        return await self._finish(cmd)

    def _route(self, event: Event) -> None:
        if isinstance(event, Tagged):
            for cmd in self._inflight:
                if cmd.tag == event.tag:
                    cmd.done = event
                    self._inflight.remove(cmd)
                    return
            raise ResponseError("completion of no command sent")
        current = self._inflight[0] if self._inflight else None
        if isinstance(event, Untagged):
            # Servers may run pipelined commands at once (Dovecot answers a UID FETCH sent
            # after a UID STORE before the STORE completes): data goes to the oldest command
            # it answers, else to the oldest command.
            current = next((cmd for cmd in self._inflight if event.kind in cmd.wants), current)
        if isinstance(event, Continuation):
            waiting = self._inflight[-1] if self._inflight else None
            if waiting is not None and waiting.segments:
                self._writer.write(waiting.segments.popleft())
            elif waiting is not None and waiting.answer is not None:
                self._writer.write(waiting.answer(event.text))
            else:
                raise ResponseError("continuation request nobody asked for")
        elif isinstance(event, LiteralPiece):
            if current is None or current.on_piece is None:
                raise ResponseError("literal over the limit")
            current.on_piece(event)
        else:
            if event.kind == "EXPUNGE" and event.number is not None:
                self._expunged(event.number)
            elif event.kind == "BYE":
                self._bye = event.text
            elif (event.kind == "OK" and event.code.upper().startswith(b"UIDVALIDITY")
                  and (current is None or current.name not in ("SELECT", "EXAMINE"))):
                self._uidvalidity = True
            if current is not None:
                current.untagged.append(event)

    def _expunged(self, number: int) -> None:
        """An EXPUNGE removes the message at that sequence number: its UID is `gone`."""
        if 1 <= number <= len(self.sequence):
            self.gone.add(self.sequence.pop(number - 1))

    @contextlib.contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        """One operation at a time; any failure in it (or an interruption: what the server
        sends next would be out of step) leaves the connection unusable, as a ConnError."""
        if self._broken:
            raise ConnError(f"{what}: connection already failed")
        if self._busy:
            raise ConnError(f"{what}: another command is running")
        self._busy = True
        try:
            yield
        except ConnError:
            self._broken = True
            raise
        except FAILURES as err:
            self._broken = True
            raise ConnError(f"{what}: {reason(err)}") from None
        except BaseException:
            self._broken = True
            raise
        finally:
            self._busy = False

    async def _guarded(self, what: str, run: Callable[[], Awaitable[T]]) -> T:
        with self._exclusive(what):
            return await run()

    async def _greeting(self) -> bytes:
        """Read the greeting: its response code, once the server accepted the connection."""
        events: list[Event] = []
        while not events:
            data = await self._reader.read(READ_SIZE)
            if not data:
                raise EOFError("connection closed before the greeting")
            events = self._parser.feed(data)
        greeting = events[0]
        if not isinstance(greeting, Untagged) or greeting.kind not in ("OK", "PREAUTH"):
            text = greeting.text if isinstance(greeting, Untagged) else b""
            raise ConnError(f"server refused the connection: {text.decode('utf-8', 'replace')[:80]}")
        for event in events[1:]:
            self._route(event)
        return greeting.code

    def abort(self) -> None:
        """Cut the connection now."""
        self._broken = True
        self._writer.transport.abort()
