"""What every store promises (pop2gate.stores.base): one set of tests, run over each backend.

The Maildir store runs on a temporary directory; the IMAP store against the private Dovecot
(tests/dovecot.py), which must start: without it these tests fail, they never skip.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from dovecot import USERS, Dovecot
from helpers import PASSWORD, MailEnv
from pop2gate.config import Limits
from pop2gate.stores.base import Mailbox, MailStore, MessageRef, Peer, StoreError
from pop2gate.stores.imap import ImapBackend, ImapStore
from pop2gate.stores.maildir import MaildirBackend, MaildirStore

NESTED = "Archive/2024"  # a POP2 folder name with two levels
# Small pieces everywhere, so messages of a few KiB already stream in many of them.
LIMITS = {"retr_chunk_size": 1024, "imap_fetch_chunk": 4096, "imap_fetch_memory": 8192}
_peers = itertools.count(1)


class Side(Protocol):
    """One backend, as these tests drive it: its store, and a way around it to the stored mail."""

    store: MailStore
    user: str
    password: str

    def peer(self) -> Peer: ...
    def deliver(self, data: bytes, folder: str = "INBOX", seen: bool = False) -> None: ...
    def bodies(self, folder: str = "INBOX") -> list[bytes]: ...
    def flagged_deleted(self, folder: str = "INBOX") -> int: ...
    def remove(self, ref: MessageRef, folder: str = "INBOX") -> None: ...


@dataclass
class MaildirSide:
    """Messages are stored with LF line ends, as a local delivery agent writes them."""

    env: MailEnv
    store: MaildirStore
    user: str = "alice"
    password: str = PASSWORD

    def peer(self) -> Peer:
        return Peer("127.0.0.1", 40000)

    def _dir(self, folder: str) -> Path:
        return self.env.folder(self.user, folder)

    def deliver(self, data: bytes, folder: str = "INBOX", seen: bool = False) -> None:
        self.env.deliver(self.user, data.replace(b"\r\n", b"\n"), folder=folder, flags="S" if seen else None)

    def _files(self, folder: str) -> list[Path]:
        return sorted(p for sub in ("new", "cur") for p in (self._dir(folder) / sub).iterdir())

    def bodies(self, folder: str = "INBOX") -> list[bytes]:
        return sorted(p.read_bytes().replace(b"\n", b"\r\n") for p in self._files(folder))

    def flagged_deleted(self, folder: str = "INBOX") -> int:
        return sum("T" in p.name.partition(":2,")[2] for p in self._files(folder))

    def remove(self, ref: MessageRef, folder: str = "INBOX") -> None:
        [path] = [p for p in self._files(folder) if p.name.split(":")[0] == ref.id]
        os.unlink(path)


@dataclass
class ImapSide:
    """Messages are stored in network form, byte for byte (APPEND literals)."""

    dovecot: Dovecot
    store: ImapStore
    user: str = "alice"
    password: str = USERS["alice"]

    def peer(self) -> Peer:
        """A client address of its own: Dovecot's failed-login penalty is per address."""
        n = next(_peers)
        return Peer(f"127.4.{n // 250}.{n % 250 + 1}", 40000 + n)

    @staticmethod
    def _name(folder: str) -> str:
        return folder.replace("/", ".")  # Dovecot's Maildir++ delimiter

    def deliver(self, data: bytes, folder: str = "INBOX", seen: bool = False) -> None:
        self.dovecot.append(self.user, data, folder=self._name(folder), flags="\\Seen" if seen else "")

    def bodies(self, folder: str = "INBOX") -> list[bytes]:
        return sorted(self.dovecot.bodies(self.user, self._name(folder)).values())

    def flagged_deleted(self, folder: str = "INBOX") -> int:
        return sum("\\Deleted" in flags for flags in self.dovecot.uids(self.user, self._name(folder)).values())

    def remove(self, ref: MessageRef, folder: str = "INBOX") -> None:
        self.dovecot.expunge(self.user, int(ref.id), self._name(folder))


