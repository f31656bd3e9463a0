"""The cap on message octets the IMAP stores hold in memory at once."""

from __future__ import annotations

import asyncio


class ByteBudget:
    """Caps the message bytes held in memory at once by all sessions of the IMAP stores.

    A request larger than the whole budget is taken as the whole budget, so it waits
    for every other holder rather than forever.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def acquire(self, n: int) -> None:
        n = min(n, self.limit)
        while self.used + n > self.limit:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)
        self.used += n

    def release(self, n: int) -> None:
        self.used -= min(n, self.limit)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
