"""POP2 (RFC 937) client: a sans-I/O protocol core with blocking and asyncio wrappers.

`ClientProtocol` does no I/O: its command methods return the bytes to send, and
`receive_data` / `next_event` turn the server's bytes into events. `Client` (sockets)
and `AsyncClient` (asyncio streams) drive it over a real connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import io
import select
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .wire import (
    DEFAULT_PORT,
    MAX_REPLY_LINE,
    Ackd,
    Acks,
    Command,
    Fold,
    Helo,
    LocalProtocolError,
    Nack,
    ProtocolError,
    Quit,
    Read,
    RemoteProtocolError,
    Retr,
    Word,
    greeting_host,
    parse_reply,
    split_line,
)

DEFAULT_TIMEOUT = 60.0
CHUNK = 65536
MAX_READ = 1 << 20  # the most the blocking client asks the socket for at once, during message data

__all__ = [
    "ClientProtocol", "Client", "AsyncClient", "State", "NEED_DATA",
    "Greeting", "Count", "Length", "Ok", "Error", "Data", "DataEnd", "Closed", "Event",
    "ProtocolError", "Pop2Error", "LocalProtocolError", "RemoteProtocolError",
    "ConnectionClosed", "DEFAULT_PORT", "Sink",
]


class Sink(Protocol):
    """Where `retr_to` writes message data: a binary file or anything with its `write`."""

    def write(self, data: bytes, /) -> object: ...


class Pop2Error(ProtocolError):
    """The server answered with a `-` reply (and closes the connection)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class ConnectionClosed(ProtocolError):
    """The connection ended before the expected reply or data arrived."""


class State(enum.Enum):
    """RFC 937 client states; each names the reply the client waits for or just got."""

    CALL = "CALL"  # connected: greeting expected, then HELO or QUIT
    NMBR = "NMBR"  # HELO or FOLD sent: #n expected, then READ, FOLD or QUIT
    SIZE = "SIZE"  # READ or an ack sent: =c expected, then RETR, READ, FOLD or QUIT
    XFER = "XFER"  # RETR sent: c octets expected, then ACKS, ACKD or NACK
    EXIT = "EXIT"  # QUIT sent, `-` received or connection closed
    ERROR = "ERROR"  # the server broke the protocol


# command -> (the states it may be sent in, the state it leads to). The reply each state
# waits for is in EXPECTED (XFER waits for message data, not a line).
TABLE: dict[Word, tuple[frozenset[State], State]] = {
    Word.HELO: (frozenset({State.CALL}), State.NMBR),
    Word.FOLD: (frozenset({State.NMBR, State.SIZE}), State.NMBR),
    Word.READ: (frozenset({State.NMBR, State.SIZE}), State.SIZE),
    Word.RETR: (frozenset({State.SIZE}), State.XFER),
    Word.ACKS: (frozenset({State.XFER}), State.SIZE),
    Word.ACKD: (frozenset({State.XFER}), State.SIZE),
    Word.NACK: (frozenset({State.XFER}), State.SIZE),
    Word.QUIT: (frozenset({State.CALL, State.NMBR, State.SIZE}), State.EXIT),
}
EXPECTED = {State.CALL: "+", State.NMBR: "#", State.SIZE: "=", State.EXIT: "+"}


@dataclass(frozen=True)
class Greeting:
    text: str
    host: str | None


@dataclass(frozen=True)
class Count:
    n: int
    text: str


@dataclass(frozen=True)
class Length:
    c: int
    text: str


@dataclass(frozen=True)
class Ok:
    text: str


@dataclass(frozen=True)
class Error:
    text: str


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class DataEnd:
    pass


@dataclass(frozen=True)
class Closed:
    """The server closed the connection (after `receive_data(b"")`)."""


Event = Greeting | Count | Length | Ok | Error | Data | DataEnd | Closed
E = TypeVar("E", Greeting, Count, Length, Ok, Data)


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


