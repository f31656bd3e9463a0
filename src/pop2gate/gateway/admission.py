"""Who gets a session slot when the server is busy (no I/O).

Two caps: all sessions (`max_connections`) and sessions that have not logged in
(`max_prelogin_connections`). When a new connection would pass either, the oldest session
that can give way does: first one waiting out a failed login's delay; then one waiting for HELO:
one from an address that failed a login recently, else one idle (nothing sent for
`greeting_grace` after connecting), else the oldest of the rest (its HELO has arrived, or it
has not had the time to send it); a login under way last. A logged-in session never gives
way. A user's logged-in sessions are capped (`max_sessions_per_user`), and so are the logins
one address has under way at once (`max_logins_per_address`); the addresses that failed a
login recently have one login under way at a time between them, so a flood of failing logins
from many addresses cannot queue ahead of a real user's password check, nor take more than
one password-check worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable

from ..config import Limits


class Stage(enum.Enum):
    GREETED = "greeted"  # waiting for HELO
    LOGIN = "login"  # the store is checking the credentials
    DELAY = "delay"  # a failed login's delay, before `- Bad login`
    IN = "in"  # logged in


_FAILING_ADDRESSES = object()  # the one login turn that addresses with a recent failure share

# What a session waiting for HELO has at stake, least first.
FAILING = 0  # its address failed a login recently
IDLE = 1  # its client has sent nothing for `greeting_grace` since it connected
WAITING = 2  # its HELO has arrived (unread, or waiting its turn), or it is new


def _never(_: Hashable) -> bool:
    return False


class Admission:
    """Session slots; within each stage, in the order sessions entered it.

    `rank(session)` says what a session waiting for HELO has at stake (the I/O edge knows):
    FAILING, IDLE or WAITING; the lowest gives way first, the oldest first within a rank.
    `failing(address)` says whether an address failed a login recently (the throttle knows).
    A call looks at most once at each session waiting for HELO; the rest is O(1).
    """

    def __init__(self, limits: Limits, rank: Callable[[Hashable], int] = lambda _: WAITING,
                 failing: Callable[[Hashable], bool] = _never) -> None:
        self.limits = limits
        self.rank = rank
        self.failing = failing
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
        """A failed login's delay first; then one waiting for HELO, the oldest of the lowest
        rank; a login under way last (a store's login survives its session's end without
        leaving a backend connection open)."""
        if self._by_stage[Stage.DELAY]:
            return next(iter(self._by_stage[Stage.DELAY]))
        best: tuple[int, Hashable] | None = None
        for session in self._by_stage[Stage.GREETED]:
            rank = self.rank(session)
            if rank == FAILING:
                return session
            if best is None or rank < best[0]:
                best = (rank, session)
        if best is not None:
            return best[1]
        return next(iter(self._by_stage[Stage.LOGIN]), None)

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
        """Wait until `address` has fewer than `max_logins_per_address` logins under way; an
        address that failed a login recently waits until no such address has one under way."""
        allowance = self.limits.max_logins_per_address
        if self.failing(address):
            address, allowance = _FAILING_ADDRESSES, 1
        turns, users = self._turns.get(address) or (asyncio.Semaphore(allowance), 0)
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
