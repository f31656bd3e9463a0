"""Stored octets -> the octets RETR sends: one step, the same for every store.

1. Line ends. A store that keeps bare LF line ends (Maildir) has each become CRLF
   (`CrlfEncoder`); a store whose octets are already in network form (IMAP) passes
   them unchanged (`LineEnder`).
2. The last line gets its CRLF: a message that does not end in CRLF gets one. An
   empty message stays empty.
3. UW ipop2d compatibility (setting `server.uw_compat`, off by default): UW's ipop2d
   put a `Status:` header line at the end of every message's header (`R` when seen;
   `O` for a message that is not recent) and a CRLF after every message, and
   counted both in `=c`. Clients written against it may expect that (`UwStatus`).

A store streams with a `WireEncoder` from its `WireForm` and counts with
`WireForm.size`, so the count and the octets cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CRLF = b"\r\n"
BLANK = b"\r\n\r\n"  # where a header ends


def line_end(tail: bytes) -> bytes:
    """What a message in network form ending in `tail` still needs: CRLF unless it ends in
    one; nothing for an empty message."""
    return b"" if not tail or tail.endswith(CRLF) else CRLF


def ended_size(size: int, tail: bytes) -> int:
    """Octets of a message in network form, `size` octets ending in `tail`, once its last line
    is ended (IMAP: RFC822.SIZE and the last two octets)."""
    if size == 0:
        return 0
    return size + len(line_end(tail[-size:]))  # octets beyond the message cannot end it


def crlf(data: bytes) -> bytes:
    """Every bare LF of `data` made CRLF; octets already in that form are returned as they are."""
    lf = data.count(b"\n")
    if not lf:
        return data
    pairs = data.count(b"\r\n")
    if pairs == lf:
        return data  # network form already: no copy
    if not pairs:
        return data.replace(b"\n", b"\r\n")
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class CrlfEncoder:
    """Bare LF -> CRLF, streaming; the last line ended. Feed chunks in order, then call finish once."""

    def __init__(self) -> None:
        self._held = b""
        self._tail = b""  # the last two octets given out

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk if self._held else chunk
        self._held = b""
        if data.endswith(b"\r"):
            data, self._held = data[:-1], b"\r"  # a CR whose LF may come in the next chunk
        out = crlf(data)
        self._tail = (self._tail + out[-2:])[-2:]  # never a copy of the whole chunk
        return out

    def finish(self) -> bytes:
        out = self._held
        return out + line_end((self._tail + out)[-2:])


class LineEnder:
    """Octets already in network form pass unchanged; the last line ended."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        self._tail = (self._tail + chunk[-2:])[-2:]
        return chunk

    def finish(self) -> bytes:
        return line_end(self._tail)


def status_line(seen: bool) -> bytes:
    """UW's Status header line."""
    return b"Status: " + (b"R" if seen else b" ") + b"O\r\n"


def uw_extra(seen: bool) -> int:
    """What UW's form adds to a non-empty message: the Status line and the trailing CRLF."""
    return len(status_line(seen)) + len(CRLF)


class UwStatus:
    """UW's form of a message in wire form, streaming: the Status line before the header's
    blank line (or at the end when there is none), then a CRLF."""

    def __init__(self, seen: bool) -> None:
        self._status = status_line(seen)
        self._held = b""  # octets that may be the start of the blank line
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        if self._done:
            return chunk
        data = self._held + chunk
        at = data.find(BLANK)
        if at >= 0:
            self._done = True
            self._held = b""
            return data[: at + 2] + self._status + data[at + 2 :]
        keep = len(BLANK) - 1
        self._held = data[-keep:]
        return data[:-keep]

    def finish(self) -> bytes:
        out = b"" if self._done else self._held + self._status
        return out + CRLF


class WireEncoder:
    """One message's stored octets in, its wire octets out: feed chunks in order, then finish once."""

    def __init__(self, *, bare_lf: bool, uw_seen: bool | None = None) -> None:
        """`bare_lf`: the store keeps LF line ends (Maildir), else network form (IMAP).
        `uw_seen`: None, or UW's form for a message seen (True) or not (False)."""
        self._lines: CrlfEncoder | LineEnder = CrlfEncoder() if bare_lf else LineEnder()
        self._uw = None if uw_seen is None else UwStatus(uw_seen)
        self._empty = True

    def feed(self, chunk: bytes) -> bytes:
        return self._extra(self._lines.feed(chunk))

    def finish(self) -> bytes:
        out = self._extra(self._lines.finish())
        if self._uw is None or self._empty:
            return out  # an empty message stays empty, in UW's form too
        return out + self._uw.finish()

    def _extra(self, out: bytes) -> bytes:
        if out:
            self._empty = False
        return out if self._uw is None else self._uw.feed(out)


def wire_size_of(chunks: Iterable[bytes]) -> int:
    """Octets a message with LF line ends, stored as `chunks`, has in wire form (UW's extra apart):
    what `CrlfEncoder` gives out, counted without making it. Each bare LF gains a CR; a last
    line that does not end in LF gains a CRLF."""
    size = 0
    last = b""  # the last octet counted
    for chunk in chunks:
        if not chunk:
            continue
        size += len(chunk) + chunk.count(b"\n") - chunk.count(b"\r\n")
        if last == b"\r" and chunk[:1] == b"\n":
            size -= 1  # a CRLF split between two chunks: that LF was not bare
        last = chunk[-1:]
    if not size:
        return 0
    return size if last == b"\n" else size + len(CRLF)


@dataclass(frozen=True)
class WireForm:
    """What a store sends for its messages; a store builds one from `server.uw_compat`."""

    uw_compat: bool = False

    def encoder(self, seen: bool, *, bare_lf: bool) -> WireEncoder:
        """The encoder for one message (`seen`: the message's flag in the folder snapshot)."""
        return WireEncoder(bare_lf=bare_lf, uw_seen=seen if self.uw_compat else None)

    def size(self, ended: int, seen: bool) -> int:
        """Octets RETR sends for a message of `ended` octets with its last line ended."""
        return ended + uw_extra(seen) if ended and self.uw_compat else ended
