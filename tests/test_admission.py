"""Who gets a session slot (pop2gate.gateway.admission), without sockets."""

from __future__ import annotations

import asyncio

from pop2gate.config import Limits
from pop2gate.gateway.admission import FAILING, IDLE, WAITING, Admission, Stage


def make(**limits: int) -> Admission:
    return Admission(Limits(**limits))


def test_below_the_caps_nobody_gives_way():
    a = make(max_connections=3, max_prelogin_connections=3)
    assert [a.admit(n) for n in "xyz"] == [[], [], []]
    assert a.sessions == 3 and a.prelogin == 3


def test_full_sheds_delay_then_greeted_then_login_oldest_first_never_logged_in():
    a = make(max_connections=4, max_prelogin_connections=4)
    for n in "abcd":
        a.admit(n)
    a.stage("a", Stage.LOGIN)
    assert a.log_in("b", "bob")
    a.stage("d", Stage.DELAY)
    assert a.admit("e") == ["d"]  # a failed login's delay goes first
    assert a.admit("f") == ["c"]  # then the oldest that has not sent HELO
    assert a.admit("g") == ["e"]
    assert a.admit("h") == ["f"]
    assert a.admit("i") == ["g"]
    a.stage("h", Stage.IN)  # (not counted as a user's session: stage alone)
    a.stage("i", Stage.IN)
    assert a.admit("j") == ["a"]  # a login under way goes last
    a.stage("j", Stage.IN)
    assert a.admit("k") is None  # everyone left is logged in
    assert a.sessions == 4


def test_prelogin_cap_sheds_even_with_room_overall():
    a = make(max_connections=10, max_prelogin_connections=2)
    a.admit("a")
    a.admit("b")
    assert a.admit("c") == ["a"]
    assert a.log_in("b", "bob")
    assert a.admit("d") == []  # b no longer counts before login


def test_sessions_per_user():
    a = make(max_sessions_per_user=2)
    for n in "abc":
        a.admit(n)
    assert a.log_in("a", "u") and a.log_in("b", "u")
    assert not a.log_in("c", "u")
    a.leave("a")
    assert a.log_in("c", "u")


def test_a_session_that_gave_way_cannot_log_in():
    a = make(max_connections=1)
    a.admit("a")
    assert a.admit("b") == ["a"]
    assert not a.log_in("a", "u")
    a.leave("a")  # leaving twice is harmless
    assert a.sessions == 1


async def test_logins_per_address_take_turns():
    a = make(max_logins_per_address=2)
    running = 0
    most = 0

    async def login(address: str) -> None:
        nonlocal running, most
        async with a.login_turn(address):
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.gather(*(login("one") for _ in range(10)))
    assert most == 2
    most = 0
    await asyncio.gather(*(login(f"a{i}") for i in range(10)))
    assert most == 10  # other addresses are not held back
    assert a._turns == {}  # nothing kept once every login is done


def test_among_sessions_waiting_for_helo_failing_then_idle_then_the_oldest_give_way():
    ranks = {"a": WAITING, "b": WAITING, "c": IDLE, "d": FAILING, "e": IDLE}
    a = Admission(Limits(max_connections=5, max_prelogin_connections=5), rank=ranks.__getitem__)
    for n in "abcde":
        a.admit(n)
    ranks.update(f=WAITING, g=WAITING, h=WAITING, i=WAITING)
    assert a.admit("f") == ["d"]  # its address failed a login recently
    assert a.admit("g") == ["c"]  # then one that has sent nothing, the oldest such
    assert a.admit("h") == ["e"]
    assert a.admit("i") == ["a"]  # then the oldest of those whose HELO has arrived (or new)
    a.stage("b", Stage.DELAY)
    assert a.admit("j") == ["b"]  # a failed login's delay before all of them


async def test_addresses_that_failed_have_one_login_under_way_between_them():
    failed = {f"bad{i}" for i in range(5)}
    a = Admission(Limits(max_logins_per_address=2), failing=failed.__contains__)
    running: dict[str, int] = {"bad": 0, "good": 0}
    most = dict(running)

    async def login(address: str) -> None:
        kind = "bad" if address in failed else "good"
        async with a.login_turn(address):
            running[kind] += 1
            most[kind] = max(most[kind], running[kind])
            await asyncio.sleep(0.01)
            running[kind] -= 1

    await asyncio.gather(*(login(address) for address in sorted(failed) * 3), login("good1"), login("good2"))
    assert most == {"bad": 1, "good": 2}  # the clean addresses were not held back
    assert a._turns == {}
