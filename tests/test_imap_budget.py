"""The cap on message octets in memory (pop2gate.stores.imap.budget), alone and shared by IMAP backends."""

from __future__ import annotations

import asyncio

from pop2gate.config import parse_config
from pop2gate.stores import open_stores
from pop2gate.stores.imap import ByteBudget, ImapStore


async def test_acquire_waits_for_room():
    budget = ByteBudget(100)
    await budget.acquire(60)
    waiter = asyncio.create_task(budget.acquire(50))
    await asyncio.sleep(0.01)
    assert not waiter.done() and budget.used == 60
    budget.release(60)
    await asyncio.wait_for(waiter, 1)
    assert budget.used == 50


async def test_a_request_over_the_limit_takes_the_whole_budget():
    budget = ByteBudget(100)
    await budget.acquire(1000)  # waits for nobody: it is alone
    assert budget.used == 100
    other = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0.01)
    assert not other.done()
    budget.release(1000)
    await asyncio.wait_for(other, 1)
    assert budget.used == 1


async def test_every_waiter_wakes_and_rechecks():
    budget = ByteBudget(10)
    await budget.acquire(10)
    waiters = [asyncio.create_task(budget.acquire(5)) for _ in range(3)]
    await asyncio.sleep(0.01)
    budget.release(10)
    await asyncio.sleep(0.01)
    assert sum(w.done() for w in waiters) == 2 and budget.used == 10  # two fit, the third waits
    budget.release(5)
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert budget.used == 10


async def test_a_cancelled_waiter_leaves_no_trace():
    budget = ByteBudget(10)
    await budget.acquire(10)
    waiter = asyncio.create_task(budget.acquire(5))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.sleep(0.01)
    assert budget._waiters == [] and budget.used == 10


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
