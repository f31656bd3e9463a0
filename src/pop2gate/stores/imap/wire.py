"""IMAP wire text: quoting arguments and reading FETCH responses.

Pure functions, no I/O. FETCH data is matched by UID, never by position:
the UID may follow a literal, and unsolicited FETCH responses for other
messages may arrive in the middle of a command.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator
from typing import TypeAlias

_QUOTABLE = frozenset(range(0x20, 0x7F))


def quotable(text: str) -> bool:
    """True when `text` can be sent as an IMAP quoted string."""
    return all(ord(c) in _QUOTABLE for c in text)


def quote(text: str) -> str:
    """An IMAP quoted string; only for printable ASCII (see `quotable`)."""
    if not quotable(text):
        raise ValueError("needs a literal")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: Iterable[int]) -> str:
    """Compact sequence set: 1,2,3,7 -> '1:3,7'."""
    out: list[str] = []
    run: list[int] = []
    for uid in sorted(set(uids)):
        if run and uid == run[-1] + 1:
            run.append(uid)
            continue
        if run:
            out.append(_span(run))
        run = [uid]
    if run:
        out.append(_span(run))
    return ",".join(out)


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}:{run[-1]}"


class ParseError(ValueError):
    """The server sent a FETCH response we cannot read."""


FetchValue: TypeAlias = "bytes | str | None | list[FetchValue]"
"""One FETCH item's value: strings and literals are bytes, atoms and numbers str, NIL None."""


class Literal:
    """A literal's octets, kept apart from the response text (`streamed`: handed on in pieces
    as they came, so `data` is empty)."""

    __slots__ = ("data", "streamed")

    def __init__(self, data: bytes, streamed: bool = False) -> None:
        self.data = data
        self.streamed = streamed

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Literal) and (self.data, self.streamed) == (other.data, other.streamed)

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"Literal({len(self.data)} octets{', streamed' if self.streamed else ''})"


class _Atom(str):
    """An atom or number, as opposed to a string value."""


class _Paren(enum.Enum):
    """A list's parenthesis: never to be mistaken for a string "(" or a literal of one octet."""

    OPEN = "("
    CLOSE = ")"


Part: TypeAlias = "bytes | Literal"
"""A piece of one response: its text between literals, or a literal."""
_Lexeme: TypeAlias = "bytes | _Atom | _Paren"


def _tokens(parts: Iterable[Part]) -> Iterator[_Lexeme]:
    for part in parts:
        if isinstance(part, Literal):
            yield part.data
            continue
        yield from _scan(part)


_TOKEN = re.compile(
    rb"""\s*(?:
        (?P<paren>[()])
      | "(?P<quoted>(?:[^"\\]|\\.)*)"
      | (?P<atom>[^\s()"\[\]]+(?:\[[^\]]*\](?:<[0-9]+>)?)?)
    )""",
    re.X,
)
_UNQUOTE = re.compile(rb"\\(.)")


def _scan(text: bytes) -> Iterator[_Lexeme]:
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() != pos:
            break
        pos = m.end()
        if (paren := m.group("paren")) is not None:
            yield _Paren(paren.decode("ascii"))
        elif (quoted := m.group("quoted")) is not None:
            yield _UNQUOTE.sub(rb"\1", quoted)
        else:
            yield _Atom(m.group("atom").decode("ascii", "replace"))
    if text[pos:].strip():
        raise ParseError("unreadable response text")


# Lists nest two levels in what pop2gate fetches (FLAGS); a server nesting deeper is refused.
_MAX_DEPTH = 32
# IMAP numbers are 32-bit unsigned: at most 10 digits.
_MAX_NUMBER = 2**32 - 1


