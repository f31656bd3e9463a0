"""RFC 937 (POP2) server protocol as a pure state machine: bytes in, events out.

No I/O happens here. The session feeds received octets with `receive_data`,
takes commands with `next_event`, and turns its answers into wire octets with
the `reply_*` methods, which also move the state. The transition table is
`TRANSITIONS`; every reply text is in `TEXT`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_LINE = 512  # octets, line end included (RFC 937 "Sizes")


class State(enum.Enum):
    AUTH = "AUTH"
    MBOX = "MBOX"
    ITEM = "ITEM"
    NEXT = "NEXT"
    DONE = "DONE"


class Command(enum.Enum):
    HELO = "HELO"
    FOLD = "FOLD"
    READ = "READ"
    RETR = "RETR"
    ACKS = "ACKS"
    ACKD = "ACKD"
    NACK = "NACK"
    QUIT = "QUIT"


# (state, command) -> state after a successful reply. A pair not listed is a
# command in the wrong state: "-" and close. Every failure reply goes to DONE.
TRANSITIONS: dict[tuple[State, Command], State] = {
    (State.AUTH, Command.HELO): State.MBOX,
    (State.AUTH, Command.QUIT): State.DONE,
    (State.MBOX, Command.FOLD): State.MBOX,
    (State.MBOX, Command.READ): State.ITEM,
    (State.MBOX, Command.QUIT): State.DONE,
    (State.ITEM, Command.FOLD): State.MBOX,
    (State.ITEM, Command.READ): State.ITEM,
    (State.ITEM, Command.RETR): State.NEXT,
    (State.ITEM, Command.QUIT): State.DONE,
    (State.NEXT, Command.ACKS): State.ITEM,
    (State.NEXT, Command.ACKD): State.ITEM,
    (State.NEXT, Command.NACK): State.ITEM,
}

# Every reply text the server sends. Keys are used by the session and tests.
TEXT = {
    "greeting": "POP2 {host} pop2gate server ready",
    "greeting_version": "POP2 {host} pop2gate {version} server ready",
    "count": "{n} messages in {folder}",
    "count_one": "1 message in {folder}",
    "length": "{c} characters in message {n}",
    "length_none": "0 no message {n}",
    "bye": "OK",
    "too_long": "Command line too long",
    "bad_char": "Invalid character in command",
    "unknown": "Unknown command",
    "wrong_state": "{command} not allowed now",
    "missing_arg": "Missing argument",
    "extra_arg": "Too many arguments",
    "not_number": "Message number must be a number",
    "bad_login": "Bad login",
    "bad_folder": "Invalid folder name",
    "no_message": "No message",
    "autologout": "Autologout; idle for too long",
    "too_many": "Too many connections, try again later",
    "server_error": "Server error",
    "backend_error": "Mail server error, try again later",
}

# Commands whose last argument is the rest of the line (UW behaviour: passwords
# go raw, spaces included), so only leading spaces are dropped.
_REST_OF_LINE = frozenset({Command.HELO, Command.FOLD})


@dataclass(frozen=True)
class Helo:
    user: str
    password: str

    def __repr__(self) -> str:  # never show the password
        return f"Helo(user={self.user!r}, password=<hidden>)"


@dataclass(frozen=True)
class Fold:
    folder: str


@dataclass(frozen=True)
class Read:
    number: int | None


@dataclass(frozen=True)
class Simple:
    """RETR, ACKS, ACKD, NACK or QUIT."""

    command: Command


Event = Helo | Fold | Read | Simple


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True)
class ProtocolViolation:
    """The client broke the protocol; `reply` is the "-" line to send before closing."""

    key: str
    reply: bytes
    detail: str


class LocalProtocolError(Exception):
    """The session asked for a reply the current state does not allow."""


def unquote(text: str) -> str:
    """RFC 937 quoting: backslash takes the next character literally."""
    out: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            ch = next(chars, "\\")
        out.append(ch)
    return "".join(out)


def _split_word(text: str) -> tuple[str, str | None]:
    """First argument up to an unquoted space; the rest after one space, or None."""
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == " ":
            return text[:i], text[i + 1 :]
        i += 1
    return text, None


def _line(prefix: str, text: str) -> bytes:
    """`+ text`, `- text`; `#` and `=` are followed directly by their number."""
    sep = "" if prefix in "#=" else " "
    return f"{prefix}{sep}{text}\r\n".encode("utf-8", "surrogateescape")


class ServerProtocol:
    """One POP2 server connection's protocol state."""

    def __init__(self) -> None:
        self.state = State.AUTH
        self.pending: Command | None = None
        self._buffer = bytearray()

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add received octets. Never holds more than one command line."""
        self._buffer += data

    def next_event(self) -> Event | ProtocolViolation | NeedData:
        """The next complete command, a violation (then DONE), or NEED_DATA."""
        if self.state is State.DONE:
            raise LocalProtocolError("connection is done")
        if self.pending is not None:
            raise LocalProtocolError(f"reply to {self.pending.value} first")
        end = self._buffer.find(b"\n", 0, MAX_LINE)
        if end < 0:
            if len(self._buffer) >= MAX_LINE:
                return self._violate("too_long", f"{len(self._buffer)}+ octets without a line end")
            return NEED_DATA
        raw = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        return self._parse(raw)

    def _parse(self, raw: bytes) -> Event | ProtocolViolation:
        if any(b < 0x20 or b == 0x7F for b in raw):
            return self._violate("bad_char", "control character")
        text = raw.decode("utf-8", "surrogateescape")
        word, _, rest = text.partition(" ")
        try:
            command = Command(word.upper())
        except ValueError:
            return self._violate("unknown", f"unknown command {word[:16]!r}")
        if (self.state, command) not in TRANSITIONS:
            return self._violate(
                "wrong_state", f"{command.value} in state {self.state.value}", command=command.value
            )
        event = self._arguments(command, rest.lstrip(" ") if command in _REST_OF_LINE else rest.strip(" "))
        if isinstance(event, ProtocolViolation):
            return event
        self.pending = command
        return event

    def _arguments(self, command: Command, rest: str) -> Event | ProtocolViolation:
        if command is Command.HELO:
            user, password = _split_word(rest)
            if not user or not password:
                return self._violate("missing_arg", "HELO needs user and password")
            return Helo(unquote(user), unquote(password))
        if command is Command.FOLD:
            if not rest:
                return self._violate("missing_arg", "FOLD needs a mailbox")
            return Fold(unquote(rest))
        if command is Command.READ:
            if not rest:
                return Read(None)
            if " " in rest:
                return self._violate("extra_arg", "READ takes one number")
            if not (rest.isascii() and rest.isdigit()):
                return self._violate("not_number", "READ argument is not a number")
            return Read(int(rest))
        if rest:
            return self._violate("extra_arg", f"{command.value} takes no argument")
        return Simple(command)

    def _violate(self, key: str, detail: str, **fields: str) -> ProtocolViolation:
        self.state = State.DONE
        self._buffer.clear()
        return ProtocolViolation(key, _line("-", TEXT[key].format(**fields)), detail)

    # -- output --------------------------------------------------------------

    def greeting(self, host: str, version: str | None = None) -> bytes:
        if version:
            return _line("+", TEXT["greeting_version"].format(host=host, version=version))
        return _line("+", TEXT["greeting"].format(host=host))

    def _succeed(self, *allowed: Command) -> None:
        if self.pending not in allowed:
            raise LocalProtocolError(f"no reply of this kind for {self.pending}")
        self.state = TRANSITIONS[(self.state, self.pending)]
        self.pending = None

    def reply_count(self, n: int, folder: str) -> bytes:
        """`#n` for HELO or FOLD."""
        self._succeed(Command.HELO, Command.FOLD)
        key = "count_one" if n == 1 else "count"
        return _line("#", TEXT[key].format(n=n, folder=folder))

    def reply_length(self, c: int, n: int) -> bytes:
        """`=c` for READ, ACKS, ACKD or NACK."""
        self._succeed(Command.READ, Command.ACKS, Command.ACKD, Command.NACK)
        if c == 0:
            return _line("=", TEXT["length_none"].format(n=n))
        return _line("=", TEXT["length"].format(c=c, n=n))

    def start_data(self) -> None:
        """RETR accepted: the session now sends exactly the announced octets."""
        self._succeed(Command.RETR)

    def reply_bye(self) -> bytes:
        """`+ OK` for QUIT; the connection is then closed."""
        self._succeed(Command.QUIT)
        return _line("+", TEXT["bye"])

    def reply_error(self, key: str) -> bytes:
        """A `-` line for any failure; the connection is then closed."""
        self.state = State.DONE
        self.pending = None
        self._buffer.clear()
        return _line("-", TEXT[key])
