"""The POP2 grammar (RFC 937), once, for both roles: no I/O, no state.

Command lines both ways (`Command.line` writes one, `parse_command` reads one), reply
lines both ways (`reply_line` writes one, `parse_reply` reads one), the greeting, argument
quoting, folder names, and one error hierarchy. The state machines in `server` and
`client` are built on these.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_LINE = 512  # octets per command line, CRLF included (RFC 937 "Sizes")
MAX_REPLY_LINE = 4096  # what a client accepts per reply line: lenient, never unbounded
DEFAULT_PORT = 109
FOLDER_SEPARATOR = "/"


class ProtocolError(Exception):
    """Base of every POP2 error, in either role."""


class LocalProtocolError(ProtocolError):
    """Our side asked for something POP2 does not allow here; nothing was sent."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol."""


class InvalidFolderName(ValueError):
    """A FOLD name that could reach outside the user's own folders."""


# --- commands ----------------------------------------------------------------------------


class Word(enum.Enum):
    HELO = "HELO"
    FOLD = "FOLD"
    READ = "READ"
    RETR = "RETR"
    ACKS = "ACKS"
    ACKD = "ACKD"
    NACK = "NACK"
    QUIT = "QUIT"


@dataclass(frozen=True)
class Helo:
    user: str
    password: str = field(repr=False)  # never shown

    word = Word.HELO

    def line(self) -> bytes:
        return _command_line(self.word, quote(self.user, "user"), quote(self.password, "password"))


@dataclass(frozen=True)
class Fold:
    folder: str

    word = Word.FOLD

    def line(self) -> bytes:
        return _command_line(self.word, quote(self.folder, "mailbox"))


@dataclass(frozen=True)
class Read:
    number: int | None = None

    word = Word.READ

    def line(self) -> bytes:
        if self.number is None:
            return _command_line(self.word)
        if isinstance(self.number, bool) or not isinstance(self.number, int):
            raise TypeError("message number must be an int")
        if self.number < 0:
            raise LocalProtocolError("message number must not be negative")
        return _command_line(self.word, b"%d" % self.number)


@dataclass(frozen=True)
class _Bare:
    """A command without arguments."""

    word = Word.QUIT

    def line(self) -> bytes:
        return _command_line(self.word)


@dataclass(frozen=True)
class Retr(_Bare):
    word = Word.RETR


@dataclass(frozen=True)
class Acks(_Bare):
    word = Word.ACKS


@dataclass(frozen=True)
class Ackd(_Bare):
    word = Word.ACKD


@dataclass(frozen=True)
class Nack(_Bare):
    word = Word.NACK


@dataclass(frozen=True)
class Quit(_Bare):
    word = Word.QUIT


Command = Helo | Fold | Read | Retr | Acks | Ackd | Nack | Quit
_BARE: dict[Word, Callable[[], Command]] = {Word.RETR: Retr, Word.ACKS: Acks, Word.ACKD: Ackd, Word.NACK: Nack,
                                  Word.QUIT: Quit}


def has_control(raw: bytes) -> bool:
    """NUL, DEL or any other control character (the line end is not part of `raw`)."""
    return any(b < 0x20 or b == 0x7F for b in raw)


def quote(arg: str, what: str) -> bytes:
    """One argument with RFC 937 quoting: `\\ ` for a space, `\\\\` for a backslash."""
    raw = arg.encode("utf-8", "surrogateescape")
    if not raw:
        raise LocalProtocolError(f"empty {what}")
    if has_control(raw):
        raise LocalProtocolError(f"control character in {what}")
    return raw.replace(b"\\", b"\\\\").replace(b" ", b"\\ ")


def unquote(text: str) -> str:
    """RFC 937 quoting undone: a backslash takes the next character literally."""
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


def _command_line(word: Word, *args: bytes) -> bytes:
    line = b" ".join([word.value.encode("ascii"), *args]) + b"\r\n"
    if len(line) > MAX_LINE:
        raise LocalProtocolError(f"command line longer than {MAX_LINE} octets")
    return line


class Reason(enum.Enum):
    """Every `-` reply the server sends, after which it closes; the value is its text."""

    TOO_LONG = "Command line too long"
    BAD_CHAR = "Invalid character in command"
    UNKNOWN = "Unknown command"
    WRONG_STATE = "{command} not allowed now"
    MISSING_ARG = "Missing argument"
    EXTRA_ARG = "Too many arguments"
    NOT_NUMBER = "Message number must be a number"
    BAD_FOLDER = "Invalid folder name"
    NO_MESSAGE = "No message"
    BAD_LOGIN = "Bad login"
    AUTOLOGOUT = "Autologout; idle for too long"
    TOO_MANY = "Too many connections, try again later"
    TOO_MANY_SESSIONS = "Too many sessions for this user, try again later"
    SERVER_ERROR = "Server error"
    BACKEND_ERROR = "Mail server error, try again later"

    def reply(self, word: Word | None = None) -> Reply:
        """The `-` reply; WRONG_STATE names the command word."""
        return Reply("-", self.value.format(command=word.value if word else "command"))


@dataclass(frozen=True)
class BadCommand:
    """A command line that breaks the grammar: the reason, and a detail for the log."""

    reason: Reason
    detail: str
    word: Word | None = None