@pytest.fixture(params=["maildir", "imap"])
async def make_side(request, tmp_path: Path):
    """make_side(uw_compat=False) -> a Side with empty INBOX and NESTED folders."""
    stores: list[MailStore] = []

    def make(uw_compat: bool = False) -> Side:
        limits = Limits(**LIMITS)
        side: Side
        if request.param == "maildir":
            env = MailEnv(tmp_path / f"maildir{len(stores)}")
            env.add_user("alice")
            env.folder("alice", NESTED)
            backend = MaildirBackend(name="local", type="maildir", path=env.mail, users_file=env.users_file)
            side = MaildirSide(env, MaildirStore(backend, limits, uw_compat=uw_compat))
        else:
            dovecot = request.getfixturevalue("dovecot")  # fails the test when Dovecot cannot start
            for folder in ("INBOX", NESTED):
                dovecot.append("alice", b"Subject: made\r\n\r\nx\r\n", folder=ImapSide._name(folder))
                dovecot.clear("alice", ImapSide._name(folder))
            backend = ImapBackend(name="dc", type="imap", url=f"imap://127.0.0.1:{dovecot.port}", tls="none")
            side = ImapSide(dovecot, ImapStore(backend, limits, uw_compat=uw_compat))
        stores.append(side.store)
        assert side.bodies() == [] and side.bodies(NESTED) == []
        return side

    yield make
    for store in stores:
        await store.aclose()


async def login(side: Side) -> Mailbox:
    box = await side.store.login(side.user, side.password, side.peer())
    assert box is not None
    return box


async def fetched(box: Mailbox, ref: MessageRef) -> bytes:
    return b"".join([piece async for piece in box.fetch(ref)])


def message(n: int) -> bytes:
    return b"Subject: message %d\r\n\r\nbody %d\r\n" % (n, n)


# (stored, in network form; what RETR sends; what RETR sends in UW's form, unseen)
MESSAGES = [
    (b"Subject: plain\r\n\r\nbody\r\n", b"Subject: plain\r\n\r\nbody\r\n",
     b"Subject: plain\r\nStatus:  O\r\n\r\nbody\r\n\r\n"),
    (b"Subject: no end\r\n\r\nlast line", b"Subject: no end\r\n\r\nlast line\r\n",
     b"Subject: no end\r\nStatus:  O\r\n\r\nlast line\r\n\r\n"),
    (b"Subject: dots\r\n\r\n.\r\n..\r\n. \r\n", b"Subject: dots\r\n\r\n.\r\n..\r\n. \r\n",
     b"Subject: dots\r\nStatus:  O\r\n\r\n.\r\n..\r\n. \r\n\r\n"),
    (b"Subject: header only\r\n", b"Subject: header only\r\n", b"Subject: header only\r\nStatus:  O\r\n\r\n"),
    (b"Subject: 8bit\r\n\r\n" + bytes(range(0x80, 0x100)) + b"\r\n",
     b"Subject: 8bit\r\n\r\n" + bytes(range(0x80, 0x100)) + b"\r\n",
     b"Subject: 8bit\r\nStatus:  O\r\n\r\n" + bytes(range(0x80, 0x100)) + b"\r\n\r\n"),
    (b"Subject: long\r\n\r\n" + b"line of a long message\r\n" * 2000 + b"the end",
     b"Subject: long\r\n\r\n" + b"line of a long message\r\n" * 2000 + b"the end\r\n",
     b"Subject: long\r\nStatus:  O\r\n\r\n" + b"line of a long message\r\n" * 2000 + b"the end\r\n\r\n"),
]


# -- login ----------------------------------------------------------------------------


async def test_login_ok_and_refused(make_side):
    side = make_side()
    box = await side.store.login(side.user, side.password, side.peer())
    assert box is not None
    assert await box.select("INBOX") == []
    await box.close()
    assert await side.store.login(side.user, side.password + "x", side.peer()) is None
    assert await side.store.login("nosuchuser", side.password, side.peer()) is None


# -- select ---------------------------------------------------------------------------


