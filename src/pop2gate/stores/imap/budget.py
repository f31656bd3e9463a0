"""The cap on message octets the IMAP stores read from their backends at once."""

from __future__ import annotations

import asyncio


class ByteBudget:
    """Caps the message bytes being read from the backends at once by all sessions of the
    IMAP stores (`imap_fetch_memory`).

    A request larger than the whole budget is taken as the whole budget, so it waits
    for every other holder rather than forever.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.held = 0  # of `used`: read ahead, waiting in sessions to be sent
        self._waiters: list[asyncio.Future[None]] = []

    async def acquire(self, n: int, timeout: float) -> None:
        """Take `n` octets; TimeoutError, taking nothing, if there is no room within `timeout` s."""
        n = min(n, self.limit)
        async with asyncio.timeout(timeout):
            while self.used + n > self.limit:
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                try:
                    await fut
                finally:
                    if fut in self._waiters:
                        self._waiters.remove(fut)
        self.used += n

    def try_hold(self, n: int) -> bool:
        """Take `n` octets for read-ahead when there is room now, never waiting. Read-ahead
        may hold at most half the budget, so reads a client is waiting for always have room."""
        if self.used + n > self.limit or self.held + n > self.limit // 2:
            return False
        self.used += n
        self.held += n
        return True

    def unhold(self, n: int) -> None:
        """Give back octets taken by `try_hold`."""
        self.held -= n
        self.release(n)

    def release(self, n: int) -> None:
        self.used -= min(n, self.limit)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
