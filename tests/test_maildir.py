"""The Maildir store on its own (pop2gate.stores.maildir): layout, flags, line ends, UW's form."""

from __future__ import annotations

import asyncio
import os

import pytest

from helpers import PASSWORD, MailEnv
from pop2gate.config import Limits
from pop2gate.stores.base import MessageRef, Peer, StoreError
from pop2gate.stores.folders import encode_mutf7
from pop2gate.stores.maildir import MaildirBackend, MaildirMailbox, MaildirStore

PEER = Peer("127.0.0.1", 40000)


@pytest.fixture
async def make_store(env: MailEnv):
    made: list[MaildirStore] = []

    def make(uw_compat: bool = False, **limits: int) -> MaildirStore:
        backend = MaildirBackend(name="local", type="maildir", path=env.mail, users_file=env.users_file)
        store = MaildirStore(backend, Limits(**limits), uw_compat=uw_compat)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


async def mailbox(store: MaildirStore, user: str = "alice") -> MaildirMailbox:
    box = await store.login(user, PASSWORD, PEER)
    assert isinstance(box, MaildirMailbox)
    return box


async def drain(box: MaildirMailbox, ref: MessageRef) -> bytes:
    return b"".join([piece async for piece in box.fetch(ref)])


# -- login --------------------------------------------------------------------------


async def test_login_checks_the_users_file(env, make_store):
    store = make_store()
    assert await store.login("alice", PASSWORD, PEER) is not None
    assert await store.login("alice", PASSWORD + "x", PEER) is None
    assert await store.login("nobody", PASSWORD, PEER) is None


async def test_login_creates_the_maildir(env, make_store):
    env.add_user("bob")
    home = env.mail / "bob"
    for sub in ("cur", "new", "tmp"):
        (home / sub).rmdir()
    home.rmdir()
    box = await mailbox(make_store(), "bob")
    assert sorted(p.name for p in home.iterdir()) == ["cur", "new", "tmp"]
    assert await box.select("INBOX") == []


async def test_a_user_name_that_is_no_name_never_logs_in(env, make_store):
    """Even a hand-edited users file cannot give a path a password."""
    hashed = env.users_file.read_text().split(":", 1)[1]
    with env.users_file.open("a") as f:
        f.writelines(f"{name}:{hashed}" for name in ("../alice", "alice/..", ".alice"))
    store = make_store()
    assert await store.login("alice", PASSWORD, PEER) is not None
    for name in ("../alice", "alice/..", ".alice", ""):
        assert await store.login(name, PASSWORD, PEER) is None


# -- select -------------------------------------------------------------------------


async def test_select_in_delivery_order_with_seen_flags(env, make_store):
    first = env.deliver("alice", b"Subject: 1\n\n1\n")
    second = env.deliver("alice", b"Subject: 2\n\n2\n", flags="S")
    third = env.deliver("alice", b"Subject: 3\n\n3\n", flags="RS")
    box = await mailbox(make_store())
    refs = await box.select("INBOX")
    assert [r.id for r in refs] == [first, second, third]
    assert [r.seen for r in refs] == [False, True, True]
    assert [r.size for r in refs] == [len(b"Subject: 1\n\n1\n")] * 3


async def test_select_skips_trashed_hidden_and_duplicate_files(env, make_store):
    kept = env.deliver("alice", b"Subject: kept\n\nx\n")
    env.deliver("alice", b"Subject: trashed\n\nx\n", flags="ST")
    inbox = env.folder("alice")
    (inbox / "new" / ".hidden").write_bytes(b"Subject: hidden\n\nx\n")
    (inbox / "cur" / f"{kept}:2,S").write_bytes(b"Subject: kept\n\nx\n")  # the same message twice
    os.mkdir(inbox / "new" / "1600000000.dir")  # not a file
    box = await mailbox(make_store())
    assert [r.id for r in await box.select("INBOX")] == [kept]


async def test_folders_are_maildir_plus_plus(env, make_store):
    env.deliver("alice", b"Subject: a\n\nx\n", folder="Archive/2024")
    utf = "Entw\u00fcrfe & Co"
    path = env.mail / "alice" / ("." + encode_mutf7(utf))
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True)
    (path / "new" / "1700000000.M1P1.test").write_bytes(b"Subject: draft\n\nx\n")
    env.deliver("alice", b"Subject: in\n\nx\n")
    box = await mailbox(make_store())
    assert len(await box.select("Archive/2024")) == 1
    assert (env.mail / "alice" / ".Archive.2024").is_dir()
    assert len(await box.select(utf)) == 1
    assert len(await box.select("inbox")) == 1
    assert await box.select("Nope") == []
    assert await box.select("Archive") == []  # the parent level is no folder of its own here


