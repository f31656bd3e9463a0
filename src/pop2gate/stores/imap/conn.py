"""One blocking IMAP connection (stdlib imaplib) for one POP2 session.

Every method blocks and is meant to run in a worker thread; a lock keeps it
to one command at a time. Any failure (lost connection, BYE, timeout, an
unexpected NO or BAD) raises ConnError and leaves the connection unusable.
Messages are named by UID only. Nothing here logs, and no error text carries
a credential.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .config import TlsMode
from .wire import (
    FetchPiece,
    ParseError,
    fetch_by_uid,
    id_name,
    list_delimiter,
    personal_namespace,
    quotable,
    quote,
    uid_set,
)

# imaplib only sends commands it knows; ID (RFC 2971) is valid in every state.
imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))

T = TypeVar("T")
_UID_BATCH = 500


class ConnError(Exception):
    """The backend failed; the text is for the log and holds no secrets."""


class _IMAP4(imaplib.IMAP4):
    """Refuses a literal longer than `max_literal` instead of reading it into memory."""

    max_literal = 1 << 20
    # imaplib sends a bytes `literal` as it is, which LOGIN needs; typeshed says str only.
    literal: bytes | str | None  # type: ignore[assignment]

    # Whether `_get_capabilities` may take the server's `[CAPABILITY ...]` response code instead
    # of asking: after the greeting (imaplib's constructor) and after login, never after
    # STARTTLS, where what came before the handshake must not count.
    use_capability_code = True

    def _get_capabilities(self) -> None:
        codes = self.untagged_responses.pop("CAPABILITY", None)
        if self.use_capability_code and codes and isinstance(codes[-1], bytes):
            self.capabilities = tuple(codes[-1].decode("ascii", "replace").upper().split())
            return  # one round trip saved
        super()._get_capabilities()  # type: ignore[misc]  # imaplib's own (untyped)

    def read(self, size: int) -> bytes:
        if size > self.max_literal:
            raise imaplib.IMAP4.abort(f"literal of {size} octets is over the limit")
        return super().read(size)


class _IMAP4_SSL(_IMAP4, imaplib.IMAP4_SSL):
    pass


def tls_context(tls: TlsMode, ca_file: Path | None) -> ssl.SSLContext | None:
    """The client context that verifies the server's certificate and host name (None: no TLS)."""
    if tls == "none":
        return None
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass(frozen=True)
class Target:
    """Where and how to connect."""

    host: str
    port: int
    tls: TlsMode
    ssl_context: ssl.SSLContext | None
    connect_timeout: float
    command_timeout: float
    max_literal: int = 1 << 20


