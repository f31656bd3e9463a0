"""UW ipop2d compatibility (setting `server.uw_compat`, off by default).

UW's ipop2d put a `Status:` header line at the end of every message's header
(`R` when seen; `O` for a message that is not recent) and a CRLF after every
message, and counted both in `=c`. Clients written against it may expect that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

BLANK = b"\r\n\r\n"


def status_line(seen: bool) -> bytes:
    return b"Status: " + (b"R" if seen else b" ") + b"O\r\n"


def extra_octets(seen: bool) -> int:
    """What UW mode adds to a non-empty message's count."""
    return len(status_line(seen)) + 2


async def add_status(chunks: AsyncIterator[bytes], seen: bool) -> AsyncIterator[bytes]:
    """Insert the Status line before the header's blank line (or at the end), add a CRLF."""
    status = status_line(seen)
    held = b""
    done = False
    async for chunk in chunks:
        if done:
            yield chunk
            continue
        data = held + chunk
        at = data.find(BLANK)
        if at >= 0:
            done = True
            yield data[: at + 2] + status + data[at + 2 :]
            held = b""
        else:
            keep = len(BLANK) - 1
            held = data[-keep:]
            if data[:-keep]:
                yield data[:-keep]
    if not done:
        yield held + status
    yield b"\r\n"
