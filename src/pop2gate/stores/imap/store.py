"""The IMAP store: a user's IMAP mailbox served over POP2.

One asyncio IMAP connection (`conn`) per POP2 session. Messages are IMAP UIDs; bodies
are read with BODY.PEEK[] (never marking them seen) in partial fetches of
`imap_fetch_chunk`, streamed to the session as they arrive; the octets being read from the
backends across all sessions are capped by `imap_fetch_memory` (`budget`). A piece that
has arrived leaves the budget before the session writes it, so a client that stops
reading holds one piece of its own, never the shared budget.
Small messages are read ahead, many in one UID FETCH (`imap_readahead`); those bodies
stay in the budget until sent, taken only when there is room at once and never more
than half of it, so they cannot make a read that a client waits for wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Sequence
from typing import TYPE_CHECKING, NoReturn, TypeVar

from ...oauth2.sasl import initial_response
from ...pop2.wire import FOLDER_SEPARATOR
from ..base import MessageRef, Peer, StoreError
from ..folders import encode_mutf7, is_inbox
from ..wireform import WireForm, ended_size
from .budget import ByteBudget
from .config import ImapBackend
from .conn import ConnError, ImapConn, Target, open_session, tls_context

if TYPE_CHECKING:
    from ...config import Limits
    from ...oauth2.tokens import TokenSource

log = logging.getLogger("pop2gate.imap")
T = TypeVar("T")

UNAVAILABLE = "Mail server unavailable"
FAILED = "Mail server error"
SIZE_MISMATCH = "Message size changed on server"
NO_MEMORY = "No room in imap_fetch_memory"
_READ_AHEAD_MESSAGES = 100  # messages in one read-ahead UID FETCH, at most
_SEEN_BATCH = 100  # ACKS flags sent in one UID STORE, at most


def split_master(login: str) -> tuple[str, str] | None:
    """`user*admin` -> ("user", "admin"); `user` -> ("", "user"); None if malformed."""
    user, sep, admin = login.partition("*")
    if not user or (sep and not admin):
        return None
    return (user, admin) if sep else ("", user)


def imap_name(folder: str, delimiter: str | None, prefix: str = "") -> str | None:
    """The IMAP name of a POP2 folder name on a server with `delimiter` (None: flat) whose
    personal namespace has `prefix` ("INBOX." on Courier), None when it names no folder there.

    POP2 names are the user's own (`Archive/2024`): the prefix is added, unless the name
    already carries it (`INBOX/Archive`). INBOX is INBOX in every layout."""
    if is_inbox(folder):
        return "INBOX"
    levels = folder.split(FOLDER_SEPARATOR)
    if len(levels) > 1 and not delimiter:
        return None
    if delimiter and any(delimiter in level for level in levels):
        return None  # a level holding the server's separator would name another folder
    if is_inbox(levels[0]):
        levels[0] = "INBOX"
    name = encode_mutf7((delimiter or FOLDER_SEPARATOR).join(levels))
    return name if name.startswith(prefix) else prefix + name


# Servers whose SASL PLAIN login with an authorization identity opens that identity's mailbox
# (Dovecot master users, Cyrus proxy servers), by the name their ID answer gives.
AUTHZID_SERVERS = ("dovecot", "cyrus")


def honours_authzid(server_name: str | None) -> bool:
    return server_name is not None and server_name.lower().startswith(AUTHZID_SERVERS)


class _NoRoom(Exception):
    """No room in `imap_fetch_memory` within `imap_budget_timeout`."""


async def _one(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


class ImapStore:
    """A `[[backend]] type = "imap"`: checks HELO credentials against the IMAP server."""

    def __init__(self, backend: ImapBackend, limits: Limits, budget: ByteBudget | None = None, *,
                 uw_compat: bool = False) -> None:
        self.name = backend.name
        self.master_login = backend.master_login
        self.limits = limits
        self.form = WireForm(uw_compat)
        _, host, port = backend.address()
        tls = backend.tls_mode()
        self.target = Target(
            host=host,
            port=port,
            tls=tls,
            ssl_context=tls_context(tls, backend.ca_file),
            connect_timeout=backend.timeout or limits.imap_connect_timeout,
            command_timeout=backend.timeout or limits.imap_command_timeout,
            max_literal=limits.imap_fetch_chunk,
        )
        self.budget = budget or ByteBudget(limits.imap_fetch_memory)
        self._login_slots = asyncio.Semaphore(limits.imap_max_logins)
        self.oauth2 = backend.oauth2
        self.tokens: TokenSource | None = None
        if backend.oauth2 is not None:  # httpx and its network layer only where OAuth2 is configured
            from ...oauth2.tokens import TokenSource

            self.tokens = TokenSource(backend.name, backend.oauth2, limits.password_hash_workers)

    async def login(self, user: str, password: str, peer: Peer) -> ImapMailbox | None:
        ids = split_master(user)
        if ids is None:
            return None
        if ids[0] and not self.master_login:
            log.warning("backend %s: %r is a master login, and master_login is off", self.name, user)
            return None
        sasl = None
        if self.tokens is not None:
            sasl = await self._oauth2_login(user, password)
            if sasl is None:
                return None
        # Logins may wait on the backend (its login processes, its penalty for failures):
        # at most `imap_max_logins` at once per backend, so a login storm cannot open more
        # connections than the backend is ready to take.
        async with self._login_slots:
            try:
                conn = await open_session(self.target, (peer.host, peer.port), ids[0], ids[1], password, sasl)
            except ConnError as err:
                log.warning("backend %s: user %r: %s", self.name, user, err)
                raise StoreError(UNAVAILABLE) from None
        if conn is None:
            log.info("backend %s: login refused for %r", self.name, user)
            if self.tokens is not None:
                self.tokens.forget(user)
            return None
        if ids[0] and not honours_authzid(conn.server_name):
            # A server that ignores the authorization identity would open the admin's own
            # mailbox, or another one than the log names: refuse what cannot be confirmed.
            log.warning("backend %s: master login %r refused: the server (ID name %r) is not one known "
                        "to open the authorization identity's mailbox", self.name, user, conn.server_name)
            await conn.logout()
            return None
        return ImapMailbox(self, conn, user)

    async def _oauth2_login(self, user: str, password: str) -> tuple[str, bytes] | None:
        """The SASL mechanism and initial response for `user`'s access token; None for a bad login."""
        from ...oauth2.tokens import OAuthUnavailable  # loaded with TokenSource, before any privilege drop

        assert self.tokens is not None and self.oauth2 is not None
        try:
            access = await self.tokens.access(user, password)
        except OAuthUnavailable as err:
            log.warning("backend %s: user %r: %s", self.name, user, err)
            raise StoreError(FAILED) from None
        if access is None:
            return None
        mechanism = self.oauth2.mechanism
        return mechanism, initial_response(mechanism, access.imap_user, access.token,
                                           self.target.host, self.target.port)

    async def aclose(self) -> None:
        if self.tokens is not None:
            await self.tokens.aclose()


