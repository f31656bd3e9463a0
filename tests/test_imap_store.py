"""The IMAP store against a real Dovecot: bytes, UIDs, deletion, login, TLS, folders."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import time

import pytest

from dovecot import HOST, MASTER, OTHER_HOST, USERS
from pop2gate.config import Limits
from pop2gate.stores.base import Peer, StoreError
from pop2gate.stores.folders import encode_mutf7
from pop2gate.stores.imap import ImapBackend, ImapStore, imap_name

PEER = Peer("127.0.0.1", 40000)
_peers = itertools.count(1)


def fresh_peer() -> Peer:
    """A loopback client address of its own: Dovecot's failure penalty is per client address."""
    n = next(_peers)
    return Peer(f"127.1.{n // 250}.{n % 250 + 1}", 40000 + n)


def make_store(dovecot, *, tls="none", host=HOST, ca=True, limits=None, uw_compat=False, **extra) -> ImapStore:
    if tls == "implicit":
        url = f"imaps://{host}:{dovecot.tls_port}"
    else:
        url = f"imap://{host}:{dovecot.port}"
    backend = ImapBackend(name="dc", type="imap", url=url, tls=tls,
                          ca_file=dovecot.ca_file if ca and tls != "none" else None, **extra)
    return ImapStore(backend, limits or Limits(), uw_compat=uw_compat)


@pytest.fixture
async def store(dovecot):
    s = make_store(dovecot)
    yield s
    await s.aclose()


async def drain(box, ref) -> bytes:
    out = bytearray()
    async for piece in box.fetch(ref):
        out += piece
    return bytes(out)


EDGE = {
    "dots": b"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n. \r\nend\r\n",
    "8bit": b"Subject: 8bit\r\n\r\n" + bytes(range(1, 256)).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n",
    "long": b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n",
    "nocrlf": b"Subject: no final line end\r\n\r\nlast line without end",
}


async def test_edge_messages_byte_exact(dovecot, store):
    dovecot.clear("alice")
    uids = {k: dovecot.append("alice", v) for k, v in EDGE.items()}
    box = await store.login("alice", USERS["alice"], PEER)
    refs = await box.select("INBOX")
    assert [int(r.id) for r in refs] == sorted(uids.values())
    by_uid = {int(r.id): r for r in refs}
    for key, data in EDGE.items():
        ref = by_uid[uids[key]]
        assert ref.size == len(data)
        expected = data if data.endswith(b"\r\n") else data + b"\r\n"
        assert await box.wire_size(ref) == len(expected)
        assert await drain(box, ref) == expected
    await box.close()
    assert all(r"\Seen" not in f for f in dovecot.uids("alice").values())  # PEEK only


