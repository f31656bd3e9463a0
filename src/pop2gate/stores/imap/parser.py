"""Server responses, sans I/O: octets in (`ResponseReader.feed`), events out.

Events: `Untagged` (`* ...`, with the text after its keyword and any literals), `Tagged`
(a command's completion: status, response code, text), `Continuation` (`+ ...`), and
`LiteralPiece` for a literal longer than `stream_over`, delivered as its octets arrive
instead of being held. Bounded: a response's text (without literals) is at most `MAX_LINE`
octets, the literals it holds at most `max_literal`; past either, a `ResponseError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .wire import Literal, ParseError, Part

MAX_LINE = 64 * 1024
"""Octets of response text (literals not counted) one response may have: far over any
line pop2gate asks for (a FETCH of UID, RFC822.SIZE and FLAGS, a CAPABILITY list)."""

_STATUS = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
_LITERAL_MARK = re.compile(rb"\{([0-9]{1,10})\}\Z")
_KIND = re.compile(rb"[A-Za-z][A-Za-z0-9.\-]*\Z")


class ResponseError(ParseError):
    """The server's octets are not IMAP responses pop2gate can read."""


class LineTooLong(ResponseError):
    """A response's text went past `MAX_LINE`."""


class LiteralTooLarge(ResponseError):
    """A literal longer than the reader may hold, and not one being streamed."""


@dataclass(frozen=True, slots=True)
class Untagged:
    """`* [number] KIND ...`: `parts` the text after KIND and any literals, in order; for a
    status (OK, NO, BAD, BYE, PREAUTH) its response code (without brackets) and text."""

    kind: str
    number: int | None = None
    parts: tuple[Part, ...] = ()
    code: bytes = b""
    text: bytes = b""

    @property
    def line(self) -> bytes:
        """The text after KIND when the response holds no literal, else b""."""
        return self.parts[0] if len(self.parts) == 1 and isinstance(self.parts[0], bytes) else b""


@dataclass(frozen=True, slots=True)
class Tagged:
    """A command's completion."""

    tag: bytes
    status: str  # OK, NO or BAD
    code: bytes = b""
    text: bytes = b""


@dataclass(frozen=True, slots=True)
class Continuation:
    """`+ text`: the server waits for the rest of a command."""

    text: bytes = b""


@dataclass(frozen=True, slots=True)
class LiteralPiece:
    """Octets of a streamed literal as they came: `prefix` the response text before it (`* 3
    FETCH (UID 9 BODY[]<0> `), `size` its length, `offset` where `data` starts in it."""

    prefix: bytes
    size: int
    offset: int
    data: bytes


Event = Untagged | Tagged | Continuation | LiteralPiece


def _code(text: bytes) -> tuple[bytes, bytes]:
    """`[CODE args] text` -> (b"CODE args", b"text")."""
    if text.startswith(b"["):
        end = text.find(b"]")
        if end > 0:
            return text[1:end], text[end + 1 :].lstrip()
    return b"", text


@dataclass
class ResponseReader:
    """Reads responses from octets fed in any pieces."""

    max_literal: int
    stream_over: int | None = None  # literals longer than this arrive as LiteralPiece events
    _buf: bytearray = field(default_factory=bytearray)
    _parts: list[Part] = field(default_factory=list)
    _text: int = 0  # response text so far
    _held: int = 0  # literal octets held so far
    _lit_size: int = 0
    _lit_left: int = 0
    _lit_data: list[bytes] = field(default_factory=list)
    _lit_stream: bool = False

    @property
    def pending(self) -> int:
        """Octets fed and not yet part of an event (0 between responses)."""
        return len(self._buf) + self._text + self._held

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        if self._lit_left and not self._buf and data:
            # A literal's octets straight from what came, without going through the buffer.
            take = min(self._lit_left, len(data))
            self._literal(data[:take] if take < len(data) else data, out)
            data = data[take:]
        buf = self._buf
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                if self._lit_left:
                    take = min(self._lit_left, len(buf) - pos)
                    with memoryview(buf) as view:
                        chunk = bytes(view[pos : pos + take])
                    pos += take
                    self._literal(chunk, out)
                    continue
                end = buf.find(b"\n", pos)
                if end < 0:
                    if self._text + len(buf) - pos > MAX_LINE:
                        raise LineTooLong(f"response longer than {MAX_LINE} octets")
                    break
                if self._text + end + 1 - pos > MAX_LINE:
                    raise LineTooLong(f"response longer than {MAX_LINE} octets")
                line = bytes(buf[pos:end])
                pos = end + 1
                self._line(line[:-1] if line.endswith(b"\r") else line, out)
        finally:
            del buf[:pos]
        return out

    def _line(self, line: bytes, out: list[Event]) -> None:
        self._text += len(line) + 2
        mark = _LITERAL_MARK.search(line)
        if mark is None:
            self._parts.append(line)
            parts, self._parts, self._text, self._held = self._parts, [], 0, 0
            out.append(_response(parts))
            return
        size = int(mark.group(1))
        self._parts.append(line[: mark.start()])
        self._lit_size, self._lit_left, self._lit_data = size, size, []
        self._lit_stream = self.stream_over is not None and size > self.stream_over
        if not self._lit_stream and self._held + size > self.max_literal:
            raise LiteralTooLarge(f"literal of {size} octets is over the limit")
        if size == 0:
            self._parts.append(Literal(b""))

    def _literal(self, chunk: bytes, out: list[Event]) -> None:
        offset = self._lit_size - self._lit_left
        self._lit_left -= len(chunk)
        if self._lit_stream:
            prefix = b"".join(p for p in self._parts if isinstance(p, bytes))
            out.append(LiteralPiece(prefix, self._lit_size, offset, chunk))
            if not self._lit_left:
                self._parts.append(Literal(b"", streamed=True))
            return
        self._held += len(chunk)
        self._lit_data.append(chunk)
        if not self._lit_left:
            data = self._lit_data[0] if len(self._lit_data) == 1 else b"".join(self._lit_data)
            self._lit_data = []
            self._parts.append(Literal(data))


def _response(parts: list[Part]) -> Event:
    first = parts[0]
    assert isinstance(first, bytes)
    if first.startswith(b"+"):
        if len(parts) > 1:
            raise ResponseError("continuation request with a literal")
        return Continuation(first[2:] if first.startswith(b"+ ") else first[1:])
    tag, _, rest = first.partition(b" ")
    word, _, rest = rest.partition(b" ")
    if not tag or not word:
        raise ResponseError("not an IMAP response")
    number = None
    if tag == b"*" and word.isdigit():
        if len(word) > 10:
            raise ResponseError("number out of range")
        number = int(word)
        word, _, rest = rest.partition(b" ")
    if not _KIND.match(word):
        raise ResponseError("not an IMAP response")
    kind = word.decode("ascii").upper()
    if tag != b"*":
        if kind not in ("OK", "NO", "BAD") or len(parts) > 1:
            raise ResponseError("bad tagged response")
        code, text = _code(rest)
        return Tagged(tag, kind, code, text)
    if kind in _STATUS and number is None:
        if len(parts) > 1:
            raise ResponseError("status response with a literal")
        code, text = _code(rest)
        return Untagged(kind, None, (rest,), code, text)
    return Untagged(kind, number, (rest, *parts[1:]))
