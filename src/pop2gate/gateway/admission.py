"""Who gets a session slot when the server is busy (no I/O).

Two caps: all sessions (`max_connections`) and sessions that have not logged in
(`max_prelogin_connections`). When a new connection would pass either, the oldest session
that can give way does: first one waiting out a failed login's delay, then one that has not
sent HELO, then one whose login is under way. A logged-in session never gives way. A user's
logged-in sessions are capped (`max_sessions_per_user`), and so are the logins one address
has under way at once (`max_logins_per_address`), so a flood of failing logins from a few
addresses cannot queue ahead of everyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable

from ..config import Limits


class Stage(enum.Enum):
    GREETED = "greeted"  # waiting for HELO
    LOGIN = "login"  # the store is checking the credentials
    DELAY = "delay"  # a failed login's delay, before `- Bad login`
    IN = "in"  # logged in


# who gives way, in this order; a login under way last (a store's login survives its
# session's end without leaving a backend connection open)
_SHEDDABLE = (Stage.DELAY, Stage.GREETED, Stage.LOGIN)


class Admission:
    """Session slots; within each stage, in the order sessions entered it. O(1) per call."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._stage: dict[Hashable, Stage] = {}
        self._by_stage: dict[Stage, OrderedDict[Hashable, None]] = {s: OrderedDict() for s in Stage}
        self._users: dict[Hashable, Hashable] = {}  # logged-in session -> its user
        self._per_user: dict[Hashable, int] = {}
        self._turns: dict[Hashable, tuple[asyncio.Semaphore, int]] = {}  # address -> (turns, users)

    @property
    def sessions(self) -> int:
        return len(self._stage)

    @property
    def prelogin(self) -> int:
        return self.sessions - len(self._by_stage[Stage.IN])

    def admit(self, session: Hashable) -> list[Hashable] | None:
        """Take `session` in; returns the sessions that must give way for it (oldest first),
        or None when it cannot come in (every slot is held by sessions that stay)."""
        victims: list[Hashable] = []
        full = self.sessions >= self.limits.max_connections
        crowded = self.prelogin >= self.limits.max_prelogin_connections
        if full or crowded:
            victim = self._oldest_sheddable()
            if victim is None:
                return None
            victims.append(victim)
            self.leave(victim)
        self._move(session, Stage.GREETED)
        return victims

    def _oldest_sheddable(self) -> Hashable | None:
        for stage in _SHEDDABLE:
            if self._by_stage[stage]:
                return next(iter(self._by_stage[stage]))
        return None

    def _move(self, session: Hashable, stage: Stage) -> None:
        old = self._stage.get(session)
        if old is not None:
            del self._by_stage[old][session]
        self._stage[session] = stage
        self._by_stage[stage][session] = None

    def stage(self, session: Hashable, stage: Stage) -> None:
        """`session` moved on (no effect once it has left or given way)."""
        if session in self._stage:
            self._move(session, stage)

    def log_in(self, session: Hashable, user: Hashable) -> bool:
        """Count `session` as logged in as `user`; False when that user has too many sessions."""
        if session not in self._stage:
            return False  # it gave way meanwhile
        if self._per_user.get(user, 0) >= self.limits.max_sessions_per_user:
            return False
        self._per_user[user] = self._per_user.get(user, 0) + 1
        self._users[session] = user
        self._move(session, Stage.IN)
        return True

    def leave(self, session: Hashable) -> None:
        stage = self._stage.pop(session, None)
        if stage is not None:
            del self._by_stage[stage][session]
        user = self._users.pop(session, None)
        if user is not None:
            self._per_user[user] -= 1
            if not self._per_user[user]:
                del self._per_user[user]

    @contextlib.asynccontextmanager
    async def login_turn(self, address: Hashable) -> AsyncIterator[None]:
        """Wait until `address` has fewer than `max_logins_per_address` logins under way."""
        turns, users = self._turns.get(address) or (asyncio.Semaphore(self.limits.max_logins_per_address), 0)
        self._turns[address] = (turns, users + 1)
        try:
            async with turns:
                yield
        finally:
            turns, users = self._turns[address]
            if users == 1:
                del self._turns[address]
            else:
                self._turns[address] = (turns, users - 1)