def _nest(tokens: Iterator[_Lexeme], depth: int = 0) -> list[FetchValue]:
    if depth > _MAX_DEPTH:
        raise ParseError("lists nested too deeply")
    out: list[FetchValue] = []
    for tok in tokens:
        if tok is _Paren.OPEN:
            out.append(_nest(tokens, depth + 1))
        elif tok is _Paren.CLOSE:
            return out
        elif isinstance(tok, _Atom) and tok.upper() == "NIL":
            out.append(None)
        else:
            out.append(tok)
    return out


def _number(value: FetchValue) -> int | None:
    """An IMAP number (an atom of digits, 32 bits), else None."""
    if isinstance(value, _Atom) and value.isdigit() and len(value) <= 10 and int(value) <= _MAX_NUMBER:
        return int(value)
    return None


def parse_fetch(parts: Iterable[Part]) -> dict[str, FetchValue]:
    """The item list of one FETCH response (the parts after `* n FETCH`) -> {ITEM: value}.

    Item names are upper case; `BODY[]<0>` is reported as `BODY[]`. Strings
    and literals are bytes, NIL is None, lists are lists, atoms are str.
    """
    toks = _nest(_tokens(parts))
    if len(toks) != 1 or not isinstance(toks[0], list) or len(toks[0]) % 2:
        raise ParseError("bad FETCH item list")
    items: dict[str, FetchValue] = {}
    for key, value in zip(toks[0][::2], toks[0][1::2], strict=True):
        if not isinstance(key, _Atom):
            raise ParseError("bad FETCH item name")
        name = key.upper()
        if name.startswith("BODY[") and "<" in name:
            name = name[: name.index("<")]
        items[name] = value
    return items


def fetch_by_uid(responses: Iterable[Iterable[Part]]) -> dict[int, dict[str, FetchValue]]:
    """The FETCH responses (their item lists) that carry a UID, keyed by UID (later wins)."""
    out: dict[int, dict[str, FetchValue]] = {}
    for parts in responses:
        data = parse_fetch(parts)
        if "UID" not in data:
            continue  # unsolicited, about another message
        uid = _number(data["UID"])
        if uid is None:
            raise ParseError("bad UID")
        out.setdefault(uid, {}).update(data)
    return out


def list_delimiter(line: bytes) -> str | None:
    """The hierarchy delimiter from one `LIST` response line, None for a flat server."""
    toks = _nest(_scan(line))
    if len(toks) < 2 or not isinstance(toks[0], list):
        raise ParseError("bad LIST response")
    delim = toks[1]
    if isinstance(delim, bytes) and len(delim) == 1:
        if delim[0] >= 0x80:
            raise ParseError("hierarchy delimiter is not ASCII")
        return delim.decode("ascii")
    return None


def personal_namespace(data: bytes) -> tuple[str, str | None] | None:
    """(prefix, delimiter) of the first personal namespace in a `NAMESPACE` response
    (RFC 2342), None when the server names none (NIL)."""
    toks = _nest(_scan(data))
    if len(toks) != 3:
        raise ParseError("bad NAMESPACE response")
    personal = toks[0]
    if personal is None:
        return None
    if not isinstance(personal, list) or not personal or not isinstance(personal[0], list):
        raise ParseError("bad NAMESPACE response")
    first = personal[0]
    if len(first) < 2 or not isinstance(first[0], bytes) or not (first[1] is None or isinstance(first[1], bytes)):
        raise ParseError("bad NAMESPACE response")
    prefix, delim = first[0], first[1]
    if not prefix.isascii() or (delim is not None and (len(delim) != 1 or not delim.isascii())):
        raise ParseError("NAMESPACE prefix or delimiter is not ASCII")
    return prefix.decode("ascii"), delim.decode("ascii") if delim else None


_ID_NAME = re.compile(rb'"name"\s+"((?:[^"\\]|\\.)*)"', re.IGNORECASE)


def id_name(answer: bytes) -> str | None:
    """The `name` field of an untagged ID answer (RFC 2971), None when it gives none."""
    m = _ID_NAME.search(answer)
    return _UNQUOTE.sub(rb"\1", m.group(1)).decode("utf-8", "replace") if m else None
