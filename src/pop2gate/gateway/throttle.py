"""Login failure penalty and concurrent connections, per client address.

A failed login is answered after a delay that doubles with each recent failure,
counted both for the client's address and for the user name it tried (the larger
delay applies, capped), as Dovecot's auth penalty does per address. A success
clears only that user's failures from that address. Past a global failure rate
every failure waits the cap. An address is an IPv4 address, or an IPv6 address
cut to a prefix (IPv4-mapped IPv6 is IPv4). Each table is bounded and kept in
time order, so a failure costs the same however many addresses are tracked.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, NamedTuple, TypeVar

from ..config import Limits

K = TypeVar("K", bound=Hashable)
_EXPIRE_PER_CALL = 4  # more than the one entry a failure adds, so forgotten ones go


class _Entry(NamedTuple):
    failures: int
    last: float  # time of the latest failure
    first: int  # serial of the failure that created the entry


class _Failures(Generic[K]):
    """Recent failure counts, oldest first; a key is forgotten `window` after its last failure."""

    def __init__(self, window: float, bound: int) -> None:
        self.window = window
        self.bound = bound
        self._entries: OrderedDict[K, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def expire(self, now: float) -> None:
        """Drop a few of the oldest entries if forgotten: a bounded amount of work per call."""
        entries = self._entries
        for _ in range(_EXPIRE_PER_CALL):
            if not entries or self._recent(next(iter(entries.values())), now):
                return
            entries.popitem(last=False)

    def _recent(self, entry: _Entry, now: float) -> bool:
        return now - entry.last <= self.window

    def add(self, key: K, now: float, serial: int) -> _Entry:
        """Count failure number `serial` for `key`; return the entry."""
        old = self._entries.pop(key, None)
        if old is not None and self._recent(old, now):
            entry = _Entry(old.failures + 1, now, old.first)
        else:
            entry = _Entry(1, now, serial)
        self._entries[key] = entry
        while len(self._entries) > self.bound:
            self._entries.popitem(last=False)
        return entry

    def recent(self, key: K, now: float) -> bool:
        """Whether `key` has a failure within the window."""
        entry = self._entries.get(key)
        return entry is not None and self._recent(entry, now)

    def pop(self, key: K, now: float) -> _Entry | None:
        entry = self._entries.pop(key, None)
        return entry if entry is not None and self._recent(entry, now) else None

    def subtract(self, key: K, count: int, since: int) -> None:
        """Take off `key` `count` failures counted from failure `since` on.

        Nothing is taken from an entry created after `since`: that is a newer
        record of the key, which those failures are not part of.
        """
        entry = self._entries.get(key)
        if entry is None or entry.first > since:
            return
        if entry.failures > count:
            self._entries[key] = entry._replace(failures=entry.failures - count)  # keeps its place
        else:
            del self._entries[key]


def _address_key(host: str, ipv6_prefix: int) -> str:
    try:
        addr = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host  # "stdio", or a name: its own key
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        shift = 128 - ipv6_prefix
        return str(ipaddress.IPv6Network((int(addr) >> shift << shift, ipv6_prefix)))
    return str(addr)


class Throttle:
    """The login penalty and connection count that every session of a gateway shares."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        window, bound = limits.login_failure_window, limits.max_tracked_addresses
        self._addresses: _Failures[str] = _Failures(window, bound)
        self._users: _Failures[str] = _Failures(window, bound)
        # Per (address, user): what a success of that user from that address takes off.
        self._pairs: _Failures[tuple[str, str]] = _Failures(window, bound)
        self._last_second: deque[float] = deque(maxlen=limits.max_login_failures_per_second)
        self._serial = 0  # numbers the failures
        self.connections: Counter[str] = Counter()

    def address_key(self, host: str) -> str:
        """The address `host` is counted as: IPv4, IPv6 cut to `ipv6_prefix`, else `host`."""
        return _address_key(host, self.limits.ipv6_prefix)

    def _expire(self, now: float) -> None:
        for table in (self._addresses, self._users, self._pairs):
            table.expire(now)

    def failure_delay(self, host: str, user: str) -> float:
        """Record a failed login of `user` from `host`; return how long to wait before answering."""
        now = self.clock()
        self._expire(now)
        address = self.address_key(host)
        self._serial += 1
        by_address = self._addresses.add(address, now, self._serial)
        by_user = self._users.add(user, now, self._serial)
        self._pairs.add((address, user), now, self._serial)
        count = max(by_address.failures, by_user.failures)
        cap = max(self.limits.bad_login_max_delay, self.limits.bad_login_delay)
        recent = self._last_second
        surge = len(recent) == recent.maxlen and now - recent[0] < 1
        recent.append(now)
        if surge:
            return cap
        delay: float = self.limits.bad_login_delay * 2 ** min(count - 1, 16)
        return min(delay, cap)

    def penalized(self, address: str) -> bool:
        """Whether `address` (a host, or its `address_key`) has failed a login recently."""
        return self._addresses.recent(self.address_key(address), self.clock())

    def succeeded(self, host: str, user: str) -> None:
        """Forget `user`'s recent failures from `host`, and only those."""
        now = self.clock()
        self._expire(now)
        address = self.address_key(host)
        pair = self._pairs.pop((address, user), now)
        if pair is not None:
            self._addresses.subtract(address, pair.failures, pair.first)
            self._users.subtract(user, pair.failures, pair.first)

    def admit(self, host: str) -> bool:
        """Count a new connection from `host`, unless its address already has too many."""
        address = self.address_key(host)
        if self.connections[address] >= self.limits.max_connections_per_address:
            return False
        self.connections[address] += 1
        return True

    def release(self, host: str) -> None:
        address = self.address_key(host)
        self.connections[address] -= 1
        if self.connections[address] <= 0:
            del self.connections[address]
