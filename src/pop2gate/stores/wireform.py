"""RFC 822 wire form for stored messages: bare LF becomes CRLF, the last line gets its end."""

from __future__ import annotations


class CrlfEncoder:
    """Streaming converter: feed chunks in order, then call finish once."""

    def __init__(self) -> None:
        self._held = b""
        self._last = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk if self._held else chunk
        self._held = b""
        if data.endswith(b"\r"):
            data, self._held = data[:-1], b"\r"
        out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if out:
            self._last = out[-1:]
        return out

    def finish(self) -> bytes:
        out = self._held
        last = out[-1:] or self._last
        if last and last != b"\n":
            out += b"\r\n"
        return out


def wire_size_of(chunks) -> int:
    """Octets the encoder produces for `chunks` (an iterable of bytes)."""
    enc = CrlfEncoder()
    return sum(len(enc.feed(c)) for c in chunks) + len(enc.finish())
