"""`pop2gate fetch`: drive a POP2 session that lists a mailbox or moves it out.

A message is acknowledged (ACKS to keep it, ACKD to delete it) only after its writer
(mailfiles.py) made it durable. A message that arrives short, long or cut off is
discarded and the session is dropped without QUIT, so the server deletes nothing.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .check.targets import TargetError, parse_target
from .mailfiles import Pending, WriteError, Writer, disk_errors
from .pop2.client import (
    DEFAULT_PORT,
    Client,
    ConnectionClosed,
    LocalProtocolError,
    Pop2Error,
    ProtocolError,
)


class FetchError(Exception):
    """What went wrong, in one line for the user."""


class Progress(Protocol):
    """What the copy loop reports (a progress bar, or nothing)."""

    def start(self, messages: int, octets: int) -> None: ...
    def advance(self, octets: int) -> None: ...
    def done(self) -> None: ...


class NoProgress:
    def start(self, messages: int, octets: int) -> None:
        pass

    def advance(self, octets: int) -> None:
        pass

    def done(self) -> None:
        pass


@dataclass
class Summary:
    saved: int = 0
    octets: int = 0
    stopped: bool = False  # Ctrl-C: the rest was left for another run


def parse_host_port(text: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` (as `pop2gate check` reads them); port 109 by default."""
    host, port = parse_target(text)  # TargetError passes up
    return host, DEFAULT_PORT if port is None else port


def tls_context(ca_file: Path | None, insecure: bool) -> ssl.SSLContext:
    """TLS 1.2 or later; the certificate and name verified against the system's CAs or `ca_file`,
    unless `insecure`."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connect(host: str, port: int, *, timeout: float, connect_timeout: float,
            context: ssl.SSLContext | None) -> Client:
    """A connected client that has read the greeting; FetchError when there is none."""
    try:
        return Client.connect(host, port, timeout=timeout, connect_timeout=connect_timeout, ssl_context=context)
    except ssl.SSLCertVerificationError as err:
        raise FetchError(f"TLS certificate of {host} not accepted: {err.verify_message}") from err
    except ssl.SSLError as err:
        raise FetchError(f"TLS with {host}:{port} failed: {err.reason or err}") from err
    except TimeoutError as err:
        raise FetchError(f"no answer from {host}:{port} (timed out connecting or waiting for the greeting)") from err
    except OSError as err:
        raise FetchError(f"cannot connect to {host}:{port}: {err.strerror or err}") from err
    except ProtocolError as err:
        raise FetchError(f"{host}:{port} is not a POP2 server: {err}") from err


def login(client: Client, user: str, password: str, folder: str | None) -> int:
    """HELO (and FOLD): the number of messages."""
    count = _ask(lambda: client.helo(user, password), "at login", "login refused",
                 "cannot log in with that name or password")
    if not folder:
        return count
    return _ask(lambda: client.fold(folder), "at FOLD", f"folder {folder!r} refused",
                f"cannot ask for folder {folder!r}")


def _ask(call: Callable[[], int], when: str, refused: str, unsendable: str) -> int:
    """One command and its reply; each way it can fail as a FetchError."""
    try:
        return call()
    except Pop2Error as err:
        raise FetchError(f"{refused}: {err.text}") from err
    except LocalProtocolError as err:
        raise FetchError(f"{unsendable}: {err}") from err
    except (ProtocolError, OSError) as err:
        raise FetchError(_network(err, when)) from err


def sizes(client: Client, count: int, limit: int | None = None,
          stop: Callable[[], bool] = lambda: False) -> list[tuple[int, int]]:
    """(number, octets) of the messages to take, in order: READ each, skip empty ones
    (deleted by someone else), at most `limit`, until `stop()`. Changes nothing on the server."""
    found: list[tuple[int, int]] = []
    try:
        for n in range(1, count + 1):
            if (limit is not None and len(found) >= limit) or stop():
                break
            if size := client.read(n):
                found.append((n, size))
    except (ProtocolError, OSError) as err:
        raise FetchError(_network(err, "while reading the sizes")) from err
    return found


def copy(client: Client, messages: list[tuple[int, int]], writer: Writer, delete: bool,
         progress: Progress | None = None, stop: Callable[[], bool] = lambda: False) -> Summary:
    """Each message: READ (unless the last ACK announced it), RETR into the writer, commit,
    then ACKD (`delete`) or ACKS, whose `=c` is the next message's length (RFC 937).

    `stop()` is asked before each message (after the first Ctrl-C). Any failure raises
    FetchError with nothing of the current message written; the caller must then close
    without QUIT.
    """
    progress = progress or NoProgress()
    summary = Summary()
    progress.start(len(messages), sum(size for _, size in messages))
    current: tuple[int, int] | None = None  # (n, =c) the server announced for its current message
    for n, _ in messages:
        if stop():
            summary.stopped = True
            break
        if current is not None and current[0] == n:
            announced = current[1]
        else:
            try:
                announced = client.read(n)
            except (ProtocolError, OSError) as err:
                raise FetchError(_network(err, f"at message {n}")) from err
        if not announced:
            continue  # gone since the sizes were read
        _retrieve(client, n, announced, writer, progress)
        try:
            current = (n + 1, client.ackd() if delete else client.acks())
        except (ProtocolError, OSError) as err:
            raise FetchError(_network(err, f"after message {n} (it is saved)")) from err
        summary.saved += 1
        summary.octets += announced
        progress.done()
    return summary


class _Counted:
    """The pending file's write, counted for the progress bar; a disk error as WriteError."""

    def __init__(self, pending: Pending, where: str, progress: Progress) -> None:
        self._pending, self._where, self._progress = pending, where, progress

    def write(self, data: bytes, /) -> object:
        with disk_errors(self._where):
            self._pending.file.write(data)
        self._progress.advance(len(data))
        return len(data)


