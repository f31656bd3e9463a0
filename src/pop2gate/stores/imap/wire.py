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


FetchPiece: TypeAlias = "bytes | tuple[bytes, bytes]"
"""What imaplib keeps of a FETCH response: a text line, or the text before a literal with the literal."""

FetchValue: TypeAlias = "bytes | str | None | list[FetchValue]"
"""One FETCH item's value: strings and literals are bytes, atoms and numbers str, NIL None."""


class _Lit:
    """A literal's octets, kept apart from the response text."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Atom(str):
    """An atom or number, as opposed to a string value."""


class _Paren(enum.Enum):
    """A list's parenthesis: never to be mistaken for a string "(" or a literal of one octet."""

    OPEN = "("
    CLOSE = ")"


_Part: TypeAlias = "bytes | _Lit"
_Lexeme: TypeAlias = "bytes | _Atom | _Paren"


def group_responses(items: Iterable[FetchPiece | None]) -> list[list[_Part]]:
    """Join imaplib's FETCH pieces into one part list per response.

    imaplib gives `(text, literal)` tuples and text lines; a piece whose text
    does not start with a digit continues the previous response.
    """
    responses: list[list[_Part]] = []
    for item in items:
        if item is None:
            continue
        text, lit = (item[0], item[1]) if isinstance(item, tuple) else (item, None)
        if not isinstance(text, bytes):
            raise ParseError("unexpected response piece")
        if text[:1].isdigit() or not responses:
            responses.append([])
        parts = responses[-1]
        if lit is None:
            parts.append(text)
        else:
            # The text before a literal ends with its `{n}` marker.
            marker = text.rfind(b"{")
            if marker < 0:
                raise ParseError("literal without its {n} marker")
            parts.append(text[:marker])
            parts.append(_Lit(lit))
    return responses


def _tokens(parts: list[_Part]) -> Iterator[_Lexeme]:
    for part in parts:
        if isinstance(part, _Lit):
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


def parse_fetch(parts: list[_Part]) -> tuple[int, dict[str, FetchValue]]:
    """One FETCH response -> (sequence number, {ITEM: value}).

    Item names are upper case; `BODY[]<0>` is reported as `BODY[]`. Strings
    and literals are bytes, NIL is None, lists are lists, atoms are str.
    """
    toks = _nest(_tokens(parts))
    seq = _number(toks[0]) if toks else None
    if len(toks) < 2 or seq is None:
        raise ParseError("not a FETCH response")
    body = toks[1]
    if not isinstance(body, list) or len(body) % 2:
        raise ParseError("bad FETCH item list")
    items: dict[str, FetchValue] = {}
    for key, value in zip(body[::2], body[1::2], strict=True):
        if not isinstance(key, _Atom):
            raise ParseError("bad FETCH item name")
        name = key.upper()
        if name.startswith("BODY[") and "<" in name:
            name = name[: name.index("<")]
        items[name] = value
    return seq, items


def fetch_by_uid(items: Iterable[FetchPiece | None]) -> dict[int, dict[str, FetchValue]]:
    """All FETCH responses that carry a UID, keyed by UID (later wins)."""
    out: dict[int, dict[str, FetchValue]] = {}
    for parts in group_responses(items):
        _, data = parse_fetch(parts)
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