async def test_a_level_holding_a_dot_names_no_folder(env, make_store):
    env.deliver("alice", b"Subject: a\n\nx\n", folder="Archive/2024")  # .Archive.2024 on disk
    box = await mailbox(make_store())
    assert await box.select("Archive.2024") == []
    assert len(await box.select("Archive/2024")) == 1


async def test_a_symlinked_folder_is_not_followed(env, make_store):
    env.add_user("bob")
    env.deliver("bob", b"Subject: bob's\n\nx\n", folder="Secret")
    (env.mail / "alice" / ".Secret").symlink_to(env.mail / "bob" / ".Secret")
    box = await mailbox(make_store())
    assert await box.select("Secret") == []


# -- wire form ----------------------------------------------------------------------


@pytest.mark.parametrize("stored,wire", [
    (b"Subject: x\n\nbody\n", b"Subject: x\r\n\r\nbody\r\n"),
    (b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\r\n"),
    (b"Subject: x\n\nno end", b"Subject: x\r\n\r\nno end\r\n"),
    (b"Subject: x\n\n.\n..\n", b"Subject: x\r\n\r\n.\r\n..\r\n"),
])
async def test_wire_size_is_what_fetch_sends(env, make_store, stored, wire):
    env.deliver("alice", stored)
    box = await mailbox(make_store())
    [ref] = await box.select("INBOX")
    assert await box.wire_size(ref) == len(wire)
    assert await drain(box, ref) == wire


async def test_line_ends_across_read_chunks(env, make_store):
    # CRLF pairs and bare LFs on every side of each 1024-octet read.
    stored = b"".join(b"x" * n + (b"\r\n" if n % 2 else b"\n") for n in range(1, 200))
    wire = stored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    env.deliver("alice", stored)
    box = await mailbox(make_store(retr_chunk_size=1024))
    [ref] = await box.select("INBOX")
    pieces = [piece async for piece in box.fetch(ref)]
    assert b"".join(pieces) == wire and len(pieces) > 10
    assert await box.wire_size(ref) == len(wire)


async def test_an_empty_message_reads_zero(env, make_store):
    env.deliver("alice", b"")
    for uw in (False, True):
        box = await mailbox(make_store(uw_compat=uw))
        [ref] = await box.select("INBOX")
        assert await box.wire_size(ref) == 0
        assert await drain(box, ref) == b""


async def test_a_changed_file_is_counted_again(env, make_store):
    """Counts are kept by file identity (and a small message's octets only until its RETR)."""
    uid = env.deliver("alice", b"Subject: x\n\nshort\n")
    box = await mailbox(make_store())
    [ref] = await box.select("INBOX")
    assert await box.wire_size(ref) == len(b"Subject: x\r\n\r\nshort\r\n")
    await drain(box, ref)
    (env.folder("alice") / "new" / uid).write_bytes(b"Subject: x\n\nrather longer\n")
    assert await box.wire_size(ref) == len(b"Subject: x\r\n\r\nrather longer\r\n")
    big = b"Subject: big\n\n" + b"line\n" * 500  # past one RETR chunk: counted, not held
    (env.folder("alice") / "new" / uid).write_bytes(big)
    box = await mailbox(make_store(retr_chunk_size=1024))
    [ref] = await box.select("INBOX")
    assert await box.wire_size(ref) == len(big.replace(b"\n", b"\r\n"))
    (env.folder("alice") / "new" / uid).write_bytes(big + b"one more\n")
    assert await box.wire_size(ref) == len(big.replace(b"\n", b"\r\n")) + len(b"one more\r\n")


async def test_flags_set_elsewhere_do_not_lose_the_message(env, make_store):
    uid = env.deliver("alice", b"Subject: x\n\nbody\n")
    box = await mailbox(make_store())
    [ref] = await box.select("INBOX")
    inbox = env.folder("alice")
    os.rename(inbox / "new" / uid, inbox / "cur" / f"{uid}:2,F")  # another client flagged it
    assert await box.wire_size(ref) == len(b"Subject: x\r\n\r\nbody\r\n")
    assert await drain(box, ref) == b"Subject: x\r\n\r\nbody\r\n"


async def test_a_message_is_found_by_its_name_without_listing_the_folder(env, make_store, monkeypatch):
    """READ, RETR and ACKS each find the message by the name last seen: listing cur/ and new/
    each time made a drain cost the square of the folder's size."""
    for n in range(3):
        env.deliver("alice", b"Subject: %d\n\nbody\n" % n)
    box = await mailbox(make_store())
    refs = await box.select("INBOX")
    listed = []
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda fd: listed.append(fd) or real(fd))
    for ref in refs:
        assert await box.wire_size(ref) == len(b"Subject: 0\r\n\r\nbody\r\n")
        await drain(box, ref)
        await box.mark_seen(ref)
    await box.release([])  # the flags, by the names last seen too
    assert listed == []
    inbox = env.folder("alice")
    [name] = [n for n in os.listdir(inbox / "cur") if n.startswith(refs[0].id)]
    os.rename(inbox / "cur" / name, inbox / "cur" / f"{refs[0].id}:2,FS")  # renamed elsewhere: searched
    assert await box.wire_size(refs[0]) > 0 and listed


