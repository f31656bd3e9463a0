"""One asyncio IMAP connection for one POP2 session: the commands pop2gate sends.

They run on `transport.Transport` (pipelined, tagged, one deadline each); connecting has its
own deadline (`imap_connect_timeout`). An unexpected NO or BAD raises ConnError and leaves
the connection unusable. Messages are named by UID only. Nothing here logs, and no error
text carries a credential.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import ipaddress
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from pathlib import Path

from .config import TlsMode
from .parser import LiteralPiece, ResponseError
from .transport import FAILURES, READ_SIZE, Command, ConnError, Target, Transport, reason
from .wire import (
    FetchValue,
    fetch_by_uid,
    id_name,
    list_delimiter,
    personal_namespace,
    quotable,
    quote,
    uid_set,
)

__all__ = ["ConnError", "ImapConn", "Target", "connect", "open_session", "tls_context"]

_UID_BATCH = 500
_SNAPSHOT = "(UID RFC822.SIZE FLAGS)"
_LOGOUT_WAIT = 5.0  # seconds LOGOUT's answer is awaited: a clean end for the server, never a wait on it
_ORIGIN = re.compile(rb"BODY\[\]<([0-9]{1,10})> \Z", re.I)
_FETCH_PREFIX = re.compile(rb"\* ([0-9]{1,10}) FETCH ")


def tls_context(tls: TlsMode, ca_file: Path | None) -> ssl.SSLContext | None:
    """The client context that verifies the server's certificate and host name (None: no TLS)."""
    if tls == "none":
        return None
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _capabilities(text: bytes) -> frozenset[str]:
    """`CAPABILITY IMAP4rev1 AUTH=PLAIN ...` (a response code or an untagged line without its
    keyword) -> the names, upper case."""
    words = text.decode("ascii", "replace").upper().split()
    return frozenset(words[1:] if words and words[0] == "CAPABILITY" else words)


async def connect(target: Target, peer: tuple[str, int] | None) -> ImapConn:
    """Connect, read the greeting, secure the connection as configured, and know the
    server's capabilities. `peer` goes to the server (ID) with the login."""
    implicit = target.tls == "implicit"
    conn: ImapConn | None = None
    try:
        async with asyncio.timeout(target.connect_timeout):
            reader, writer = await asyncio.open_connection(
                target.host, target.port, ssl=target.ssl_context if implicit else None,
                server_hostname=target.host if implicit else None, limit=READ_SIZE)
            conn = ImapConn(reader, writer, target, peer)
            code = await conn._greeting()
            if code.upper().startswith(b"CAPABILITY "):
                conn.capabilities = _capabilities(code)
            if target.tls == "starttls":
                await conn._starttls()
            if not conn.capabilities:
                await conn._ask_capabilities()
    except BaseException as err:
        if conn is not None:
            conn.abort()  # failed, or the session was cancelled: no connection left open
        if isinstance(err, FAILURES):
            raise ConnError(f"connect {target.host}:{target.port}: {reason(err)}") from None
        raise
    return conn


async def open_session(target: Target, peer: tuple[str, int] | None,
                       authz: str, authc: str, password: str, sasl: tuple[str, bytes] | None = None) -> ImapConn | None:
    """Connect and log in: None when the backend refused the credentials. With `sasl`
    (mechanism, initial response: an OAuth2 login) that is sent instead of the password."""
    conn = await connect(target, peer)
    try:
        ok = await (conn.login_sasl(*sasl) if sasl is not None else conn.login(authz, authc, password))
    except BaseException:
        conn.abort()
        raise
    if not ok:
        await conn.logout()
        return None
    return conn