def _reason(err: BaseException) -> str:
    if isinstance(err, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {err.verify_message}"
    text = " ".join(str(err).split())[:100]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


_FAILURES = (imaplib.IMAP4.error, OSError, EOFError, ParseError, ValueError)


def connect(target: Target, peer: tuple[str, int] | None) -> ImapConn:
    """Connect, secure the connection as configured, and announce the client (ID)."""
    imap: _IMAP4
    try:
        if target.tls == "implicit":
            imap = _IMAP4_SSL(target.host, target.port, ssl_context=target.ssl_context,
                              timeout=target.connect_timeout)
        else:
            imap = _IMAP4(target.host, target.port, timeout=target.connect_timeout)
    except _FAILURES as err:
        raise ConnError(f"connect {target.host}:{target.port}: {_reason(err)}") from None
    imap.max_literal = target.max_literal
    imap.use_capability_code = False  # until login (STARTTLS asks afresh)
    # Commands are small and each waits for its answer: Nagle's algorithm meeting the server's
    # delayed ACK would stall each one for tens of milliseconds.
    with contextlib.suppress(OSError):
        imap.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = ImapConn(imap)
    try:
        if target.tls == "starttls":
            if "STARTTLS" not in imap.capabilities:
                raise ConnError("server does not offer STARTTLS")
            imap.starttls(ssl_context=target.ssl_context)
        imap.sock.settimeout(target.command_timeout)
        if peer is not None and "ID" in imap.capabilities:
            conn._send_id(*peer)
    except ConnError:
        conn.abort()
        raise
    except _FAILURES as err:
        conn.abort()
        raise ConnError(f"connect {target.host}:{target.port}: {_reason(err)}") from None
    return conn


def open_session(target: Target, peer: tuple[str, int] | None,
                 authz: str, authc: str, password: str, sasl: tuple[str, bytes] | None = None) -> ImapConn | None:
    """Connect and log in, in one go: None when the backend refused the credentials.

    With `sasl` (mechanism, initial response: an OAuth2 login) that is sent instead of the
    password. One call, so a worker thread never leaves a half-open connection waiting
    for another worker (a backend that queues logins would deadlock the pool).
    """
    conn = connect(target, peer)
    try:
        ok = conn.login_sasl(*sasl) if sasl is not None else conn.login(authz, authc, password)
    except BaseException:
        conn.abort()
        raise
    if not ok:
        conn.logout()
        return None
    return conn


class ImapConn:
    """A connected imaplib client, used through the methods below only."""

    def __init__(self, imap: _IMAP4) -> None:
        self._imap = imap
        self._lock = threading.Lock()
        self._broken = False
        self.readonly = False
        self.server_name: str | None = None  # what the server's ID answer calls it
        self.sequence: list[int] = []  # the selected folder's UIDs in sequence order
        self.gone: set[int] = set()  # UIDs another client expunged since the snapshot
        # When the server was last asked what changed (monotonic: when the NOOP was sent, or
        # the folder selected): every removal before it is in `gone`. Only those answers count:
        # Courier reports an EXPUNGE with a NOOP's answer, never with a UID FETCH's or STORE's.
        self.checked_at = float("-inf")

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(self._imap.capabilities)

    def _guarded(self, what: str, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._broken:
                raise ConnError(f"{what}: connection already failed")
            try:
                return fn()
            except ConnError:
                self._broken = True
                raise
            except _FAILURES as err:
                self._broken = True
                raise ConnError(f"{what}: {_reason(err)}") from None

    def check_age(self) -> float:
        """Seconds since the server was last asked what changed (`checked_at`)."""
        return time.monotonic() - self.checked_at

    def _run(self, *args: str | bytes) -> tuple[str, bytes, list[FetchPiece]]:
        """Send one command; return (status, tagged text, FETCH pieces)."""
        imap = self._imap
        imap.untagged_responses = {}
        typ: str
        dat: list[bytes | None]
        typ, dat = imap._simple_command(*args)  # imaplib's own command runner (untyped)
        self._note_expunges(imap.untagged_responses.pop("EXPUNGE", []))
        if "UIDVALIDITY" in imap.untagged_responses:
            # UIDs no longer name the messages they named at SELECT.
            raise ConnError("UIDVALIDITY changed during the session")
        text = dat[-1] if dat and isinstance(dat[-1], bytes) else b""
        return typ, text, imap.untagged_responses.pop("FETCH", [])

    def _send_id(self, host: str, port: int) -> None:
        """ID (RFC 2971): the real client's address where it has one; the server's answer
        names the server (`server_name`)."""
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return  # not a network client (inetd on a pipe): nothing to tell
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        fields = f'("x-originating-ip" "{addr}" "x-originating-port" "{int(port)}")'
        try:
            self._run("ID", fields)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error:
            return  # a server that rejects ID still serves mail
        answers = self._imap.untagged_responses.get("ID", [])
        self.server_name = id_name(answers[-1]) if answers and isinstance(answers[-1], bytes) else None

    # Login

    def login(self, authz: str, authc: str, password: str) -> bool:
        """True when the backend accepted the credentials, False when it refused."""
        return self._login(lambda: self._password_login(authz, authc, password))

    def login_sasl(self, mechanism: str, response: bytes) -> bool:
        """AUTHENTICATE `mechanism` with one client response (XOAUTH2, OAUTHBEARER): True when
        the backend accepted it. ConnError when the server does not offer the mechanism."""
        if f"AUTH={mechanism.upper()}" not in self._imap.capabilities:
            raise ConnError(f"login: server does not offer AUTH={mechanism.upper()}")
        return self._login(lambda: self._authenticate(mechanism.upper(), response))

    def _password_login(self, authz: str, authc: str, password: str) -> bool:
        imap = self._imap
        if "AUTH=PLAIN" in imap.capabilities:
            # Credentials are octets: what the POP2 client sent goes out as sent (surrogateescape).
            return self._authenticate("PLAIN", f"{authz}\0{authc}\0{password}".encode("utf-8", "surrogateescape"))
        if authz or "LOGINDISABLED" in imap.capabilities:
            return False
        return self._plain_login(authc, password)

    def _login(self, send: Callable[[], bool]) -> bool:
        try:
            return self._guarded("login", lambda: self._logged_in(send))
        finally:
            self.forget_commands()

    def _logged_in(self, send: Callable[[], bool]) -> bool:
        imap = self._imap
        imap.untagged_responses.pop("CAPABILITY", None)  # only the login answer's may count
        try:
            if not send():
                return False
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as err:
            if "[UNAVAILABLE]" in str(err):
                raise ConnError("login: backend unavailable") from None
            return False
        imap.state = "AUTH"
        imap.use_capability_code = True  # the login answer's, over the connection as secured
        try:
            imap._get_capabilities()
        finally:
            imap.use_capability_code = False
        return True

    def forget_commands(self) -> None:
        """Drop imaplib's in-memory record of recent commands (it holds the LOGIN line)."""
        getattr(self._imap, "_cmd_log", {}).clear()

    def _authenticate(self, mechanism: str, response: bytes) -> bool:
        """AUTHENTICATE with one response; True once accepted (a refusal raises imaplib's error)."""
        payload = [response]

        def answer(_challenge: bytes) -> bytes | None:
            # The credentials go out once; a second challenge (an error) cancels the exchange.
            return payload.pop() if payload else None

        imap = self._imap
        if mechanism == "PLAIN" and "SASL-IR" in imap.capabilities:
            # RFC 4959: the credentials with the command, one round trip. Only for PLAIN, whose
            # refusal is a tagged NO; XOAUTH2 and OAUTHBEARER answer a bad token with a challenge
            # that needs a reply, which imaplib's exchange below gives.
            encoded = base64.b64encode(response).decode("ascii")
            typ, dat = imap._simple_command("AUTHENTICATE", mechanism, encoded)
            if typ != "OK":
                raise imaplib.IMAP4.error(dat[-1].decode("utf-8", "replace") if dat and dat[-1] else typ)
            return True
        imap.authenticate(mechanism, answer)
        return True

    def _plain_login(self, user: str, password: str) -> bool:
        imap = self._imap
        if quotable(user):
            user_arg: bytes = quote(user).encode("ascii")
        elif "LITERAL+" in imap.capabilities:
            raw = user.encode("utf-8", "surrogateescape")
            user_arg = b"{%d+}\r\n" % len(raw) + raw
        else:
            return False
        typ: str
        dat: list[bytes | None]
        if quotable(password):
            typ, dat = imap._simple_command("LOGIN", user_arg, quote(password))
        else:
            imap.literal = password.encode("utf-8", "surrogateescape")
            typ, dat = imap._simple_command("LOGIN", user_arg)
        if typ != "OK":
            last = dat[-1] if dat else None
            raise imaplib.IMAP4.error(last.decode("utf-8", "replace") if last else typ)
        return True

    # Folders

    def layout(self) -> tuple[str, str | None]:
        """(prefix, delimiter) of the user's folders: the personal namespace where the server
        tells it (NAMESPACE, RFC 2342), else no prefix and the delimiter `LIST "" ""` gives
        (None: flat)."""

        def run() -> tuple[str, str | None]:
            if "NAMESPACE" in self._imap.capabilities:
                typ, _, _ = self._run("NAMESPACE")
                lines = self._imap.untagged_responses.get("NAMESPACE", [])
                if typ == "OK" and lines and isinstance(lines[-1], bytes):
                    personal = personal_namespace(lines[-1])
                    if personal is not None:
                        return personal
            typ, _, _ = self._run("LIST", '""', '""')
            lines = self._imap.untagged_responses.get("LIST", [])
            if typ != "OK" or not lines or not isinstance(lines[-1], bytes):
                return "", None
            return "", list_delimiter(lines[-1])

        return self._guarded("NAMESPACE", run)

    def select(self, name: str) -> int | None:
        """Select `name` (already in IMAP form); its EXISTS count, None when refused."""

        def run() -> int | None:
            imap = self._imap
            self.readonly = False
            try:
                typ, dat = imap.select(quote(name))
            except imaplib.IMAP4.readonly:
                self.readonly = True
                typ, dat = imap.select(quote(name), readonly=True)
            if typ != "OK":
                return None
            return int(dat[-1]) if dat and dat[-1] is not None else 0

        return self._guarded("SELECT", run)

    def _note_expunges(self, numbers: Sequence[object]) -> None:
        """Untagged EXPUNGE responses, in the order they came: each removes the message at that
        sequence number, so the UIDs another client removed are known (`gone`)."""
        for raw in numbers:
            n = int(raw) if isinstance(raw, bytes) and raw.isdigit() else 0
            if 1 <= n <= len(self.sequence):
                self.gone.add(self.sequence.pop(n - 1))

    def noop(self) -> None:
        """NOOP: lets the server tell what changed (EXPUNGE responses land in `gone`)."""

        def run() -> None:
            sent = time.monotonic()
            typ, _, _ = self._run("NOOP")
            if typ != "OK":
                raise ConnError(f"NOOP: {typ}")
            self.checked_at = sent

        self._guarded("NOOP", run)

    def open_folder(self, name: str) -> list[tuple[int, int, bool]] | None:
        """`select` then `snapshot`, in one call (one trip to a worker thread); None when the
        folder was refused. The selection counts as the server's report of what changed
        (`checked_at`)."""
        sent = time.monotonic()
        exists = self.select(name)
        if exists is None:
            return None
        snap = self.snapshot() if exists else []
        self.checked_at = sent
        return snap

    def snapshot(self) -> list[tuple[int, int, bool]]:
        """(UID, RFC822.SIZE, seen) of every message not flagged \\Deleted, by UID. Every UID
        in sequence order is kept (`sequence`), to map later EXPUNGE responses to UIDs."""

        def run() -> list[tuple[int, int, bool]]:
            self.sequence, self.gone = [], set()
            typ, _, items = self._run("UID", "FETCH", "1:*", "(UID RFC822.SIZE FLAGS)")
            if typ != "OK":
                raise ConnError(f"UID FETCH: {typ}")
            out: list[tuple[int, int, bool]] = []
            by_uid = fetch_by_uid(items)
            self.sequence = sorted(by_uid)  # UIDs ascend with sequence numbers (RFC 3501)
            for uid, data in by_uid.items():
                size, flags = data.get("RFC822.SIZE"), data.get("FLAGS")
                if not isinstance(size, str) or not size.isdigit() or not isinstance(flags, list):
                    raise ConnError(f"UID FETCH: incomplete data for UID {uid}")
                names = {str(f).upper() for f in flags}
                if "\\DELETED" not in names:
                    out.append((uid, int(size), "\\SEEN" in names))
            return sorted(out)

        return self._guarded("UID FETCH", run)

    # Messages

    def fetch_body(self, uid: int, offset: int | None = None, length: int | None = None) -> bytes | None:
        """`BODY.PEEK[]` (or the part at offset/length) of `uid`; None when it is gone."""
        item = "BODY.PEEK[]" if offset is None else f"BODY.PEEK[]<{offset}.{length}>"

        def run() -> bytes | None:
            typ, text, items = self._run("UID", "FETCH", str(uid), f"({item})")
            if typ != "OK" and not _expunge_issued(typ, text):
                raise ConnError(f"UID FETCH: {typ}")
            body = fetch_by_uid(items).get(uid, {}).get("BODY[]")
            if body is not None and not isinstance(body, bytes):
                raise ConnError("UID FETCH: unreadable body")
            return body

        return self._guarded("UID FETCH", run)

    def fetch_tail(self, uid: int, size: int) -> bytes | None:
        """The last octets (two at most) of `uid`, whose RFC822.SIZE was `size`, with its
        RFC822.SIZE asked again in the same command: None when the message is gone or the
        server now gives another size (Courier serves a placeholder for a message another
        session removed, until a NOOP tells this one)."""
        want = min(size, 2)

        def run() -> bytes | None:
            typ, text, items = self._run("UID", "FETCH", str(uid), f"(RFC822.SIZE BODY.PEEK[]<{size - want}.{want}>)")
            if typ != "OK" and not _expunge_issued(typ, text):
                raise ConnError(f"UID FETCH: {typ}")
            data = fetch_by_uid(items).get(uid, {})
            tail, now = data.get("BODY[]"), data.get("RFC822.SIZE")
            if tail is not None and not isinstance(tail, bytes):
                raise ConnError("UID FETCH: unreadable body")
            return tail if now is None or now == str(size) else None

        return self._guarded("UID FETCH", run)

    def fetch_bodies(self, sizes: dict[int, int]) -> dict[int, bytes]:
        """`BODY.PEEK[]` of several messages (UID -> RFC822.SIZE at the snapshot) in one `UID
        FETCH`, with their RFC822.SIZE asked again; a message gone, or whose size the server
        no longer gives (see `fetch_tail`), is missing."""

        def run() -> dict[int, bytes]:
            typ, text, items = self._run("UID", "FETCH", uid_set(sizes), "(RFC822.SIZE BODY.PEEK[])")
            if typ != "OK" and not _expunge_issued(typ, text):
                raise ConnError(f"UID FETCH: {typ}")
            out: dict[int, bytes] = {}
            for uid, data in fetch_by_uid(items).items():
                body, now = data.get("BODY[]"), data.get("RFC822.SIZE")
                if uid in sizes and isinstance(body, bytes) and (now is None or now == str(sizes[uid])):
                    out[uid] = body
            return out

        return self._guarded("UID FETCH", run)

    def add_flag(self, uids: Iterable[int], flag: str) -> None:
        """`UID STORE +FLAGS.SILENT (flag)`; messages already gone are no error."""

        def run() -> None:
            for batch in _batches(uids):
                typ, text, _ = self._run("UID", "STORE", uid_set(batch), "+FLAGS.SILENT", f"({flag})")
                if typ != "OK" and not _expunge_issued(typ, text):
                    raise ConnError(f"UID STORE: {typ}")

        self._guarded("UID STORE", run)

    def uid_expunge(self, uids: Iterable[int]) -> None:
        """`UID EXPUNGE` (UIDPLUS): removes exactly these messages."""

        def run() -> None:
            for batch in _batches(uids):
                typ, _, _ = self._run("UID", "EXPUNGE", uid_set(batch))
                if typ != "OK":
                    raise ConnError(f"UID EXPUNGE: {typ}")

        self._guarded("UID EXPUNGE", run)

    def expunge_all(self) -> None:
        """Plain EXPUNGE: also removes what other clients flagged \\Deleted."""

        def run() -> None:
            typ, _, _ = self._run("EXPUNGE")
            if typ != "OK":
                raise ConnError(f"EXPUNGE: {typ}")

        self._guarded("EXPUNGE", run)

    # Ending

    def logout(self, timeout: float = 5.0) -> None:
        """LOGOUT (which never expunges); abort instead when a command is in flight."""
        if not self._lock.acquire(blocking=False):
            self.abort()
            return
        try:
            if not self._broken:
                self._imap.sock.settimeout(timeout)
                self._imap.logout()
        except _FAILURES:
            pass
        finally:
            self._broken = True
            self._lock.release()
            self.abort()

    def abort(self) -> None:
        """Cut the connection now; safe from any thread."""
        self._broken = True
        try:
            # The plain socket call, so a thread blocked in a TLS read wakes up.
            socket.socket.shutdown(self._imap.sock, socket.SHUT_RDWR)
        except OSError:
            pass
        if self._lock.acquire(blocking=False):
            try:
                self._imap.sock.close()
                self._imap.file.close()
            except OSError:
                pass
            finally:
                self._lock.release()


def _expunge_issued(typ: str, text: bytes) -> bool:
    """NO [EXPUNGEISSUED]: some of the messages were removed by someone else."""
    return typ == "NO" and text.upper().startswith(b"[EXPUNGEISSUED]")


def _batches(uids: Iterable[int]) -> list[list[int]]:
    items = sorted(set(uids))
    return [items[i : i + _UID_BATCH] for i in range(0, len(items), _UID_BATCH)]
