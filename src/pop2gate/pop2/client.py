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
import socket
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Union

MAX_COMMAND = 512  # octets per command line, CRLF included (RFC 937 "Sizes")
MAX_REPLY = 4096  # octets per reply line we accept (RFC 937 says 512; be lenient, not unbounded)
DEFAULT_PORT = 109
DEFAULT_TIMEOUT = 60.0
CHUNK = 65536

__all__ = [
    "ClientProtocol", "Client", "AsyncClient", "State", "NEED_DATA",
    "Greeting", "Count", "Length", "Ok", "Error", "Data", "DataEnd", "Closed", "Event",
    "Pop2ClientError", "Pop2Error", "LocalProtocolError", "RemoteProtocolError",
    "ConnectionClosed",
]


class Pop2ClientError(Exception):
    """Base class of every error raised by this module."""


class Pop2Error(Pop2ClientError):
    """The server answered with a `-` reply (and closes the connection)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class LocalProtocolError(Pop2ClientError):
    """The caller asked for something POP2 does not allow here; nothing was sent."""


class RemoteProtocolError(Pop2ClientError):
    """The server broke the protocol."""


class ConnectionClosed(Pop2ClientError):
    """The connection ended before the expected reply or data arrived."""


class State(enum.Enum):
    """RFC 937 client states; each names the reply the client waits for or just got."""

    CALL = "CALL"  # connected: greeting expected, then HELO or QUIT
    NMBR = "NMBR"  # HELO or FOLD sent: #n expected, then READ, FOLD or QUIT
    SIZE = "SIZE"  # READ or an ack sent: =c expected, then RETR, READ, FOLD or QUIT
    XFER = "XFER"  # RETR sent: c octets expected, then ACKS, ACKD or NACK
    EXIT = "EXIT"  # QUIT sent, `-` received or connection closed
    ERROR = "ERROR"  # the server broke the protocol


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


Event = Union[Greeting, Count, Length, Ok, Error, Data, DataEnd, Closed]


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
_EXPECTED = {State.CALL: "+", State.NMBR: "#", State.SIZE: "=", State.EXIT: "+"}


def _quote(arg: str | bytes, what: str) -> bytes:
    """Encode one argument with RFC 937 quoting: `\\ ` for space, `\\\\` for backslash."""
    if isinstance(arg, str):
        raw = arg.encode("utf-8")
    elif isinstance(arg, (bytes, bytearray)):
        raw = bytes(arg)
    else:
        raise TypeError(f"{what} must be str or bytes, not {type(arg).__name__}")
    if not raw:
        raise LocalProtocolError(f"empty {what}")
    if any(b < 0x20 or b == 0x7F for b in raw):
        raise LocalProtocolError(f"control character in {what}")
    return raw.replace(b"\\", b"\\\\").replace(b" ", b"\\ ")


def _number(text: str) -> tuple[int, str]:
    """Split the text after `#` or `=` into its number and the rest."""
    text = text.lstrip(" ")
    rest = text.lstrip("0123456789")
    digits = text[: len(text) - len(rest)]
    if not digits or len(digits) > 20 or (rest and not rest[0].isspace()):
        raise RemoteProtocolError(f"bad number in reply: {text[:40]!r}")
    return int(digits), rest.strip()


class ClientProtocol:
    """The POP2 client state machine, without I/O."""

    def __init__(self) -> None:
        self.state = State.CALL
        self.waiting = True  # a reply (or message data) is due from the server
        self.length: int | None = None  # the last =c announced
        self._buf = bytearray()
        self._left = 0  # message octets still due after RETR
        self._eof = False

    # Commands: each returns the line to send, or raises LocalProtocolError.

    def helo(self, user: str | bytes, password: str | bytes) -> bytes:
        self._check("HELO", State.CALL)
        return self._send(State.NMBR, b"HELO", _quote(user, "user"), _quote(password, "password"))

    def fold(self, name: str | bytes) -> bytes:
        self._check("FOLD", State.NMBR, State.SIZE)
        return self._send(State.NMBR, b"FOLD", _quote(name, "mailbox"))

    def read(self, n: int | None = None) -> bytes:
        self._check("READ", State.NMBR, State.SIZE)
        if n is None:
            return self._send(State.SIZE, b"READ")
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError("message number must be an int")
        if n < 0:
            raise LocalProtocolError("message number must not be negative")
        return self._send(State.SIZE, b"READ", b"%d" % n)

    def retr(self) -> bytes:
        self._check("RETR", State.SIZE)
        if not self.length:
            raise LocalProtocolError("RETR of a message of zero characters")
        line = self._send(State.XFER, b"RETR")
        self._left = self.length
        return line

    def acks(self) -> bytes:
        self._check("ACKS", State.XFER)
        return self._send(State.SIZE, b"ACKS")

    def ackd(self) -> bytes:
        self._check("ACKD", State.XFER)
        return self._send(State.SIZE, b"ACKD")

    def nack(self) -> bytes:
        self._check("NACK", State.XFER)
        return self._send(State.SIZE, b"NACK")

    def quit(self) -> bytes:
        self._check("QUIT", State.CALL, State.NMBR, State.SIZE)
        return self._send(State.EXIT, b"QUIT")

    def _check(self, word: str, *states: State) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"{word} not allowed in state {self.state.name}")
        if self.waiting:
            raise LocalProtocolError(f"{word} not allowed while waiting for the server")

    def _send(self, state: State, *words: bytes) -> bytes:
        line = b" ".join(words) + b"\r\n"
        if len(line) > MAX_COMMAND:
            raise LocalProtocolError(f"command line longer than {MAX_COMMAND} octets")
        self.state, self.waiting = state, True
        return line

    # Input.

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the server; b"" means the server closed the connection."""
        if self._eof:
            if data:
                raise LocalProtocolError("data received after the end of the stream")
        elif data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """Return the next event, or NEED_DATA when more input is needed.

        A complete reply that arrives while no reply is due stays buffered until the
        next command is sent; only a `-` reply (such as an idle logout) is delivered.
        """
        if self.state is State.ERROR:
            raise RemoteProtocolError("the server broke the protocol earlier")
        try:
            return self._next()
        except RemoteProtocolError:
            self.state, self.waiting = State.ERROR, False
            raise

    def _next(self) -> Event | _NeedData:
        if self.state is State.XFER and self.waiting:
            if not self._left:
                self.waiting = False
                return DataEnd()
            if not self._buf:
                return self._end_or_need()
            chunk = bytes(self._buf[: self._left])
            del self._buf[: len(chunk)]
            self._left -= len(chunk)
            return Data(chunk)
        end = self._buf.find(b"\n", 0, MAX_REPLY)
        if end < 0:
            if len(self._buf) >= MAX_REPLY:
                raise RemoteProtocolError(f"reply line longer than {MAX_REPLY} octets")
            return self._end_or_need()
        line = bytes(self._buf[:end])
        line = line[:-1] if line.endswith(b"\r") else line
        if not self.waiting and not line.startswith(b"-"):
            return self._end_or_need()
        del self._buf[: end + 1]
        return self._reply(line.decode("utf-8", "replace"))

    def _end_or_need(self) -> Closed | _NeedData:
        if not self._eof:
            return NEED_DATA
        self.state, self.waiting = State.EXIT, False
        return Closed()

    def _reply(self, text: str) -> Event:
        kind, rest = text[:1], text[1:]
        if not kind or kind not in "+-#=":
            raise RemoteProtocolError(f"reply does not start with + - # =: {text[:40]!r}")
        if kind == "-":
            self.state, self.waiting = State.EXIT, False
            return Error(rest.strip())
        if kind != _EXPECTED.get(self.state):
            raise RemoteProtocolError(f"unexpected {kind!r} reply in state {self.state.name}")
        self.waiting = False
        if kind == "+":
            if self.state is State.CALL:
                words = rest.split()
                host = words[1] if len(words) > 1 and words[0] == "POP2" else None
                return Greeting(rest.strip(), host)
            return Ok(rest.strip())
        number, rest = _number(rest)
        if kind == "#":
            return Count(number, rest)
        self.length = number
        return Length(number, rest)


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
    def _expect(event: Event | _NeedData, kind: type) -> Event:
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
    async def connect(cls, host: str, port: int = DEFAULT_PORT,
                      timeout: float = DEFAULT_TIMEOUT) -> AsyncClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
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

    async def retr_to(self, fileobj: BinaryIO) -> int:
        """Write the current message to fileobj chunk by chunk; return its size."""
        line, total = self.protocol.retr(), 0
        with self._guard():
            await self._send(line)
            while not isinstance(event := await self._event(), DataEnd):
                fileobj.write(self._expect(event, Data).data)
                total += len(event.data)
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
        while (event := self.protocol.next_event()) is NEED_DATA:
            data = await asyncio.wait_for(self._reader.read(CHUNK), self.timeout)
            self.protocol.receive_data(data)
        return event

    async def _call(self, line: bytes | None, kind: type) -> Event:
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
    def connect(cls, host: str, port: int = DEFAULT_PORT,
                timeout: float = DEFAULT_TIMEOUT) -> Client:
        return cls.from_socket(socket.create_connection((host, port), timeout=timeout), timeout)

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

    def retr_to(self, fileobj: BinaryIO) -> int:
        """Write the current message to fileobj chunk by chunk; return its size."""
        line, total = self.protocol.retr(), 0
        with self._guard():
            self._sock.sendall(line)
            while not isinstance(event := self._event(), DataEnd):
                fileobj.write(self._expect(event, Data).data)
                total += len(event.data)
        return total

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
        while (event := self.protocol.next_event()) is NEED_DATA:
            self.protocol.receive_data(self._sock.recv(CHUNK))
        return event

    def _call(self, line: bytes | None, kind: type) -> Event:
        with self._guard():
            if line is not None:
                self._sock.sendall(line)
            return self._expect(self._event(), kind)