def _text(arg: str | bytes, what: str) -> str:
    """An argument as text; bytes map one to one (surrogateescape), so any octets can be sent."""
    if isinstance(arg, str):
        return arg
    if isinstance(arg, (bytes, bytearray)):
        return bytes(arg).decode("utf-8", "surrogateescape")
    raise TypeError(f"{what} must be str or bytes, not {type(arg).__name__}")


class ClientProtocol:
    """The POP2 client state machine, without I/O."""

    def __init__(self) -> None:
        self._state = State.CALL
        self._waiting = True  # a reply (or message data) is due from the server
        self.length: int | None = None  # the last =c announced
        self._buf = bytearray()
        self._raw = b""  # octets received into an empty buffer, kept as they came (no copy)
        self._left = 0  # message octets still due after RETR
        self._eof = False

    @property
    def state(self) -> State:
        return self._state

    @property
    def buffered(self) -> int:
        """Octets received and not yet taken by an event."""
        return len(self._buf) + len(self._raw)

    @property
    def data_left(self) -> int:
        """Octets of message data still due from the server and not yet received (0 outside RETR)."""
        if self._state is not State.XFER or not self._waiting:
            return 0
        return max(self._left - self.buffered, 0)

    @property
    def waiting(self) -> bool:
        """A reply (or message data) is due from the server."""
        return self._waiting

    # Commands: each returns the line to send, or raises LocalProtocolError and changes nothing.

    def helo(self, user: str | bytes, password: str | bytes) -> bytes:
        return self.send(Helo(_text(user, "user"), _text(password, "password")))

    def fold(self, name: str | bytes) -> bytes:
        return self.send(Fold(_text(name, "mailbox")))

    def read(self, n: int | None = None) -> bytes:
        return self.send(Read(n))

    def retr(self) -> bytes:
        return self.send(Retr())

    def acks(self) -> bytes:
        return self.send(Acks())

    def ackd(self) -> bytes:
        return self.send(Ackd())

    def nack(self) -> bytes:
        return self.send(Nack())

    def quit(self) -> bytes:
        return self.send(Quit())

    def send(self, command: Command) -> bytes:
        """The line for `command`, if the state allows it now; the state moves on."""
        allowed, after = TABLE[command.word]
        if self._state not in allowed:
            raise LocalProtocolError(f"{command.word.value} not allowed in state {self._state.name}")
        if self._waiting:
            raise LocalProtocolError(f"{command.word.value} not allowed while waiting for the server")
        if isinstance(command, Retr) and not self.length:
            raise LocalProtocolError("RETR of a message of zero characters")
        line = command.line()
        if isinstance(command, Retr):
            self._left = self.length or 0
        self._state, self._waiting = after, True
        return line

    # Input.

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the server; b"" means the server closed the connection."""
        if self._eof:
            if data:
                raise LocalProtocolError("data received after the end of the stream")
        elif not data:
            self._eof = True
        elif self._buf or self._raw:
            self._buf += self._raw
            self._buf += data
            self._raw = b""
        else:
            self._raw = data  # message data is then handed over as this very object

    def next_event(self) -> Event | NeedData:
        """Return the next event, or NEED_DATA when more input is needed.

        A complete reply that arrives while no reply is due stays buffered until the
        next command is sent; only a `-` reply (such as an idle logout) is delivered.
        More than one reply line's worth of such input is a protocol error.
        """
        if self._state is State.ERROR:
            raise RemoteProtocolError("the server broke the protocol earlier")
        try:
            return self._next()
        except RemoteProtocolError:
            self._state, self._waiting = State.ERROR, False
            raise

    def _next(self) -> Event | NeedData:
        if self._state is State.XFER and self._waiting:
            if not self._left:
                self._waiting = False
                return DataEnd()
            if self._raw:
                chunk, rest = self._raw, b""
                if len(chunk) > self._left:
                    chunk, rest = chunk[: self._left], chunk[self._left :]
                self._raw = b""
                self._buf += rest
            elif self._buf:
                chunk = bytes(self._buf[: self._left])
                del self._buf[: len(chunk)]
            else:
                return self._end_or_need()
            self._left -= len(chunk)
            return Data(chunk)
        if self._raw:
            self._buf += self._raw
            self._raw = b""
        found = split_line(self._buf, MAX_REPLY_LINE)
        if found is None:
            if len(self._buf) >= MAX_REPLY_LINE:
                raise RemoteProtocolError(f"reply line longer than {MAX_REPLY_LINE} octets")
            return self._end_or_need()
        line, used = found
        if not self._waiting and not line.startswith(b"-"):
            if len(self._buf) > MAX_REPLY_LINE:
                raise RemoteProtocolError("the server sent more than a reply while none was due")
            return self._end_or_need()
        del self._buf[:used]
        return self._reply(line)

    def _end_or_need(self) -> Closed | NeedData:
        if not self._eof:
            return NEED_DATA
        self._state, self._waiting = State.EXIT, False
        return Closed()

    def _reply(self, line: bytes) -> Event:
        reply = parse_reply(line)
        if reply.kind == "-":
            self._state, self._waiting = State.EXIT, False
            return Error(reply.text)
        if reply.kind != EXPECTED.get(self._state):
            raise RemoteProtocolError(f"unexpected {reply.kind!r} reply in state {self._state.name}")
        self._waiting = False
        if reply.kind == "+":
            if self._state is State.CALL:
                return Greeting(reply.text, greeting_host(reply.text))
            return Ok(reply.text)
        assert reply.number is not None  # parse_reply sets it for # and =
        if reply.kind == "#":
            return Count(reply.number, reply.text)
        self.length = reply.number
        return Length(reply.number, reply.text)


class _Wrapper:
    """What the blocking and the asyncio client share."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.protocol = ClientProtocol()
        self.greeting: Greeting | None = None

    def _abort(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Drop the connection on any failure: its state is unknown from then on."""
        try:
            yield
        except ConnectionError as exc:
            self._abort()
            raise ConnectionClosed(str(exc) or "connection lost") from exc
        except BaseException:
            self._abort()
            raise

    @staticmethod
    def _expect(event: Event, kind: type[E]) -> E:
        if isinstance(event, Error):
            raise Pop2Error(event.text)
        if isinstance(event, Closed):
            raise ConnectionClosed("the server closed the connection")
        if not isinstance(event, kind):
            raise RemoteProtocolError(f"expected {kind.__name__}, got {event!r}")
        return event


class AsyncClient(_Wrapper):
    """POP2 client over asyncio streams. Leaving `async with` closes without QUIT."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout)
        self._reader, self._writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT,
                      ssl_context: ssl.SSLContext | None = None,
                      server_hostname: str | None = None) -> AsyncClient:
        """Connect, with TLS first when `ssl_context` is given (its checks apply to
        `server_hostname`, by default `host`), and read the greeting."""
        hostname = None if ssl_context is None else server_hostname or host
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl_context, server_hostname=hostname), timeout)
        return await cls.from_streams(reader, writer, timeout)

    @classmethod
    async def from_streams(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           timeout: float = DEFAULT_TIMEOUT) -> AsyncClient:
        """Wrap connected streams and read the greeting."""
        client = cls(reader, writer, timeout)
        client.greeting = await client._call(None, Greeting)
        return client

    async def helo(self, user: str | bytes, password: str | bytes) -> int:
        return (await self._call(self.protocol.helo(user, password), Count)).n

    async def fold(self, name: str | bytes) -> int:
        return (await self._call(self.protocol.fold(name), Count)).n

    async def read(self, n: int | None = None) -> int:
        return (await self._call(self.protocol.read(n), Length)).c

    async def retr(self) -> bytes:
        out = io.BytesIO()
        await self.retr_to(out)
        return out.getvalue()

    async def retr_to(self, fileobj: Sink) -> int:
        """Write the current message to fileobj chunk by chunk; return its size."""
        line, total = self.protocol.retr(), 0
        with self._guard():
            await self._send(line)
            while not isinstance(event := await self._event(), DataEnd):
                data = self._expect(event, Data).data
                fileobj.write(data)
                total += len(data)
        return total

    async def acks(self) -> int:
        return (await self._call(self.protocol.acks(), Length)).c

    async def ackd(self) -> int:
        return (await self._call(self.protocol.ackd(), Length)).c

    async def nack(self) -> int:
        return (await self._call(self.protocol.nack(), Length)).c

    async def quit(self) -> str:
        text = (await self._call(self.protocol.quit(), Ok)).text
        await self.close()
        return text

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(self._writer.wait_closed(), self.timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _abort(self) -> None:
        self._writer.close()

    async def _send(self, line: bytes) -> None:
        self._writer.write(line)
        await asyncio.wait_for(self._writer.drain(), self.timeout)

    async def _event(self) -> Event:
        while isinstance(event := self.protocol.next_event(), NeedData):
            data = await asyncio.wait_for(self._reader.read(CHUNK), self.timeout)
            self.protocol.receive_data(data)
        return event

    async def _call(self, line: bytes | None, kind: type[E]) -> E:
        with self._guard():
            if line is not None:
                await self._send(line)
            return self._expect(await self._event(), kind)


class Client(_Wrapper):
    """Blocking POP2 client over a socket. Leaving `with` closes without QUIT."""

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout)
        self._sock = sock
        sock.settimeout(timeout)

    @classmethod
    def connect(cls, host: str, port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT,
                ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                connect_timeout: float | None = None) -> Client:
        """Connect, with TLS first when `ssl_context` is given (its checks apply to
        `server_hostname`, by default `host`), and read the greeting.

        `connect_timeout` (default `timeout`) bounds the connection and the TLS handshake;
        `timeout` bounds each wait for the server after that."""
        sock = socket.create_connection((host, port), timeout=connect_timeout or timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each command goes at once
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
            except BaseException:
                sock.close()
                raise
        return cls.from_socket(sock, timeout)

    @classmethod
    def from_socket(cls, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT) -> Client:
        """Wrap a connected socket and read the greeting."""
        client = cls(sock, timeout)
        client.greeting = client._call(None, Greeting)
        return client

    def helo(self, user: str | bytes, password: str | bytes) -> int:
        return self._call(self.protocol.helo(user, password), Count).n

    def fold(self, name: str | bytes) -> int:
        return self._call(self.protocol.fold(name), Count).n

    def read(self, n: int | None = None) -> int:
        return self._call(self.protocol.read(n), Length).c

    def retr(self) -> bytes:
        out = io.BytesIO()
        self.retr_to(out)
        return out.getvalue()

    def retr_to(self, fileobj: Sink) -> int:
        """Write the current message to fileobj chunk by chunk; return its size."""
        line, total = self.protocol.retr(), 0
        with self._guard():
            self._sock.sendall(line)
            while not isinstance(event := self._event(), DataEnd):
                data = self._expect(event, Data).data
                fileobj.write(data)
                total += len(data)
        return total

    def unsolicited(self) -> bool:
        """Octets (or the end of the stream) arrived that no command asked for yet: after RETR,
        a sign that the server sent more than the message it announced. Does not block."""
        if self.protocol.buffered:
            return True
        if isinstance(self._sock, ssl.SSLSocket) and self._sock.pending():
            return True
        return bool(select.select([self._sock], [], [], 0)[0])

    def acks(self) -> int:
        return self._call(self.protocol.acks(), Length).c

    def ackd(self) -> int:
        return self._call(self.protocol.ackd(), Length).c

    def nack(self) -> int:
        return self._call(self.protocol.nack(), Length).c

    def quit(self) -> str:
        text = self._call(self.protocol.quit(), Ok).text
        self.close()
        return text

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    _abort = close

    def _event(self) -> Event:
        while isinstance(event := self.protocol.next_event(), NeedData):
            # message data: what is due, up to MAX_READ a read (fewer calls and events per message)
            self.protocol.receive_data(self._sock.recv(min(max(CHUNK, self.protocol.data_left), MAX_READ)))
        return event

    def _call(self, line: bytes | None, kind: type[E]) -> E:
        with self._guard():
            if line is not None:
                self._sock.sendall(line)
            return self._expect(self._event(), kind)