async def test_select_inbox_missing_and_nested(make_side):
    side = make_side()
    side.deliver(message(1))
    side.deliver(message(2))
    side.deliver(message(3), folder=NESTED)
    box = await login(side)
    inbox = await box.select("INBOX")
    assert len(inbox) == 2 and all(ref.size > 0 for ref in inbox)
    assert await fetched(box, inbox[0]) == message(1)  # oldest first
    assert await fetched(box, inbox[1]) == message(2)
    assert await box.select("Nope") == []
    assert await box.select("Nope/Deeper") == []
    [nested] = await box.select(NESTED)
    assert await fetched(box, nested) == message(3)
    assert [r.id for r in await box.select("inbox")] == [r.id for r in inbox]  # INBOX in any case
    await box.close()


# -- wire form ------------------------------------------------------------------------


@pytest.mark.parametrize("uw", [False, True], ids=["plain", "uw_compat"])
async def test_wire_size_is_exactly_what_fetch_yields(make_side, uw):
    side = make_side(uw_compat=uw)
    for stored, _, _ in MESSAGES:
        side.deliver(stored)
    box = await login(side)
    refs = await box.select("INBOX")
    assert len(refs) == len(MESSAGES)
    for ref, (_, wire, uw_wire) in zip(refs, MESSAGES, strict=True):
        expected = uw_wire if uw else wire
        got = await fetched(box, ref)
        assert got == expected
        assert await box.wire_size(ref) == len(got)
        assert got.endswith(b"\r\n")  # the last line is ended
    await box.close()


async def test_uw_status_follows_the_seen_flag(make_side):
    side = make_side(uw_compat=True)
    side.deliver(b"Subject: read\r\n\r\nbody\r\n", seen=True)
    side.deliver(b"Subject: unread\r\n\r\nbody\r\n")
    box = await login(side)
    read, unread = await box.select("INBOX")
    assert (read.seen, unread.seen) == (True, False)
    assert await fetched(box, read) == b"Subject: read\r\nStatus: RO\r\n\r\nbody\r\n\r\n"
    assert await fetched(box, unread) == b"Subject: unread\r\nStatus:  O\r\n\r\nbody\r\n\r\n"
    await box.close()


# -- flags and deletion ---------------------------------------------------------------


async def test_mark_seen(make_side):
    side = make_side()
    side.deliver(message(1))
    side.deliver(message(2))
    box = await login(side)
    refs = await box.select("INBOX")
    assert [r.seen for r in refs] == [False, False]
    await box.mark_seen(refs[0])
    assert [r.seen for r in await box.select("INBOX")] == [True, False]
    await box.close()


async def test_release_deletes_exactly_the_given_refs(make_side):
    side = make_side()
    for n in range(4):
        side.deliver(message(n))
    box = await login(side)
    refs = await box.select("INBOX")
    await box.release([refs[1], refs[3]])
    assert side.bodies() == sorted([message(0), message(2)])
    assert side.flagged_deleted() == 0  # removed, not only flagged
    assert [r.id for r in await box.select("INBOX")] == [refs[0].id, refs[2].id]  # ids stay the same
    await box.release([])
    assert side.bodies() == sorted([message(0), message(2)])
    await box.close()


async def test_close_deletes_nothing(make_side):
    side = make_side()
    for n in range(3):
        side.deliver(message(n))
    box = await login(side)
    refs = await box.select("INBOX")
    assert await fetched(box, refs[0]) == message(0)
    await box.mark_seen(refs[1])
    await box.close()  # a dropped client: no release
    assert side.bodies() == sorted(message(n) for n in range(3))
    assert side.flagged_deleted() == 0


async def test_a_message_removed_underneath_reads_zero(make_side):
    side = make_side()
    side.deliver(message(1))
    side.deliver(message(2))
    box = await login(side)
    gone, kept = await box.select("INBOX")
    side.remove(gone)
    assert await box.wire_size(gone) == 0
    with pytest.raises(StoreError):
        await fetched(box, gone)
    assert await box.wire_size(kept) == len(message(2))
    assert await fetched(box, kept) == message(2)
    await box.release([gone, kept])  # deleting what is already gone is no error
    assert side.bodies() == []
    await box.close()


async def test_a_ref_the_folder_never_held_reads_zero(make_side):
    side = make_side()
    side.deliver(message(1))
    box = await login(side)
    [ref] = await box.select("INBOX")
    stranger = MessageRef("424242", ref.size)
    assert await box.wire_size(stranger) == 0
    await box.release([stranger])
    assert side.bodies() == [message(1)]
    await box.close()
