"""What the private IMAP servers of the tests (dovecot.py, cyrus.py, courier.py) share:
waiting until one answers, stopping one that runs in its own process group, and reading
and changing a mailbox straight on the server, as another client would."""

from __future__ import annotations

import imaplib
import os
import signal
import subprocess
import time
from collections.abc import Callable


def wait_for_imap(proc: subprocess.Popen[bytes], host: str, port: int, exited: Callable[[], str],
                  stop: Callable[[], None], error: type[Exception], timeout: float = 20) -> None:
    """Return once IMAP answers on host:port; raise `error` with `exited()` if the process
    ends first, or stop it and raise when nothing answers in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise error(exited())
        try:
            with imaplib.IMAP4(host, port, timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    stop()
    raise error(f"nothing answered IMAP on {host}:{port}")


def stop_group(proc: subprocess.Popen[bytes] | None) -> None:
    """End a server started with start_new_session=True and every process of its group."""
    if proc is None:
        return
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:  # children that outlive the leader (Courier's authdaemond, sessions)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# Test-side IMAP access, straight to a server: `login(user)` gives its own logged-in client,
# `folder` is the IMAP name. The harnesses and tests/backends.py build on these.

Login = Callable[[str], imaplib.IMAP4]


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def append(login: Login, user: str, data: bytes, folder: str = "INBOX", flags: str = "",
           create: bool = True) -> int:
    """Store `data` byte for byte (creating the folder unless told not to); return its UID."""
    c = login(user)
    try:
        if create and folder != "INBOX":
            c._simple_command("CREATE", quoted(folder))  # NO when it exists already
        c.literal = data  # type: ignore[assignment]  # imaplib sends it as the literal
        typ, dat = c._simple_command("APPEND", quoted(folder), f"({flags})")
        assert typ == "OK", dat
        code = c.untagged_responses.get("APPENDUID", [b""])[-1]
        assert isinstance(code, bytes), code
        return int(code.split()[1])
    finally:
        c.logout()


def _fetch_all(login: Login, user: str, folder: str, items: str) -> list[bytes | tuple[bytes, bytes]]:
    c = login(user)
    try:
        typ, dat = c.select(quoted(folder), readonly=True)
        assert typ == "OK", dat
        if dat[-1] == b"0":
            return []
        typ, data = c.uid("FETCH", "1:*", items)
        assert typ == "OK", data
        return [d for d in data if isinstance(d, (bytes, tuple))]
    finally:
        c.logout()


def uids(login: Login, user: str, folder: str = "INBOX") -> dict[int, set[str]]:
    """UID -> flags of every message, \\Deleted ones included."""
    out: dict[int, set[str]] = {}
    for item in _fetch_all(login, user, folder, "(UID FLAGS)"):
        if isinstance(item, bytes):
            text = item.decode()
            out[int(text.split("UID ")[1].split()[0].rstrip(")"))] = set(text.split("FLAGS (")[1].split(")")[0].split())
    return out


def bodies(login: Login, user: str, folder: str = "INBOX") -> dict[int, bytes]:
    """UID -> the server's own BODY.PEEK[] of every message, \\Deleted ones included."""
    return {int(item[0].split(b"UID ")[1].split()[0]): item[1]
            for item in _fetch_all(login, user, folder, "(UID BODY.PEEK[])") if isinstance(item, tuple)}


def flag(login: Login, user: str, uid: int, name: str, folder: str = "INBOX", expunge: bool = False) -> None:
    """Set flag `name` on `uid` (and expunge the folder), as another client would."""
    c = login(user)
    try:
        typ, dat = c.select(quoted(folder))
        assert typ == "OK", dat
        typ, dat = c.uid("STORE", str(uid), "+FLAGS.SILENT", f"({name})")
        assert typ == "OK", dat
        if expunge:
            assert c.expunge()[0] == "OK"
    finally:
        c.logout()


def clear(login: Login, user: str, folder: str = "INBOX") -> None:
    """Empty `folder`, if it exists."""
    c = login(user)
    try:
        typ, dat = c.select(quoted(folder))
        if typ == "OK" and dat[-1] != b"0":
            c.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
            c.expunge()
    finally:
        c.logout()