async def test_a_message_removed_underneath_reads_zero(env, make_store):
    uid = env.deliver("alice", b"Subject: x\n\nbody\n")
    box = await mailbox(make_store())
    [ref] = await box.select("INBOX")
    os.unlink(env.folder("alice") / "new" / uid)
    assert await box.wire_size(ref) == 0
    with pytest.raises(StoreError):
        await drain(box, ref)


# -- flags and deletion -------------------------------------------------------------


async def test_mark_seen_moves_to_cur_with_s(env, make_store):
    fresh = env.deliver("alice", b"Subject: new\n\nx\n")
    flagged = env.deliver("alice", b"Subject: flagged\n\nx\n", flags="F")
    box = await mailbox(make_store())
    refs = await box.select("INBOX")
    for ref in refs:
        await box.mark_seen(ref)
        await box.mark_seen(ref)  # once is enough
    await box.release([])  # the flags are on disk when the folder is released (QUIT, FOLD)
    inbox = env.folder("alice")
    assert sorted(os.listdir(inbox / "cur")) == sorted([f"{fresh}:2,S", f"{flagged}:2,FS"])
    assert os.listdir(inbox / "new") == []
    assert [r.seen for r in await box.select("INBOX")] == [True, True]


async def test_release_deletes_exactly_those_and_close_nothing(env, make_store):
    uids = [env.deliver("alice", f"Subject: {i}\n\nx\n".encode()) for i in range(4)]
    box = await mailbox(make_store())
    refs = await box.select("INBOX")
    await box.release([refs[1], refs[3]])
    assert env.files("alice") == [uids[0], uids[2]]
    refs = await box.select("INBOX")
    await box.close()
    assert env.files("alice") == [uids[0], uids[2]]


# -- UW ipop2d's form, from the store itself --------------------------------------------


@pytest.mark.parametrize("stored,flags,wire", [
    (b"Subject: x\n\nbody\n", None, b"Subject: x\r\nStatus:  O\r\n\r\nbody\r\n\r\n"),
    (b"Subject: x\n\nbody\n", "S", b"Subject: x\r\nStatus: RO\r\n\r\nbody\r\n\r\n"),
    (b"Subject: only a header\n", None, b"Subject: only a header\r\nStatus:  O\r\n\r\n"),
    (b"Subject: x\n\n\n\nmore\n", None, b"Subject: x\r\nStatus:  O\r\n\r\n\r\n\r\nmore\r\n\r\n"),
])
async def test_uw_compat_status_and_trailer(env, make_store, stored, flags, wire):
    env.deliver("alice", stored, flags=flags)
    box = await mailbox(make_store(uw_compat=True))
    [ref] = await box.select("INBOX")
    assert await box.wire_size(ref) == len(wire)
    assert await drain(box, ref) == wire


async def test_uw_status_is_the_snapshots_flag(env, make_store):
    """ACKS sets the flag on disk; the message keeps the Status it was selected with."""
    env.deliver("alice", b"Subject: x\n\nbody\n")
    box = await mailbox(make_store(uw_compat=True))
    [ref] = await box.select("INBOX")
    await box.mark_seen(ref)
    assert await drain(box, ref) == b"Subject: x\r\nStatus:  O\r\n\r\nbody\r\n\r\n"
    [ref] = await box.select("INBOX")
    assert await drain(box, ref) == b"Subject: x\r\nStatus: RO\r\n\r\nbody\r\n\r\n"


