"""The cap on message octets being read (pop2gate.stores.imap.budget): alone, in the IMAP store's
fetch, and shared by IMAP backends."""

from __future__ import annotations

import asyncio
import time

import pytest

from pop2gate.config import Limits, parse_config
from pop2gate.stores import open_stores
from pop2gate.stores.base import MessageRef, StoreError
from pop2gate.stores.imap import ByteBudget, ImapBackend, ImapMailbox, ImapStore


async def test_acquire_waits_for_room():
    budget = ByteBudget(100)
    await budget.acquire(60, 1)
    waiter = asyncio.create_task(budget.acquire(50, 1))
    await asyncio.sleep(0.01)
    assert not waiter.done() and budget.used == 60
    budget.release(60)
    await asyncio.wait_for(waiter, 1)
    assert budget.used == 50


async def test_a_request_over_the_limit_takes_the_whole_budget():
    budget = ByteBudget(100)
    await budget.acquire(1000, 1)  # waits for nobody: it is alone
    assert budget.used == 100
    other = asyncio.create_task(budget.acquire(1, 1))
    await asyncio.sleep(0.01)
    assert not other.done()
    budget.release(1000)
    await asyncio.wait_for(other, 1)
    assert budget.used == 1


async def test_every_waiter_wakes_and_rechecks():
    budget = ByteBudget(10)
    await budget.acquire(10, 1)
    waiters = [asyncio.create_task(budget.acquire(5, 1)) for _ in range(3)]
    await asyncio.sleep(0.01)
    budget.release(10)
    await asyncio.sleep(0.01)
    assert sum(w.done() for w in waiters) == 2 and budget.used == 10  # two fit, the third waits
    budget.release(5)
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert budget.used == 10


async def test_a_cancelled_waiter_leaves_no_trace():
    budget = ByteBudget(10)
    await budget.acquire(10, 1)
    waiter = asyncio.create_task(budget.acquire(5, 1))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.sleep(0.01)
    assert budget._waiters == [] and budget.used == 10


async def test_acquire_gives_up_after_its_timeout():
    budget = ByteBudget(10)
    await budget.acquire(8, 1)
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        await budget.acquire(5, 0.05)
    assert 0.05 <= time.monotonic() - t < 1
    assert budget._waiters == [] and budget.used == 8  # nothing taken, nothing left waiting
    await budget.acquire(2, 0.05)  # what fits is still granted at once
    assert budget.used == 10


async def test_a_woken_waiter_that_times_out_takes_nothing():
    budget = ByteBudget(10)
    await budget.acquire(10, 1)
    waiter = asyncio.create_task(budget.acquire(8, 0.2))
    await asyncio.sleep(0.01)
    budget.release(5)  # wakes it, but 8 do not fit in the 5 free
    with pytest.raises(TimeoutError):
        await waiter
    assert budget.used == 5 and budget._waiters == []


async def test_imap_backends_share_one_memory_budget():
    config = parse_config({
        "backend": [
            {"name": "a", "type": "imap", "url": "imaps://127.0.0.1"},
            {"name": "b", "type": "imap", "url": "imaps://127.0.0.1:1993"},
            {"name": "m", "type": "maildir", "path": "/nonexistent", "users_file": "/nonexistent/users"},
        ],
        "routing": {"default": "a"},
        "limits": {"imap_fetch_memory": 5 << 20},
    })
    stores, others = open_stores(config), open_stores(config)
    try:
        a, b, again = stores["a"], stores["b"], others["a"]
        assert isinstance(a, ImapStore) and isinstance(b, ImapStore) and isinstance(again, ImapStore)
        assert a.budget is b.budget
        assert a.budget.limit == 5 << 20
        assert again.budget is not a.budget  # one budget per set of stores
    finally:
        for store in [*stores.values(), *others.values()]:
            await store.aclose()


class FakeConn:
    """Serves one message as an IMAP connection's `fetch_tail` and `stream` would (unit tests only)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.gone: set[int] = set()  # nobody else expunges here
        self.checked_at = 0.0

    def check_age(self) -> float:
        return 0.0

    async def noop(self) -> None:
        pass

    async def fetch_tail(self, uid: int, size: int) -> bytes:
        return self.data[size - min(size, 2) : size]

    async def stream(self, uid, size, chunk, acquire, release):
        for offset in range(0, size, chunk):
            for at in range(offset, min(offset + chunk, size), 1000):  # pieces as a socket gives them
                n = min(1000, offset + chunk - at)
                await acquire(n)
                data = self.data[at : at + n]
                release(n)
                yield data


def fake_mailbox(data: bytes, **limits) -> ImapMailbox:
    backend = ImapBackend(name="fake", type="imap", url="imap://127.0.0.1:1", tls="none")
    store = ImapStore(backend, Limits(**limits))
    box = ImapMailbox(store, FakeConn(data), "alice")  # type: ignore[arg-type]
    box.sizes = {1: len(data)}
    return box


@pytest.mark.parametrize("size", [3000, 20_000])  # fetched whole, and in partial fetches
async def test_fetched_octets_leave_the_budget_before_the_session_gets_them(size):
    data = b"Subject: x\r\n\r\n" + b"y" * (size - 16) + b"\r\n"
    box = fake_mailbox(data, imap_fetch_chunk=4096, imap_fetch_memory=8192, retr_chunk_size=1024)
    try:
        got = bytearray()
        async for piece in box.fetch(MessageRef("1", len(data), False)):
            assert box.store.budget.used == 0  # a client that stops reading here holds no budget
            got += piece
        assert bytes(got) == data
    finally:
        await box.store.aclose()


async def test_no_room_within_the_timeout_fails_the_fetch(caplog):
    data = b"Subject: x\r\n\r\nbody\r\n"
    box = fake_mailbox(data, imap_fetch_chunk=4096, imap_fetch_memory=4096, imap_budget_timeout=0.05)
    try:
        await box.store.budget.acquire(4096, 1)  # others hold it all
        with pytest.raises(StoreError, match="imap_fetch_memory"):
            async for _ in box.fetch(MessageRef("1", len(data), False)):
                pass
        lines = [r for r in caplog.records if "imap_budget_timeout" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelname == "WARNING"
        assert box.store.budget.used == 4096  # the failed fetch took nothing
    finally:
        await box.store.aclose()