def _retrieve(client: Client, n: int, announced: int, writer: Writer, progress: Progress) -> None:
    """RETR message `n` into the writer and commit it; nothing stays on any failure.

    The client's protocol core ends the data at the announced length (a shorter message is
    a lost connection), so only more than announced is left to check: octets after it."""
    pending = writer.begin()
    try:
        try:
            client.retr_to(_Counted(pending, writer.where, progress))
            if client.unsolicited():
                raise FetchError(f"message {n}: the server announced {announced} octets and sent more: "
                                 "nothing written, nothing deleted")
        except BaseException:
            pending.discard()
            raise
        pending.commit()  # a commit that fails has left nothing (mailfiles.Pending)
    except WriteError as err:
        raise FetchError(f"{err}: message {n} left on the server") from err
    except (ProtocolError, OSError) as err:
        raise FetchError(_network(err, f"during message {n}") + ": nothing written for it, nothing deleted") from err


def _network(err: BaseException, when: str) -> str:
    if isinstance(err, Pop2Error):
        return f"the server refused {when}: {err.text}"
    if isinstance(err, TimeoutError):
        return f"no answer from the server {when} (read timeout)"
    if isinstance(err, ConnectionClosed):
        return f"connection lost {when}"
    if isinstance(err, ProtocolError):
        return f"protocol error {when}: {err}"
    if isinstance(err, OSError):
        return f"connection lost {when}: {err.strerror or err}"
    return f"{err} {when}"


def quit_session(client: Client) -> None:
    """QUIT: the server now deletes what was ACKD'd. FetchError if the server does not confirm."""
    try:
        client.quit()
    except (ProtocolError, OSError) as err:
        raise FetchError(_network(err, "at QUIT") + " (deletions may not have been done)") from err


@dataclass(frozen=True)
class Session:
    """Where and how to connect, and which mailbox to read."""

    host: str
    port: int
    user: str
    folder: str | None = None
    context: ssl.SSLContext | None = None
    connect_timeout: float = 30.0
    timeout: float = 60.0

    @property
    def mailbox(self) -> str:
        return self.folder or "INBOX"


def run(session: Session, password: str, writer: Writer | None, *, delete: bool = False,
        limit: int | None = None, bar: bool = False) -> int:
    """The whole command: list (no writer) or copy, then QUIT. Returns the exit status
    (0, or 1 when stopped by Ctrl-C); FetchError on failure. The summary goes to stderr."""
    from .console import Bar, CtrlC

    progress = Bar() if bar and writer is not None else None
    try:
        with CtrlC(progress) as ctrl_c:
            client = connect(session.host, session.port, timeout=session.timeout,
                             connect_timeout=session.connect_timeout, context=session.context)
            with client:  # closed in the end; after a failure without QUIT
                count = login(client, session.user, password, session.folder)
                messages = sizes(client, count, limit, stop=lambda: ctrl_c.requested)
                if writer is None:
                    for n, size in messages:
                        print(f"{n:6d} {size:10d}", flush=True)
                    quit_session(client)
                    line = f"{len(messages)} message(s), {sum(s for _, s in messages)} octets in {session.mailbox}"
                    return _end(line, ctrl_c.requested)
                try:
                    summary = copy(client, messages, writer, delete, progress, stop=lambda: ctrl_c.requested)
                finally:
                    if progress is not None:
                        progress.stop()
                quit_session(client)
    except KeyboardInterrupt:
        raise FetchError("aborted by a second Ctrl-C: no QUIT sent, so the server deletes nothing; "
                         "the message in transfer was not written") from None
    fate = "deleted on the server" if delete else "kept on the server"
    line = (f"{summary.saved} message(s), {summary.octets} octets, from {session.mailbox} saved to "
            f"{writer.where}, {fate}")
    return _end(line, summary.stopped)


def _end(line: str, stopped: bool) -> int:
    """Say how it ended: the summary line on stderr; the exit status."""
    _tell(f"stopped by Ctrl-C, QUIT sent: {line}" if stopped else line)
    return 1 if stopped else 0


def _tell(line: str) -> None:
    print(f"pop2gate fetch: {line}", file=sys.stderr, flush=True)


__all__ = ["FetchError", "NoProgress", "Progress", "Session", "Summary", "TargetError", "connect", "copy",
           "login", "parse_host_port", "quit_session", "run", "sizes", "tls_context"]
