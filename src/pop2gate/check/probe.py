"""The network side, and the only I/O: connect, read one greeting line, say goodbye politely.

Nothing but QUIT (POP) or LOGOUT (IMAP) is ever sent: no login, no password.
"""

from __future__ import annotations

import asyncio

from ..pop2.wire import MAX_LINE
from .targets import expand
from .verdicts import Row, polite_close, row_for_greeting, show, sort_rows


async def read_greeting(reader: asyncio.StreamReader, buf: bytearray) -> bool:
    """Read into `buf` up to one line, at most MAX_LINE octets; True if it was longer.

    `buf` keeps what arrived even when the caller's timeout cuts the read short.
    """
    while len(buf) < MAX_LINE:
        chunk = await reader.read(MAX_LINE - len(buf))
        if not chunk:
            return False
        buf += chunk
        end = buf.find(b"\n")
        if end >= 0:
            del buf[end + 1:]
            return False
    return True


async def probe(host: str, port: int, timeout: float) -> Row:
    """Connect, read the greeting, say goodbye politely; all within `timeout` seconds."""
    writer = None
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except ConnectionRefusedError:
                return Row(host, port, "closed", advice="connection refused: no service")
            except TimeoutError:
                return Row(host, port, "timeout", advice="no answer (connect timed out): no service seen")
            except OSError as e:
                return Row(host, port, "closed", advice=f"cannot connect ({e.strerror or e}): no service")
            overlong = await read_greeting(reader, buf)
    except TimeoutError:
        if writer is None:
            return Row(host, port, "timeout", advice=f"no answer within {timeout:g} s: no service seen")
        await _close(writer)
        partial = f" (partial: {show(bytes(buf))})" if buf else ""
        return Row(host, port, "timeout",
                   advice=f"port open but no greeting within {timeout:g} s{partial}: no service seen")
    except OSError as e:
        if writer is not None:
            await _close(writer)
        row = row_for_greeting(host, port, bytes(buf), False)
        row.advice = f"connection failed while reading the greeting ({e.strerror or e}); {row.advice}"
        return row
    raw = bytes(buf)
    goodbye = polite_close(raw)
    if goodbye:
        try:
            writer.write(goodbye)
            await asyncio.wait_for(writer.drain(), timeout=1.0)
        except (OSError, TimeoutError):
            pass
    await _close(writer)
    return row_for_greeting(host, port, raw, overlong)


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
    except (OSError, TimeoutError):
        pass


async def run_checks(pairs: list[tuple[str, int]], timeout: float,
                     concurrency: int) -> list[Row]:
    """Probe every (host, port), at most `concurrency` at once; rows in input order."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(host: str, port: int) -> Row:
        async with gate:
            return await probe(host, port, timeout)

    return list(await asyncio.gather(*(one(h, p) for h, p in pairs)))


def check(targets: list[str], ports: list[int], timeout: float = 5.0,
          concurrency: int = 32) -> list[Row]:
    """Probe and judge; rows sorted vulnerable first. Raises TargetError on bad targets."""
    pairs = expand(targets, ports)
    return sort_rows(asyncio.run(run_checks(pairs, timeout, concurrency)))