async def test_uw_form_across_read_chunks(env, make_store):
    header = b"".join(b"X-%d: %s\n" % (i, b"v" * 50) for i in range(60))  # over 3 KiB of header
    stored = header + b"\n" + b"body line\n" * 500
    env.deliver("alice", stored)
    box = await mailbox(make_store(uw_compat=True, retr_chunk_size=1024))
    [ref] = await box.select("INBOX")
    wire = header.replace(b"\n", b"\r\n") + b"Status:  O\r\n\r\n" + b"body line\r\n" * 500 + b"\r\n"
    assert await drain(box, ref) == wire
    assert await box.wire_size(ref) == len(wire)


# -- one trip and one read per message ----------------------------------------------------


@pytest.fixture
def trips(monkeypatch):
    """Each trip the store makes to a worker thread, by the function it runs."""
    import pop2gate.stores.maildir as maildir

    made: list[str] = []
    real = asyncio.to_thread

    async def to_thread(fn, *args):
        made.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args)

    monkeypatch.setattr(maildir.asyncio, "to_thread", to_thread)
    return made


@pytest.fixture
def opened(monkeypatch):
    """The names of the files (not directories) the store opens."""
    names: list[str] = []
    real = os.open

    def spy(name, flags, *args, **kwargs):
        if not flags & os.O_DIRECTORY:
            names.append(str(name))
        return real(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    return names


async def test_a_small_message_is_read_once_for_read_and_retr(env, make_store, trips, opened):
    """READ counts a small message's octets by reading it whole and keeps them for RETR: one
    trip to a worker thread and one open per message, however often it is announced."""
    uid = env.deliver("alice", b"Subject: x\n\nbody\n")
    box = await mailbox(make_store())
    [ref] = await box.select("INBOX")
    trips.clear()
    assert await box.wire_size(ref) == len(b"Subject: x\r\n\r\nbody\r\n")
    assert await box.wire_size(ref) == len(b"Subject: x\r\n\r\nbody\r\n")  # READ again: from memory
    assert await drain(box, ref) == b"Subject: x\r\n\r\nbody\r\n"
    assert len(trips) == 1 and opened == [uid]


async def test_a_message_held_for_retr_is_sent_whole_when_removed_meanwhile(env, make_store):
    """Its count went out and its octets are in hand: RETR sends them, as the IMAP store does.
    Once sent, they are not kept: the next announcement reads the folder again."""
    uid = env.deliver("alice", b"Subject: x\n\nbody\n")
    box = await mailbox(make_store())
    [ref] = await box.select("INBOX")
    assert await box.wire_size(ref) > 0
    os.unlink(env.folder("alice") / "new" / uid)  # another client took it
    assert await drain(box, ref) == b"Subject: x\r\n\r\nbody\r\n"
    assert await box.wire_size(ref) == 0
    with pytest.raises(StoreError):
        await drain(box, ref)


async def test_a_message_larger_than_a_retr_chunk_is_streamed_not_held(env, make_store, opened):
    stored = b"Subject: big\n\n" + b"a line of the body\n" * 200
    uid = env.deliver("alice", stored)
    box = await mailbox(make_store(retr_chunk_size=1024))
    [ref] = await box.select("INBOX")
    assert await box.wire_size(ref) == len(stored.replace(b"\n", b"\r\n"))
    assert not box._held  # nothing kept past one RETR chunk
    assert await drain(box, ref) == stored.replace(b"\n", b"\r\n")
    assert opened == [uid, uid]


async def test_mark_seen_waits_for_the_next_trip(env, make_store, trips):
    """ACKS notes the flag; it reaches the disk with the store's next trip to a worker thread
    (the next message's count, say), never with a trip of its own."""
    first, second = (env.deliver("alice", b"Subject: %d\n\nx\n" % n) for n in range(2))
    box = await mailbox(make_store())
    refs = await box.select("INBOX")
    trips.clear()
    await box.mark_seen(refs[0])
    assert trips == [] and os.listdir(env.folder("alice") / "cur") == []
    await box.wire_size(refs[1])
    assert len(trips) == 1 and os.listdir(env.folder("alice") / "cur") == [f"{first}:2,S"]


@pytest.mark.parametrize("end", ["select", "release", "close"])
async def test_mark_seen_is_applied_however_the_folder_is_left(env, make_store, end):
    """FOLD (select), QUIT (release) and any end of the session at all (close, with nothing
    deleted) apply the flags noted so far."""
    uid = env.deliver("alice", b"Subject: x\n\nbody\n")
    box = await mailbox(make_store())
    [ref] = await box.select("INBOX")
    await box.mark_seen(ref)
    await {"select": lambda: box.select("INBOX"), "release": lambda: box.release([]), "close": box.close}[end]()
    assert os.listdir(env.folder("alice") / "cur") == [f"{uid}:2,S"]


async def test_a_flag_that_cannot_be_applied_at_close_is_logged_not_raised(env, make_store, caplog):
    uid = env.deliver("alice", b"Subject: x\n\nbody\n")
    box = await mailbox(make_store())
    [ref] = await box.select("INBOX")
    await box.mark_seen(ref)
    cur = env.folder("alice") / "cur"
    cur.rmdir()  # no cur/ to move it into
    await box.close()
    assert os.listdir(env.folder("alice") / "new") == [uid]
    assert "not applied" in caplog.text and "Traceback" not in caplog.text


# -- read-ahead: the next small messages in the same trip ----------------------------------


async def test_the_next_small_messages_are_read_in_the_same_trip(env, make_store, trips, opened):
    """A drain of small messages makes one trip per `maildir_readahead` octets, each file opened
    once; the flags of ACKS wait for the next trip, or the end of the folder."""
    stored = [b"Subject: %d\n\n" % n + b"body line\n" * 100 for n in range(6)]
    uids = [env.deliver("alice", data) for data in stored]
    size = len(stored[0].replace(b"\n", b"\r\n"))
    box = await mailbox(make_store(maildir_readahead=3 * size))
    refs = await box.select("INBOX")
    trips.clear()
    for ref, data in zip(refs, stored, strict=True):
        assert await box.wire_size(ref) == size
        assert await drain(box, ref) == data.replace(b"\n", b"\r\n")
        await box.mark_seen(ref)
    assert len(trips) == 2  # messages 1-4, then 5-6
    assert opened == uids
    await box.release([])
    assert len(os.listdir(env.folder("alice") / "cur")) == 6


async def test_read_ahead_off_reads_each_message_at_its_count(env, make_store, trips):
    for n in range(3):
        env.deliver("alice", b"Subject: %d\n\nx\n" % n)
    box = await mailbox(make_store(maildir_readahead=0))
    refs = await box.select("INBOX")
    trips.clear()
    for ref in refs:
        await box.wire_size(ref)
        await drain(box, ref)
    assert len(trips) == 3


async def test_read_ahead_stops_at_a_message_past_one_retr_chunk(env, make_store, opened):
    small = [env.deliver("alice", b"Subject: s\n\nx\n") for _ in range(2)]
    big = env.deliver("alice", b"Subject: big\n\n" + b"y" * 3000 + b"\n")
    last = env.deliver("alice", b"Subject: s\n\nx\n")
    box = await mailbox(make_store(retr_chunk_size=1024))
    refs = await box.select("INBOX")
    await box.wire_size(refs[0])
    assert opened == small + [big]  # looked at, too large to hold: not kept, nothing after it
    assert await box.wire_size(refs[3]) > 0 and opened[-1] == last


@pytest.mark.parametrize("interval,announced", [(3600, True), (0, False)])
async def test_a_message_read_ahead_then_removed(env, make_store, interval, announced):
    """Within `maildir_recheck_interval` of the read, a message read ahead is announced from
    memory and sent whole even if another client removed it meanwhile (never a wrong count,
    nothing lost); past it (0: always), the folder is looked at again and it reads `=0`."""
    first = env.deliver("alice", b"Subject: 1\n\nx\n")
    second = env.deliver("alice", b"Subject: 2\n\nx\n")
    box = await mailbox(make_store(maildir_recheck_interval=interval))
    refs = await box.select("INBOX")
    await box.wire_size(refs[0])
    os.unlink(env.folder("alice") / "new" / second)
    if announced:
        assert await box.wire_size(refs[1]) == len(b"Subject: 2\r\n\r\nx\r\n")
        assert await drain(box, refs[1]) == b"Subject: 2\r\n\r\nx\r\n"
    else:
        assert await box.wire_size(refs[1]) == 0
    assert env.files("alice") == [first]