class ImapConn(Transport):
    """A connected IMAP client, used through the methods below only."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Target,
                 peer: tuple[str, int] | None) -> None:
        super().__init__(reader, writer, target)
        self._peer = peer
        self.capabilities: frozenset[str] = frozenset()
        self.readonly = False
        self.server_name: str | None = None  # what the server's ID answer calls it
        # When the server was last asked what changed (monotonic: when the NOOP was sent, or
        # the folder selected): every removal before it is in `gone`. Only those answers count:
        # Courier reports an EXPUNGE with a NOOP's answer, never with a UID FETCH's or STORE's.
        self.checked_at = float("-inf")

    def check_age(self) -> float:
        """Seconds since the server was last asked what changed (`checked_at`)."""
        return time.monotonic() - self.checked_at

    # Connecting

    async def _ask_capabilities(self) -> None:
        cmd = await self._run("CAPABILITY")
        lines = cmd.data("CAPABILITY")
        if cmd.status != "OK" or not lines:
            raise ConnError(f"CAPABILITY: {cmd.status}")
        self.capabilities = _capabilities(lines[-1].line)

    async def _starttls(self) -> None:
        if not self.capabilities:
            await self._ask_capabilities()
        if "STARTTLS" not in self.capabilities:
            raise ConnError("server does not offer STARTTLS")
        cmd = await self._run("STARTTLS")
        if cmd.status != "OK":
            raise ConnError(f"STARTTLS: {cmd.status}")
        if self._parser.pending:
            raise ConnError("STARTTLS: the server sent data before the handshake")
        await self._writer.start_tls(self._target.ssl_context,  # type: ignore[arg-type]
                                     server_hostname=self._target.host)
        self.capabilities = frozenset()  # nothing said before the handshake counts

    def _id_command(self) -> Command | None:
        """ID (RFC 2971) with the real client's address, where it has one and the server
        offers ID."""
        if self._peer is None or "ID" not in self.capabilities:
            return None
        host, port = self._peer
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return None  # not a network client (inetd on a pipe): nothing to tell
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return self._command("ID", f'("x-originating-ip" "{addr}" "x-originating-port" "{int(port)}")')

    # Login

    async def login(self, authz: str, authc: str, password: str) -> bool:
        """True when the backend accepted the credentials, False when it refused."""
        if "AUTH=PLAIN" in self.capabilities:
            # Credentials are octets: what the POP2 client sent goes out as sent (surrogateescape).
            raw = f"{authz}\0{authc}\0{password}".encode("utf-8", "surrogateescape")
            return await self._guarded("login", lambda: self._logged_in(lambda: self._authenticate("PLAIN", raw)))
        if authz or "LOGINDISABLED" in self.capabilities:
            return False
        if not quotable(authc) and "LITERAL+" not in self.capabilities:
            return False  # a user name that is neither a quoted string nor a LITERAL+ literal
        return await self._guarded("login", lambda: self._logged_in(lambda: self._login_command(authc, password)))

    async def login_sasl(self, mechanism: str, response: bytes) -> bool:
        """AUTHENTICATE `mechanism` with one client response (XOAUTH2, OAUTHBEARER): True when
        the backend accepted it. ConnError when the server does not offer the mechanism."""
        name = mechanism.upper()
        if f"AUTH={name}" not in self.capabilities:
            raise ConnError(f"login: server does not offer AUTH={name}")
        return await self._guarded("login", lambda: self._logged_in(lambda: self._authenticate(name, response)))

    def _authenticate(self, mechanism: str, response: bytes) -> Command:
        """AUTHENTICATE with one response: with the command (SASL-IR, RFC 4959) when the
        server takes it, else at its first challenge. Any later challenge (a bad OAuth2
        token's error) gets the empty reply that lets the server answer NO."""
        encoded = base64.b64encode(response) or b"="
        replies = deque([] if "SASL-IR" in self.capabilities else [encoded])

        def answer(_challenge: bytes) -> bytes:
            return (replies.popleft() if replies else b"") + b"\r\n"

        if "SASL-IR" in self.capabilities:
            return self._command("AUTHENTICATE", mechanism, encoded, answer=answer)
        return self._command("AUTHENTICATE", mechanism, answer=answer)

    def _login_command(self, user: str, password: str) -> Command:
        """LOGIN with quoted strings, or literals: non-synchronizing with LITERAL+, else the
        password as a synchronizing one (the user name needs LITERAL+)."""
        plus = "LITERAL+" in self.capabilities
        if quotable(user):
            user_arg = quote(user).encode("ascii")
        else:
            raw = user.encode("utf-8", "surrogateescape")
            user_arg = b"{%d+}\r\n" % len(raw) + raw
        if quotable(password):
            return self._command("LOGIN", user_arg, quote(password))
        secret = password.encode("utf-8", "surrogateescape")
        if plus:
            return self._command("LOGIN", user_arg, b"{%d+}\r\n" % len(secret) + secret)
        cmd = self._command("LOGIN", user_arg, b"{%d}" % len(secret), more=[secret + b"\r\n"])
        return cmd

    async def _logged_in(self, make: Callable[[], Command]) -> bool:
        """Send the login command (after ID, in the same write); True once accepted."""
        id_cmd = self._id_command()
        cmd = make()
        self._send(*([id_cmd] if id_cmd else []), cmd)
        if id_cmd is not None:
            await self._finish(id_cmd)
            answers = id_cmd.data("ID")
            if id_cmd.status == "OK" and answers:  # a server that rejects ID still serves mail
                self.server_name = id_name(answers[-1].line)
        await self._finish(cmd)
        cmd.segments.clear()
        done = cmd.done
        assert done is not None
        if done.status != "OK":
            if done.code.upper().startswith(b"UNAVAILABLE"):
                raise ConnError("login: backend unavailable")
            return False
        # The login answer's capabilities, over the connection as secured.
        if done.code.upper().startswith(b"CAPABILITY "):
            self.capabilities = _capabilities(done.code)
        elif lines := cmd.data("CAPABILITY"):
            self.capabilities = _capabilities(lines[-1].line)
        else:
            await self._ask_capabilities()
        return True

    # Folders

    async def layout(self) -> tuple[str, str | None]:
        """(prefix, delimiter) of the user's folders: the personal namespace where the server
        tells it (NAMESPACE, RFC 2342), else no prefix and the delimiter `LIST "" ""` gives
        (None: flat)."""

        async def run() -> tuple[str, str | None]:
            if "NAMESPACE" in self.capabilities:
                cmd = await self._run("NAMESPACE")
                lines = cmd.data("NAMESPACE")
                if cmd.status == "OK" and lines:
                    personal = personal_namespace(lines[-1].line)
                    if personal is not None:
                        return personal
            cmd = await self._run("LIST", '""', '""')
            lines = cmd.data("LIST")
            if cmd.status != "OK" or not lines:
                return "", None
            return "", list_delimiter(lines[-1].line)

        return await self._guarded("NAMESPACE", run)

    async def open_folder(self, name: str) -> list[tuple[int, int, bool]] | None:
        """SELECT `name` (already in IMAP form) and, in the same write, `UID FETCH 1:* (UID
        RFC822.SIZE FLAGS)`: (UID, RFC822.SIZE, seen) of every message not flagged \\Deleted,
        by UID; None when the folder was refused. A `[READ-ONLY]` answer leaves the folder
        read-only (`readonly`). Every UID in sequence order is kept (`sequence`), to map later
        EXPUNGE responses to UIDs. The selection counts as the server's report of what
        changed (`checked_at`)."""

        async def run() -> list[tuple[int, int, bool]] | None:
            sent = time.monotonic()
            select = self._command("SELECT", quote(name))
            fetch = self._command("UID", "FETCH", "1:*", _SNAPSHOT)
            self.sequence, self.gone, self.readonly = [], set(), False
            self._send(select, fetch)
            await self._finish(select)
            await self._finish(fetch)
            done = select.done
            assert done is not None
            if done.status != "OK":
                return None
            self.readonly = done.code.upper() == b"READ-ONLY"
            exists = [u.number for u in select.data("EXISTS") if u.number is not None]
            if fetch.status != "OK":
                if exists and exists[-1] == 0:
                    return []  # some servers refuse 1:* in an empty folder
                raise ConnError(f"UID FETCH: {fetch.status}")
            out: list[tuple[int, int, bool]] = []
            by_uid = fetch_by_uid(u.parts for u in fetch.data("FETCH"))
            self.sequence = sorted(by_uid)  # UIDs ascend with sequence numbers (RFC 3501)
            for uid, data in by_uid.items():
                size, flags = data.get("RFC822.SIZE"), data.get("FLAGS")
                if not isinstance(size, str) or not size.isdigit() or not isinstance(flags, list):
                    raise ConnError(f"UID FETCH: incomplete data for UID {uid}")
                names = {str(f).upper() for f in flags}
                if "\\DELETED" not in names:
                    out.append((uid, int(size), "\\SEEN" in names))
            self.checked_at = sent
            return sorted(out)

        return await self._guarded("SELECT", run)

    async def noop(self) -> None:
        """NOOP: lets the server tell what changed (EXPUNGE responses land in `gone`)."""

        async def run() -> None:
            sent = time.monotonic()
            cmd = await self._run("NOOP")
            if cmd.status != "OK":
                raise ConnError(f"NOOP: {cmd.status}")
            self.checked_at = sent

        await self._guarded("NOOP", run)

    # Messages

    async def fetch_bodies(self, sizes: dict[int, int], part: tuple[int, int] | None = None,
                           seen: Iterable[int] = ()) -> dict[int, bytes]:
        """`BODY.PEEK[]` (or the `part` (offset, length) of it) of messages (UID ->
        RFC822.SIZE at the snapshot) in one `UID FETCH`, with their RFC822.SIZE asked again; a
        message gone, or whose size the server no longer gives (Courier serves a placeholder
        for a message another session removed, until a NOOP tells this one), is missing.
        `seen`: UIDs (at most `_UID_BATCH`) to flag `\\Seen` first, in the same write."""
        item = "BODY.PEEK[]" if part is None else f"BODY.PEEK[]<{part[0]}.{part[1]}>"
        flags = sorted(set(seen))

        async def run() -> dict[int, bytes]:
            store = self._store_command(flags, "\\Seen") if flags else None
            cmd = self._command("UID", "FETCH", uid_set(sizes), f"(RFC822.SIZE {item})")
            self._send(*([store] if store else []), cmd)
            if store is not None:
                self._check("UID STORE", await self._finish(store))
            self._check("UID FETCH", await self._finish(cmd))
            out: dict[int, bytes] = {}
            for uid, data in fetch_by_uid(u.parts for u in cmd.data("FETCH")).items():
                body, now = data.get("BODY[]"), data.get("RFC822.SIZE")
                if uid in sizes and isinstance(body, bytes) and _same_size(now, sizes[uid]):
                    out[uid] = body
            return out

        return await self._guarded("UID FETCH", run)

    async def fetch_tail(self, uid: int, size: int) -> bytes | None:
        """The last octets (two at most) of `uid`, whose RFC822.SIZE was `size`: None when the
        message is gone or the server now gives another size."""
        want = min(size, 2)
        return (await self.fetch_bodies({uid: size}, (size - want, want))).get(uid)

    async def stream(self, uid: int, size: int, chunk: int, acquire: Callable[[int], Awaitable[None]],
                     release: Callable[[int], None]) -> AsyncGenerator[bytes, None]:
        """`BODY.PEEK[]` of `uid` (RFC822.SIZE `size`) in partial fetches of `chunk` octets,
        handed on in pieces as they arrive; the next partial fetch is sent as soon as the
        literal before it has arrived, before its last octets are handed on. (Sent when that
        literal only starts to arrive, Dovecot delivered 20-30% slower: measured.) Before
        each read from the server `acquire` is awaited for the octets it may bring, and
        `release` called once they are in hand, before they are handed on: no octets count
        while the consumer has them. Fewer octets than `size` when the message is gone."""
        plan = deque(self._command("UID", "FETCH", str(uid), f"(BODY.PEEK[]<{offset}.{chunk}>)")
                     for offset in range(0, size, chunk))
        pieces: deque[bytes] = deque()
        started: set[bytes] = set()  # tags whose literal began to arrive
        arrived: set[bytes] = set()  # tags whose literal arrived whole
        current: list[Command] = []  # the command whose answer is being read
        received = [0]  # octets of the message so far
        waited: dict[bytes, float] = {}  # tag -> seconds spent waiting for its answer

        def on_piece(tag: bytes, event: LiteralPiece) -> None:
            m = _FETCH_PREFIX.match(event.prefix)
            seq = int(m.group(1)) if m else 0
            if m is None or b"BODY[]" not in event.prefix.upper() or (
                    self.sequence and not (0 < seq <= len(self.sequence) and self.sequence[seq - 1] == uid)):
                raise ResponseError("a literal over the limit that is not the body asked for")
            if event.offset == 0:
                origin = _ORIGIN.search(event.prefix)
                if origin is None or int(origin.group(1)) != received[0]:
                    raise ResponseError("partial fetches answered out of order")
            received[0] += len(event.data)
            if event.data:
                pieces.append(event.data)
            started.add(tag)
            if event.offset + len(event.data) == event.size:
                arrived.add(tag)

        for cmd in plan:
            cmd.on_piece = functools.partial(on_piece, cmd.tag)
        loop = asyncio.get_running_loop()
        with self._exclusive("UID FETCH"):
            self._parser.stream_over = 0
            try:
                while plan or current:
                    if not current:
                        current.append(plan.popleft())
                        if current[0].segments:
                            self._send(current[0])
                    cmd = current[0]
                    if cmd.tag in arrived and plan and plan[0].segments:
                        self._send(plan[0])  # the next partial fetch, before this one is handed on whole
                    while cmd.done is None and not pieces:
                        # What this read may bring: at most a chunk, and what is left of the
                        # message with room for the response text around it.
                        want = min(READ_SIZE, chunk, size - received[0] + 1024)
                        await acquire(want)
                        try:
                            # One deadline per command: the time spent waiting for its answer, not
                            # the time the consumer takes with what came.
                            start = loop.time()
                            async with asyncio.timeout(self._target.command_timeout - waited.get(cmd.tag, 0.0)):
                                await self._writer.drain()
                                data = await self._reader.read(want)
                            waited[cmd.tag] = waited.get(cmd.tag, 0.0) + loop.time() - start
                            self._take(data)
                        finally:
                            release(want)
                        if cmd.tag in arrived and plan and plan[0].segments:
                            self._send(plan[0])
                    while pieces:
                        yield pieces.popleft()
                    if cmd.done is not None:
                        current.clear()
                        if self._bye is not None:
                            raise ConnError(f"UID FETCH: server said BYE{self._bye_text()}")
                        self._check("UID FETCH", cmd)
                        if plan and plan[0].segments and cmd.tag not in started:
                            plan.clear()  # nothing came for this part: the message is gone, or shorter
            finally:
                self._parser.stream_over = None

    @staticmethod
    def _check(what: str, cmd: Command) -> None:
        if not cmd.ok_or_expunge_issued():
            raise ConnError(f"{what}: {cmd.status}")

    def _store_command(self, uids: list[int], flag: str) -> Command:
        return self._command("UID", "STORE", uid_set(uids), "+FLAGS.SILENT", f"({flag})")

    async def add_flag(self, uids: Iterable[int], flag: str) -> None:
        """`UID STORE +FLAGS.SILENT (flag)`; messages already gone are no error."""

        async def run() -> None:
            for batch in _batches(uids):
                cmd = self._store_command(batch, flag)
                self._send(cmd)
                self._check("UID STORE", await self._finish(cmd))

        await self._guarded("UID STORE", run)

    async def uid_expunge(self, uids: Iterable[int]) -> None:
        """`UID EXPUNGE` (UIDPLUS): removes exactly these messages."""

        async def run() -> None:
            for batch in _batches(uids):
                cmd = await self._run("UID", "EXPUNGE", uid_set(batch))
                if cmd.status != "OK":
                    raise ConnError(f"UID EXPUNGE: {cmd.status}")

        await self._guarded("UID EXPUNGE", run)

    async def expunge_all(self) -> None:
        """Plain EXPUNGE: also removes what other clients flagged \\Deleted."""

        async def run() -> None:
            cmd = await self._run("EXPUNGE")
            if cmd.status != "OK":
                raise ConnError(f"EXPUNGE: {cmd.status}")

        await self._guarded("EXPUNGE", run)

    # Ending

    async def logout(self) -> None:
        """LOGOUT (which never expunges), its answer awaited for at most `_LOGOUT_WAIT` (the
        POP2 client has had its reply by then), then the connection closed; only closed when
        a command is in flight or it already failed."""
        if not (self._broken or self._busy):
            self._broken = True
            with contextlib.suppress(ConnError, *FAILURES):
                async with asyncio.timeout(min(_LOGOUT_WAIT, self._target.command_timeout)):
                    await self._run("LOGOUT")
                self._writer.close()
                return
        self.abort()

    def abort(self) -> None:
        """Cut the connection now."""
        self._broken = True
        self._writer.transport.abort()


def _same_size(now: FetchValue, size: int) -> bool:
    return now is None or now == str(size)


def _batches(uids: Iterable[int]) -> list[list[int]]:
    items = sorted(set(uids))
    return [items[i : i + _UID_BATCH] for i in range(0, len(items), _UID_BATCH)]