async def test_large_message_in_bounded_pieces(dovecot):
    dovecot.clear("alice")
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    data = b"Subject: big\r\n\r\n" + line * (20 * 1024 * 1024 // len(line))
    data = data[:-2]  # the last line has no line end: one CRLF is appended
    dovecot.append("alice", data)
    limits = Limits(imap_fetch_chunk=1024 * 1024, imap_fetch_memory=2 * 1024 * 1024)
    s = make_store(dovecot, limits=limits)
    try:
        box = await s.login("alice", USERS["alice"], PEER)
        [ref] = await box.select("INBOX")
        assert await box.wire_size(ref) == len(data) + 2
        t = time.monotonic()
        got, biggest = bytearray(), 0
        async for piece in box.fetch(ref):
            biggest = max(biggest, len(piece))
            assert s.budget.used <= limits.imap_fetch_memory
            got += piece
        assert time.monotonic() - t < 20
        assert bytes(got) == data + b"\r\n"
        assert biggest <= limits.retr_chunk_size
        assert s.budget.used == 0
        await box.close()
    finally:
        await s.aclose()


async def test_release_expunges_exactly_those_uids(dovecot, store):
    dovecot.clear("alice")
    uids = [dovecot.append("alice", f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()) for i in range(5)]
    other = dovecot.imap("alice")
    other.select("INBOX")
    other.uid("STORE", str(uids[4]), "+FLAGS.SILENT", r"(\Deleted)")  # another client's deletion
    box = await store.login("alice", USERS["alice"], PEER)
    refs = await box.select("INBOX")
    assert [int(r.id) for r in refs] == uids[:4]  # \Deleted messages are not offered
    await box.mark_seen(refs[0])
    await box.release([refs[1], refs[3]])
    await box.close()
    left = dovecot.uids("alice")
    assert sorted(left) == [uids[0], uids[2], uids[4]]
    assert r"\Seen" in left[uids[0]]
    assert r"\Deleted" in left[uids[4]]  # still there, still only flagged
    other.logout()


async def test_close_without_release_deletes_nothing(dovecot, store):
    dovecot.clear("alice")
    uids = [dovecot.append("alice", b"Subject: keep\r\n\r\nx\r\n") for _ in range(3)]
    box = await store.login("alice", USERS["alice"], PEER)
    refs = await box.select("INBOX")
    await drain(box, refs[0])
    await box.close()  # a dropped client: no release
    left = dovecot.uids("alice")
    assert sorted(left) == uids
    assert not any(r"\Deleted" in flags for flags in left.values())


async def test_other_client_expunge_mid_session(dovecot, store):
    dovecot.clear("alice")
    uids = [dovecot.append("alice", f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()) for i in range(3)]
    box = await store.login("alice", USERS["alice"], PEER)
    refs = await box.select("INBOX")
    other = dovecot.imap("alice")
    other.select("INBOX")
    other.uid("STORE", str(uids[0]), "+FLAGS.SILENT", r"(\Deleted)")
    other.expunge()  # message 1 is gone; sequence numbers shift under us
    other.logout()
    assert await box.wire_size(refs[0]) == 0
    assert await drain(box, refs[1]) == b"Subject: m1\r\n\r\nbody 1\r\n"
    assert await drain(box, refs[2]) == b"Subject: m2\r\n\r\nbody 2\r\n"
    await box.release([refs[2]])
    await box.close()
    assert sorted(dovecot.uids("alice")) == [uids[1]]


async def test_bad_logins(dovecot, store):
    assert await store.login("alice", "wrong", fresh_peer()) is None
    assert await store.login("nosuch", "x", fresh_peer()) is None
    assert await store.login("*admin", "x", fresh_peer()) is None
    assert await store.login("alice*", "x", fresh_peer()) is None


async def test_password_injection_is_harmless(dovecot, store):
    dovecot.clear("alice")
    dovecot.append("alice", b"Subject: safe\r\n\r\nx\r\n")
    for pw in ['x" a1 DELETE INBOX', 'x"\\', "x) (", "{5}", "x\" LOGOUT", "pw\u00e9"]:
        assert await store.login("alice", pw, fresh_peer()) is None
    assert await store.login('alice" "alice-pw', "alice-pw", fresh_peer()) is None
    assert len(dovecot.uids("alice")) == 1


async def test_quotes_and_backslash_in_password(dovecot, store):
    box = await store.login("bob", USERS["bob"], PEER)  # b"o\b pw
    assert box is not None
    await box.close()


async def test_master_user_login(dovecot, store):
    dovecot.clear("carol")
    dovecot.append("carol", b"Subject: for carol\r\n\r\nx\r\n")
    assert await store.login(f"carol*{MASTER[0]}", MASTER[1], PEER) is None  # master_login is off
    store = make_store(dovecot, master_login=True)  # Dovecot names itself in ID: confirmed
    box = await store.login(f"carol*{MASTER[0]}", MASTER[1], PEER)
    assert box is not None
    refs = await box.select("INBOX")
    assert await drain(box, refs[0]) == b"Subject: for carol\r\n\r\nx\r\n"
    await box.close()
    assert await store.login(f"carol*{MASTER[0]}", "wrong", fresh_peer()) is None
    await store.aclose()


async def test_id_sends_client_address(dovecot, store):
    box = await store.login("alice", USERS["alice"], Peer("127.0.0.9", 4242))
    await box.close()
    for _ in range(250):  # Dovecot's log process writes the line when it can
        lines = [line for line in dovecot.log().splitlines()
                 if "Login: user=<alice>" in line and "rip=127.0.0.9" in line]
        if lines:
            break
        await asyncio.sleep(0.02)
    assert lines, "Dovecot did not log the forwarded client address"


async def test_one_attackers_failures_do_not_slow_others(dovecot, store):
    attacker = fresh_peer()
    assert await store.login("alice", "guess", attacker) is None
    t = time.monotonic()
    assert await store.login("alice", "guess", attacker) is None
    assert time.monotonic() - t > 1  # Dovecot now delays this address
    t = time.monotonic()
    box = await store.login("alice", USERS["alice"], fresh_peer())
    assert box is not None
    assert time.monotonic() - t < 2  # Dovecot's penalty stays with the attacker's address
    await box.close()


async def test_folders(dovecot, store):
    dovecot.append("alice", b"Subject: archived\r\n\r\nx\r\n", folder="Archive.2024")
    utf = "Entw\u00fcrfe & Co"
    dovecot.append("alice", b"Subject: draft\r\n\r\nx\r\n", folder=encode_mutf7(utf))
    box = await store.login("alice", USERS["alice"], PEER)
    assert len(await box.select("Archive/2024")) >= 1
    assert len(await box.select(utf)) >= 1
    assert await box.select("Nope") == []
    assert await box.select("Archive.2024") == []  # a level holding the server's separator
    assert await box.select('INBOX" DELETE "Archive') == []
    assert await box.select("{evil}") == []  # the session refuses it; here it is a folder Dovecot lacks
    assert len(await box.select("inbox")) == len(dovecot.uids("alice"))
    await box.close()
    assert dovecot.uids("alice", "Archive.2024")


def test_imap_names():
    assert imap_name("inbox", ".") == "INBOX" and imap_name("INBOX", None) == "INBOX"
    assert imap_name("Archive/2024", ".") == "Archive.2024"
    assert imap_name("Archive/2024", "/") == "Archive/2024"
    assert imap_name("Archive/2024", None) is None  # a flat server has no levels
    assert imap_name("Archive", None) == "Archive"
    assert imap_name("Archive.2024", ".") is None  # a level holding the server's delimiter
    assert imap_name("a.b", "/") == "a.b"
    assert imap_name("Entw\u00fcrfe & Co/x", ".") == "Entw&APw-rfe &- Co.x"


def test_imap_names_in_a_personal_namespace():
    """Folders under `INBOX.` (Courier, Debian's Cyrus): POP2 names are the user's own names."""
    assert imap_name("Archive", ".", "INBOX.") == "INBOX.Archive"
    assert imap_name("Archive/2024", ".", "INBOX.") == "INBOX.Archive.2024"
    assert imap_name("\u00dcbersicht", ".", "INBOX.") == "INBOX.&ANw-bersicht"
    assert imap_name("INBOX", ".", "INBOX.") == "INBOX" and imap_name("inbox", ".", "INBOX.") == "INBOX"
    assert imap_name("INBOX/Archive", ".", "INBOX.") == "INBOX.Archive"  # already carries the prefix
    assert imap_name("inbox/Archive", ".", "INBOX.") == "INBOX.Archive"
    assert imap_name("INBOXES", ".", "INBOX.") == "INBOX.INBOXES"
    assert imap_name("INBOX.Archive", ".", "INBOX.") is None  # a level holding the delimiter
    assert imap_name("Archive/2024", "/", "") == "Archive/2024"


async def test_tls_implicit_and_starttls(dovecot):
    for tls, host in (("implicit", HOST), ("starttls", "localhost"), ("implicit", "localhost")):
        s = make_store(dovecot, tls=tls, host=host)
        try:
            box = await s.login("alice", USERS["alice"], PEER)
            assert box is not None, (tls, host)
            assert await box.select("INBOX") is not None
            await box.close()
        finally:
            await s.aclose()


@pytest.mark.parametrize("tls,host,ca", [
    ("implicit", OTHER_HOST, True),   # the certificate does not name this address
    ("starttls", OTHER_HOST, True),
    ("implicit", HOST, False),        # the test CA is not trusted
])
async def test_tls_refuses_wrong_certificate(dovecot, tls, host, ca):
    s = make_store(dovecot, tls=tls, host=host, ca=ca)
    try:
        with pytest.raises(StoreError) as err:
            await s.login("alice", USERS["alice"], PEER)
        assert str(err.value) == "Mail server unavailable"
    finally:
        await s.aclose()


async def test_connect_timeout(dovecot):
    silent = socket.socket()
    silent.bind((HOST, 0))
    silent.listen(5)
    port = silent.getsockname()[1]
    backend = ImapBackend(name="slow", type="imap", url=f"imap://{HOST}:{port}", tls="none", timeout=0.5)
    s = ImapStore(backend, Limits())
    try:
        t = time.monotonic()
        with pytest.raises(StoreError):
            await s.login("alice", "x", PEER)
        assert time.monotonic() - t < 3
    finally:
        await s.aclose()
        silent.close()


async def test_backend_killed_mid_fetch(dovecot):
    dovecot.clear("carol")
    uid = dovecot.append("carol", b"Subject: big\r\n\r\n" + (b"z" * 98 + b"\r\n") * 40000)
    s = make_store(dovecot, limits=Limits(imap_fetch_chunk=64 * 1024, imap_fetch_memory=128 * 1024))
    try:
        box = await s.login("carol", USERS["carol"], PEER)
        [ref] = await box.select("INBOX")
        got, killed = 0, False
        with pytest.raises(StoreError):
            async for piece in box.fetch(ref):
                got += len(piece)
                if got > 200_000 and not killed:  # what already arrived may still come through
                    assert dovecot.kill_sessions("carol") == 1
                    killed = True
        assert got < ref.size
        await box.close()
    finally:
        await s.aclose()
    assert list(dovecot.uids("carol")) == [uid]



@pytest.mark.parametrize("expunge", [False, True])
async def test_release_without_uidplus(dovecot, expunge):
    # Dovecot on the other loopback address advertises no UIDPLUS.
    dovecot.clear("alice")
    uids = [dovecot.append("alice", f"Subject: m{i}\r\n\r\nx\r\n".encode()) for i in range(3)]
    theirs = dovecot.append("alice", b"Subject: theirs\r\n\r\nx\r\n", flags=r"\Deleted")
    s = make_store(dovecot, host=OTHER_HOST, limits=Limits(expunge_without_uidplus=expunge))
    try:
        box = await s.login("alice", USERS["alice"], PEER)
        assert "UIDPLUS" not in box.conn.capabilities
        refs = await box.select("INBOX")
        await box.release([refs[0]])
        await box.close()
    finally:
        await s.aclose()
    left = dovecot.uids("alice")
    if expunge:  # plain EXPUNGE: also what another client flagged
        assert sorted(left) == uids[1:]
    else:  # flagged only; nothing removed
        assert sorted(left) == uids + [theirs]
        assert r"\Deleted" in left[uids[0]] and r"\Deleted" not in left[uids[1]]


async def test_bye_mid_session_is_a_store_error(dovecot, store):
    dovecot.clear("carol")
    uid = dovecot.append("carol", b"Subject: x\r\n\r\nx\r\n")
    box = await store.login("carol", USERS["carol"], PEER)
    refs = await box.select("INBOX")
    assert dovecot.kill_sessions("carol", signal.SIGTERM) == 1  # Dovecot says BYE and goes
    await asyncio.sleep(0.2)
    with pytest.raises(StoreError):
        await box.release(refs)
    await box.close()
    assert list(dovecot.uids("carol")) == [uid]


UW = [
    (b"Subject: x\r\n\r\nbody\r\n", "", b"Subject: x\r\nStatus:  O\r\n\r\nbody\r\n\r\n"),
    (b"Subject: x\r\n\r\nbody\r\n", "\\Seen", b"Subject: x\r\nStatus: RO\r\n\r\nbody\r\n\r\n"),
    (b"Subject: only a header\r\n", "", b"Subject: only a header\r\nStatus:  O\r\n\r\n"),
    (b"Subject: x\r\n\r\n\r\n\r\nmore\r\n", "", b"Subject: x\r\nStatus:  O\r\n\r\n\r\n\r\nmore\r\n\r\n"),
    (b"Subject: x\r\n\r\nno end", "\\Seen", b"Subject: x\r\nStatus: RO\r\n\r\nno end\r\n\r\n"),
]


@pytest.mark.parametrize("stored,flags,wire", UW)
async def test_uw_compat_status_and_trailer(dovecot, stored, flags, wire):
    dovecot.clear("alice")
    dovecot.append("alice", stored, flags=flags)
    s = make_store(dovecot, uw_compat=True)
    try:
        box = await s.login("alice", USERS["alice"], PEER)
        [ref] = await box.select("INBOX")
        assert ref.seen is bool(flags)
        assert await box.wire_size(ref) == len(wire)
        assert await drain(box, ref) == wire
        await box.close()
    finally:
        await s.aclose()


async def test_uw_compat_over_partial_fetches(dovecot):
    dovecot.clear("alice")
    head = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 60) for i in range(100))  # header over 6 KiB
    body = b"line of the body\r\n" * 2000
    dovecot.append("alice", head + b"\r\n" + body)
    s = make_store(dovecot, uw_compat=True,
                   limits=Limits(imap_fetch_chunk=4096, imap_fetch_memory=8192, retr_chunk_size=1024))
    try:
        box = await s.login("alice", USERS["alice"], PEER)
        [ref] = await box.select("INBOX")
        wire = head + b"Status:  O\r\n\r\n" + body + b"\r\n"
        assert await box.wire_size(ref) == len(wire)
        assert await drain(box, ref) == wire
        await box.close()
    finally:
        await s.aclose()


@pytest.mark.parametrize("tls", ["none", "starttls", "implicit"])
async def test_backend_socket_sends_without_delay(dovecot, tls):
    """TCP_NODELAY on every backend socket: a small command never waits on the server's delayed ACK."""
    s = make_store(dovecot, tls=tls)
    try:
        box = await s.login("alice", USERS["alice"], fresh_peer())
        assert box is not None
        sock = box.conn.sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        await box.close()
    finally:
        await s.aclose()