def split_line(buffer: bytes | bytearray, limit: int) -> tuple[bytes, int] | None:
    """The first line of `buffer` without its end (LF or CRLF) and the octets it took.

    None while no line end is within `limit` octets.
    """
    end = buffer.find(b"\n", 0, limit)
    if end < 0:
        return None
    raw = bytes(buffer[:end])
    return (raw[:-1] if raw.endswith(b"\r") else raw), end + 1


def parse_word(raw: bytes) -> tuple[Word, str] | BadCommand:
    """The command word of a line and the text after it."""
    if has_control(raw):
        return BadCommand(Reason.BAD_CHAR, "control character")
    text = raw.decode("utf-8", "surrogateescape")
    word, _, rest = text.partition(" ")
    try:
        return Word(word.upper()), rest
    except ValueError:
        # not echoed: a line that is no command may be a password typed at the wrong prompt
        return BadCommand(Reason.UNKNOWN, f"unknown command of {len(raw)} octets")


def parse_arguments(word: Word, rest: str) -> Command | BadCommand:
    """The command `word` with the text after it. The password and the folder are the rest
    of the line (UW behaviour: passwords go raw, spaces included), so only leading spaces
    are dropped there; elsewhere surrounding spaces are."""
    if word is Word.HELO:
        user, password = _split_word(rest.lstrip(" "))
        if not user or not password:
            return BadCommand(Reason.MISSING_ARG, "HELO needs user and password", word)
        return Helo(unquote(user), unquote(password))
    if word is Word.FOLD:
        rest = rest.lstrip(" ")
        if not rest:
            return BadCommand(Reason.MISSING_ARG, "FOLD needs a mailbox", word)
        folder = unquote(rest)
        try:
            folder_levels(folder)
        except InvalidFolderName:
            return BadCommand(Reason.BAD_FOLDER, f"invalid folder name {folder[:64]!r}", word)
        return Fold(folder)
    rest = rest.strip(" ")
    if word is Word.READ:
        if not rest:
            return Read(None)
        if " " in rest:
            return BadCommand(Reason.EXTRA_ARG, "READ takes one number", word)
        if not (rest.isascii() and rest.isdigit()):
            return BadCommand(Reason.NOT_NUMBER, "READ argument is not a number", word)
        return Read(int(rest))
    if rest:
        return BadCommand(Reason.EXTRA_ARG, f"{word.value} takes no argument", word)
    return _BARE[word]()


def parse_command(raw: bytes) -> Command | BadCommand:
    """One command line (without its line end), whatever the state."""
    parsed = parse_word(raw)
    if isinstance(parsed, BadCommand):
        return parsed
    return parse_arguments(*parsed)


def folder_levels(name: str) -> list[str]:
    """A FOLD name's levels; InvalidFolderName for anything that could leave the user's folders:
    a leading `/` or `{`, an empty, `.` or `..` level, a control character."""
    if not name or name[0] in "/{":
        raise InvalidFolderName(name)
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise InvalidFolderName(name)
    levels = name.split(FOLDER_SEPARATOR)
    if any(level in ("", ".", "..") for level in levels):
        raise InvalidFolderName(name)
    return levels


# --- replies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One reply line: `kind` is `+`, `-`, `#` or `=`; `number` is set for `#` and `=`."""

    kind: str
    text: str
    number: int | None = None

    def line(self) -> bytes:
        """The reply on the wire: at most MAX_LINE octets, the text shortened if need be
        (it may echo a long argument), never the prefix or the number."""
        head = f"{self.kind}{self.number}" if self.kind in "#=" else self.kind
        if not self.text:
            return head.encode("ascii") + b"\r\n"
        sep = " "
        text = self.text.encode("utf-8", "surrogateescape")
        room = MAX_LINE - len(head) - len(sep) - 2
        if len(text) > room:
            cut = room - len(_SHORTENED)
            while cut > 0 and text[cut] & 0xC0 == 0x80:  # not inside a UTF-8 character
                cut -= 1
            text = text[:cut] + _SHORTENED
        return head.encode("ascii") + sep.encode() + text + b"\r\n"


_SHORTENED = b"..."


def parse_reply(line: bytes) -> Reply:
    """One reply line (without its line end); RemoteProtocolError if it is none."""
    text = line.decode("utf-8", "replace")
    kind, rest = text[:1], text[1:]
    if not kind or kind not in "+-#=":
        raise RemoteProtocolError(f"reply does not start with + - # =: {text[:40]!r}")
    if kind in "+-":
        return Reply(kind, rest.strip())
    rest = rest.lstrip(" ")
    after = rest.lstrip("0123456789")
    digits = rest[: len(rest) - len(after)]
    if not digits or len(digits) > 20 or (after and not after[0].isspace()):
        raise RemoteProtocolError(f"bad number in reply: {rest[:40]!r}")
    return Reply(kind, after.strip(), int(digits))


def greeting(host: str, version: str | None = None) -> Reply:
    """`+ POP2 host pop2gate [version] server ready`: nothing between `+` and `POP2`."""
    return Reply("+", f"POP2 {host} pop2gate {version} server ready" if version else
                 f"POP2 {host} pop2gate server ready")


_GREETING_HOST = re.compile(r"POP2\s+(\S+)")


def greeting_host(text: str) -> str | None:
    """The host a greeting's text names (`POP2 host ...`), None when it names none."""
    m = _GREETING_HOST.match(text)
    return m.group(1) if m else None
