"""Per-address limits: login failure penalty and concurrent connections.

A failed login is answered after a delay that doubles with each recent failure
from the same address (capped), as Dovecot's auth penalty does; a success
clears the address's record. State is bounded: old records are dropped.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from ..config import Limits

MAX_TRACKED = 100_000


class Throttle:
    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}
        self.connections: Counter[str] = Counter()

    def _recent(self, host: str) -> int:
        count, last = self._failures.get(host, (0, 0.0))
        if count and self.clock() - last > self.limits.login_failure_window:
            del self._failures[host]
            return 0
        return count

    def failure_delay(self, host: str) -> float:
        """Record a failed login from `host`; return how long to wait before answering."""
        count = self._recent(host) + 1
        if len(self._failures) >= MAX_TRACKED:
            self._prune()
        self._failures[host] = (count, self.clock())
        delay: float = self.limits.bad_login_delay * 2 ** min(count - 1, 16)
        return min(delay, max(self.limits.bad_login_max_delay, self.limits.bad_login_delay))

    def succeeded(self, host: str) -> None:
        self._failures.pop(host, None)

    def _prune(self) -> None:
        now = self.clock()
        for host, (_, last) in list(self._failures.items()):
            if now - last > self.limits.login_failure_window:
                del self._failures[host]
        while len(self._failures) >= MAX_TRACKED:
            self._failures.pop(next(iter(self._failures)))

    def admit(self, host: str) -> bool:
        """Count a new connection from `host`, unless it already has too many."""
        if self.connections[host] >= self.limits.max_connections_per_address:
            return False
        self.connections[host] += 1
        return True

    def release(self, host: str) -> None:
        self.connections[host] -= 1
        if self.connections[host] <= 0:
            del self.connections[host]
