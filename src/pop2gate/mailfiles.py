"""Where `pop2gate fetch` puts messages: a Maildir, an mbox file, or stdout.

Each message goes through a `Pending` write: `begin()` gives a file to receive the
octets into, `commit()` makes them durable where they belong (and only then does the
caller acknowledge the message), `discard()` leaves nothing behind. A commit that
fails leaves nothing either.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import fcntl
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from .files import fsync_dir
from .stores.maildir import make_maildir

SPOOL_MEMORY = 8 * 1024 * 1024  # a message held for mbox or stdout stays in memory up to this size
MBOX_LOCK_WAIT = 30.0  # seconds to wait for another program's lock on the mbox file
MAX_HEADER_SCAN = 256 * 1024  # octets of a message read to find its sender and date

_QUOTED = re.compile(rb">*From ")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class WriteError(Exception):
    """A message could not be written; the text says where and why."""


class Pending(Protocol):
    """One message on its way to disk."""

    file: IO[bytes]

    def commit(self) -> str:
        """Make the message durable; return where it went. WriteError on failure."""

    def discard(self) -> None:
        """Leave nothing of the message behind."""


class Writer(Protocol):
    def begin(self) -> Pending: ...

    @property
    def where(self) -> str: ...


@contextlib.contextmanager
def disk_errors(what: object) -> Iterator[None]:
    """OSError as WriteError naming `what`."""
    try:
        yield
    except OSError as err:
        raise WriteError(f"cannot write {what}: {err.strerror or err}") from err


def _spool() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - closed by the Pending


# --- Maildir ---------------------------------------------------------------------------


class _MaildirPending:
    def __init__(self, maildir: Path, name: str) -> None:
        self._dir, self._name = maildir, name
        self._tmp = maildir / "tmp" / name
        with disk_errors(self._tmp):
            self.file: IO[bytes] = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/discard

    def commit(self) -> str:
        new = self._dir / "new" / self._name
        try:
            with disk_errors(self._tmp):
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
            with disk_errors(new):
                os.rename(self._tmp, new)
                fsync_dir(self._dir / "new")
        except BaseException:  # a disk error, or Ctrl-C: nothing stays in tmp/
            self.discard()
            raise
        return f"new/{self._name}"

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class MaildirWriter:
    """Each message written in tmp/, fsynced, renamed into new/, and new/ fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with disk_errors(path):
            created = not (path / "new").is_dir()
            make_maildir(path)
            if created:  # the new directories themselves survive a crash
                for d in (path, path.parent):
                    fsync_dir(d)
        self._host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
        self._n = 0

    @property
    def where(self) -> str:
        return str(self.path)

    def begin(self) -> Pending:
        self._n += 1
        now = time.time()
        name = f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{self._n}.{self._host}"
        return _MaildirPending(self.path, name)


# --- mbox ------------------------------------------------------------------------------


def from_line(head: bytes, now: float | None = None) -> bytes:
    """The mbox From_ line (without its line end) for a message whose header section is `head`.

    The sender is Return-Path, else the first From address, else MAILER-DAEMON; the date is
    the Date header in UTC, else `now`.
    """
    msg = BytesHeaderParser().parsebytes(head)
    sender = ""
    for name in ("Return-Path", "From"):
        value = msg.get(name)
        if value:
            addresses = email.utils.getaddresses([str(value)])
            sender = addresses[0][1] if addresses else ""
            if sender:
                break
    sender = re.sub(r"[\s\x00-\x1f\x7f]", "", sender) or "MAILER-DAEMON"
    when: datetime | None = None
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        date = msg.get("Date")
        if date:
            parsed = email.utils.parsedate_to_datetime(str(date))
            when = parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if when is None:
        when = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    stamp = (f"{_DAYS[when.weekday()]} {_MONTHS[when.month - 1]} {when.day:2d} "
             f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {when.year}")
    return f"From {sender} {stamp}".encode("ascii", "replace")


def quote_from(line: bytes) -> bytes:
    """mboxrd quoting: a line that starts with `>*From ` gets one more `>`."""
    return b">" + line if _QUOTED.match(line) else line


def _header_section(spool: IO[bytes]) -> bytes:
    spool.seek(0)
    head = bytearray()
    while len(head) < MAX_HEADER_SCAN and (line := spool.readline(MAX_HEADER_SCAN)):
        if line in (b"\r\n", b"\n"):
            break
        head += line
    return bytes(head)


def mbox_entry(spool: IO[bytes], out: BinaryIO) -> None:
    """Write the message in `spool` to `out` as one mboxrd entry: From_ line, quoted lines, a blank line.

    The lines keep the octets the server sent; the From_ line and the blank line after the
    message take the message's own line end (CRLF from a POP2 server).
    """
    head = _header_section(spool)
    eol = b"\r\n" if head.split(b"\n", 1)[0].endswith(b"\r") else b"\n"
    spool.seek(0)
    out.write(from_line(head) + eol)
    last = b""
    for line in spool:
        out.write(quote_from(line))
        last = line
    if last and not last.endswith(b"\n"):
        out.write(eol)
    out.write(eol)


class _MboxPending:
    def __init__(self, path: Path) -> None:
        self._path = path
        self.file = _spool()

    def commit(self) -> str:
        try:
            with disk_errors(self._path):
                fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "ab") as out:
                    _lock(out, self._path)
                    start = out.seek(0, os.SEEK_END)
                    try:
                        mbox_entry(self.file, out)
                        out.flush()
                        os.fsync(out.fileno())
                    except BaseException:
                        out.truncate(start)  # nothing of this message stays
                        raise
        finally:
            self.file.close()
        return str(self._path)

    def discard(self) -> None:
        self.file.close()


def _lock(f: IO[bytes], path: Path) -> None:
    """An exclusive fcntl lock on the whole file (what Debian's MUAs and MDAs take), waited for."""
    deadline = time.monotonic() + MBOX_LOCK_WAIT
    while True:
        try:
            fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                raise WriteError(f"cannot lock {path}: another program holds it ({MBOX_LOCK_WAIT:g} s)") from err
        time.sleep(0.1)


class MboxWriter:
    """Each message appended to an mbox file (mboxrd) under an exclusive lock, then fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with disk_errors(path):
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
                fsync_dir(path.parent)
            elif not path.is_file():
                raise WriteError(f"cannot write {path}: not a regular file")

    @property
    def where(self) -> str:
        return str(self.path)

    def begin(self) -> Pending:
        return _MboxPending(self.path)


# --- stdout ----------------------------------------------------------------------------


class _StdoutPending:
    def __init__(self) -> None:
        self.file = _spool()

    def commit(self) -> str:
        out = sys.stdout.buffer
        try:
            with disk_errors("stdout"):
                sys.stdout.flush()
                self.file.seek(0)
                shutil.copyfileobj(self.file, out)
                out.flush()
                with contextlib.suppress(OSError):  # a pipe or a terminal cannot be synced
                    os.fsync(out.fileno())
        finally:
            self.file.close()
        return "stdout"

    def discard(self) -> None:
        self.file.close()


class StdoutWriter:
    """The message as received, on stdout, written only once it arrived whole."""

    where = "stdout"

    def begin(self) -> Pending:
        return _StdoutPending()