class ImapMailbox:
    """One user's IMAP session: the selected folder and its UID snapshot."""

    def __init__(self, store: ImapStore, conn: ImapConn, user: str) -> None:
        self.store = store
        self.conn = conn
        self.user = user
        self.folder: str | None = None
        self.sizes: dict[int, int] = {}  # UID -> RFC822.SIZE, fixed at select
        self.ended: dict[int, int] = {}  # UID -> octets with the last line ended (0: gone)
        self._layout: tuple[str, str | None] | None = None  # (prefix, delimiter), asked once
        self._ahead: dict[int, bytes] = {}  # UID -> body read ahead, held in the budget until sent
        self._order: list[int] = []  # the snapshot's UIDs in order
        self._position: dict[int, int] = {}  # UID -> its place in _order
        self._seen: list[int] = []  # UIDs ACKS marked, their \Seen not yet sent

    async def _call(self, what: str, op: Awaitable[T]) -> T:
        try:
            return await op
        except ConnError as err:
            self._failed(what, err)

    def _failed(self, what: str, err: ConnError) -> NoReturn:
        log.warning("backend %s: user %r: %s failed: %s", self.store.name, self.user, what, err)
        raise StoreError(FAILED) from None

    async def _imap_name(self, folder: str) -> str | None:
        """The IMAP name of a POP2 folder name, None when it cannot exist."""
        if is_inbox(folder):
            return "INBOX"
        if self._layout is None:
            self._layout = await self._call("NAMESPACE", self.conn.layout())
        prefix, delimiter = self._layout
        return imap_name(folder, delimiter, prefix)

    async def select(self, folder: str) -> list[MessageRef]:
        await self._flush_seen()
        self._reset()
        name = await self._imap_name(folder)
        if name is None:
            return []
        snap = await self._call("SELECT", self.conn.open_folder(name))
        if snap is None:
            return []
        self.folder = name
        self.sizes = {uid: size for uid, size, _ in snap}
        self._order = [uid for uid, _, _ in snap]
        self._position = {uid: n for n, uid in enumerate(self._order)}
        return [MessageRef(str(uid), size, seen) for uid, size, seen in snap]

    def _uid(self, msg: MessageRef) -> int | None:
        uid = int(msg.id) if msg.id.isdigit() else None
        return uid if uid in self.sizes else None

    async def _ended(self, uid: int, recheck: bool = False) -> int:
        """The message's octets with its last line ended: RFC822.SIZE and its last two octets
        (from the body when it was read ahead).

        0 for a message another client removed: the EXPUNGE responses the server sends with
        any command are noted; a message's first count comes with its RFC822.SIZE asked again
        in the same command (a tail fetch, or the read-ahead fetch of its body), and a size the
        server no longer gives, or whose last octets do not come back in full, is never
        announced (Courier's placeholder for a removed message has another size); a count
        already known (`recheck`: announcing a message again, a message read ahead) asks with
        a NOOP first when the server was last asked what changed (a NOOP, the selection)
        `imap_recheck_interval` ago or longer, or the count could be one from before a removal."""
        interval = self.store.limits.imap_recheck_interval
        if recheck and uid in self.ended and self.conn.check_age() >= interval:
            await self._call("NOOP", self.conn.noop())
        if uid not in self.ended and uid not in self.conn.gone:
            await self._learn(uid)
        if uid in self.conn.gone:
            self._forget(uid)
            self.ended[uid] = 0
        return self.ended[uid]

    async def _learn(self, uid: int) -> None:
        size = self.sizes[uid]
        if size == 0:
            self.ended[uid] = 0
        elif not await self._read_ahead(uid):
            tail = await self._call("UID FETCH", self.conn.fetch_tail(uid, size))
            self._confirm(uid, tail, min(size, 2))

    def _confirm(self, uid: int, got: bytes | None, want: int) -> bool:
        """Note the ended size of `uid` from its last `want` octets as fetched (`got`: the
        tail, or the whole body); 0 when it is gone or they do not add up."""
        size = self.sizes[uid]
        if got is not None and len(got) != want:
            log.warning("backend %s: user %r: UID %d: RFC822.SIZE %d not confirmed by its last "
                        "octets; read as no message", self.store.name, self.user, uid, size)
        if got is None or len(got) != want or uid in self.conn.gone:
            self.ended[uid] = 0  # removed, or its size cannot be confirmed
            return False
        self.ended[uid] = ended_size(size, got[-2:])
        return True

    async def _read_ahead(self, uid: int) -> bool:
        """Read `uid` and the small messages after it in one `UID FETCH`, at most
        `imap_readahead` octets, held in the shared budget until sent; False (nothing read)
        when `uid` is not small (at most half of `imap_readahead`, and of `imap_fetch_chunk`
        so no literal is longer than a fetch may be) or the budget has no room to spare now."""
        limit = min(self.store.limits.imap_readahead, 2 * self.store.limits.imap_fetch_chunk)
        if self.sizes[uid] * 2 > limit or uid not in self._position:
            return False  # not small: without a copy of the rest of the folder for each large message
        batch: list[int] = []
        total = 0
        for i in range(self._position[uid], len(self._order)):
            next_uid = self._order[i]
            size = self.sizes[next_uid]
            if next_uid in self.ended or size == 0:
                continue
            if size * 2 > limit or total + size > limit or len(batch) == _READ_AHEAD_MESSAGES:
                break
            batch.append(next_uid)
            total += size
        if not batch or batch[0] != uid or not self.store.budget.try_hold(total):
            return False
        try:
            # The \Seen flags noted so far go in the same write.
            seen, self._seen = self._seen, []
            bodies = await self._call("UID FETCH", self.conn.fetch_bodies({n: self.sizes[n] for n in batch}, seen=seen))
        except BaseException:
            self.store.budget.unhold(total)
            raise
        for n in batch:
            body = bodies.get(n)
            if (n == uid or body is not None) and self._confirm(n, body, self.sizes[n]):
                assert body is not None
                self._ahead[n] = body
            else:
                self.store.budget.unhold(self.sizes[n])
        return True

    def _forget(self, uid: int) -> None:
        body = self._ahead.pop(uid, None)
        if body is not None:
            self.store.budget.unhold(len(body))

    def _reset(self) -> None:
        """Forget the folder: its snapshot, sizes and what was read ahead."""
        for uid in list(self._ahead):
            self._forget(uid)
        self.folder, self.sizes, self.ended = None, {}, {}

    async def wire_size(self, msg: MessageRef) -> int:
        uid = self._uid(msg)
        if uid is None:
            return 0
        return self.store.form.size(await self._ended(uid, recheck=True), msg.seen)

    async def fetch(self, msg: MessageRef) -> AsyncGenerator[bytes, None]:
        """The message's octets in wire form. A body read ahead is sent from memory, asking the
        server nothing: its count went out and these octets are exactly it, so even when
        another client has removed it since, sending it whole is the only correct end."""
        uid = self._uid(msg)
        body = None if uid is None else self._ahead.pop(uid, None)
        ended = 0 if uid is None or body is not None else await self._ended(uid)
        if uid is None or (body is None and ended == 0):
            raise StoreError("No such message")
        enc = self.store.form.encoder(msg.seen, bare_lf=False)
        piece = self.store.limits.retr_chunk_size  # what the session writes at a time
        if body is not None:
            self.store.budget.unhold(len(body))
            parts: AsyncGenerator[bytes, None] = _one(body)
        else:
            assert uid is not None
            parts = self._stream(uid)
        size, offset, tail = len(body) if body is not None else self.sizes[uid], 0, b""
        async with contextlib.aclosing(parts):
            async for data in parts:
                if offset + len(data) > size:
                    self._mismatch(uid, size, offset, data)
                tail = (tail + data[-2:])[-2:]
                offset += len(data)
                for i in range(0, len(data), piece):
                    out = enc.feed(data[i : i + piece])
                    if out:
                        yield out
                del data
        del body
        if offset != size:
            self._mismatch(uid, size, offset, b"")
        if ended and ended_size(offset, tail) != ended:
            self._mismatch(uid, ended, offset, b"")
        out = enc.finish()
        if out:
            yield out

    async def _stream(self, uid: int) -> AsyncGenerator[bytes, None]:
        """The message from the server, in pieces as they arrive; each read from the server is
        counted in the shared budget while it is being read, never while the session has it."""
        budget, limits = self.store.budget, self.store.limits

        async def acquire(n: int) -> None:
            try:
                await budget.acquire(n, limits.imap_budget_timeout)
            except TimeoutError:
                raise _NoRoom(n) from None

        stream = self.conn.stream(uid, self.sizes[uid], limits.imap_fetch_chunk, acquire, budget.release)
        try:
            async with contextlib.aclosing(stream):
                async for data in stream:
                    yield data
        except ConnError as err:
            self._failed("UID FETCH", err)
        except _NoRoom as err:
            log.warning("backend %s: user %r: UID %d: no room in imap_fetch_memory (%d octets) "
                        "for %d octets within imap_budget_timeout (%gs)", self.store.name, self.user,
                        uid, budget.limit, err.args[0], limits.imap_budget_timeout)
            raise StoreError(NO_MEMORY) from None

    def _mismatch(self, uid: int, expected: int, offset: int, data: bytes | None) -> NoReturn:
        got = "nothing (message gone)" if data is None else f"{offset + len(data)} octets so far"
        log.warning("backend %s: user %r: UID %d: announced %d octets, server sent %s",
                    self.store.name, self.user, uid, expected, got)
        raise StoreError(SIZE_MISMATCH)

    async def mark_seen(self, msg: MessageRef) -> None:
        """Note `msg` for `\\Seen`; the flags go out together, in one `UID STORE`: in the same
        write as the next read-ahead `UID FETCH`, at every `_SEEN_BATCH` messages, and when the
        folder is left or the session ends, cleanly or not."""
        uid = self._uid(msg)
        if uid is None or self.conn.readonly:
            return  # nothing to record in a read-only folder
        self._seen.append(uid)
        if len(self._seen) >= _SEEN_BATCH:
            await self._flush_seen()

    async def _flush_seen(self) -> None:
        if self._seen:
            uids, self._seen = self._seen, []
            await self._call("UID STORE", self.conn.add_flag(uids, "\\Seen"))

    async def release(self, deleted: Sequence[MessageRef]) -> None:
        uids = sorted({u for u in (self._uid(m) for m in deleted) if u is not None})
        folder = self.folder
        await self._flush_seen()
        self._reset()
        if not uids:
            return
        if self.conn.readonly:
            log.warning("backend %s: user %r: %s is read-only; %d deletions not applied",
                        self.store.name, self.user, folder, len(uids))
            raise StoreError("Folder is read-only")
        await self._call("UID STORE", self.conn.add_flag(uids, "\\Deleted"))
        if "UIDPLUS" in self.conn.capabilities:
            await self._call("UID EXPUNGE", self.conn.uid_expunge(uids))
        elif self.store.limits.expunge_without_uidplus:
            log.info("backend %s: user %r: no UIDPLUS; plain EXPUNGE in %s",
                     self.store.name, self.user, folder)
            await self._call("EXPUNGE", self.conn.expunge_all())
        else:
            log.warning("backend %s: user %r: no UIDPLUS; %d messages in %s flagged \\Deleted, not expunged",
                        self.store.name, self.user, len(uids), folder)
            return
        log.info("backend %s: user %r: expunged %d messages from %s",
                 self.store.name, self.user, len(uids), folder)

    async def close(self) -> None:
        try:
            await self._flush_seen()  # ACKS counts however the session ends
        except StoreError:
            pass  # logged: the connection is gone either way
        self._reset()
        await self.conn.logout()
