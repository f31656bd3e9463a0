"""The embedded default store: one Maildir per user, Maildir++ folders.

Layout: `<path>/<user>/` is the user's INBOX (cur/ new/ tmp/); folder
`Archive/2024` is `<path>/<user>/.Archive.2024/` (levels in modified UTF-7).
Passwords live in the users file (argon2 hashes, see users.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import AsyncGenerator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ...pop2.wire import FOLDER_SEPARATOR
from ..base import Mailbox, MessageRef, Peer, StoreError
from ..folders import encode_mutf7, is_inbox
from ..wireform import WireForm, wire_size_of
from .config import MaildirBackend
from .users import read_users, valid_user_name, verify

if TYPE_CHECKING:
    from ...config import Limits

__all__ = ["MaildirBackend", "MaildirMailbox", "MaildirStore", "make_maildir"]

log = logging.getLogger("pop2gate.maildir")

SUBDIRS = ("new", "cur")
READ_SIZE = 1 << 20


def make_maildir(path: Path) -> None:
    """Create a Maildir's cur/ new/ tmp/ (mode 0700) if missing."""
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)


def _flags(name: str) -> str:
    _, sep, info = name.partition(":2,")
    return info if sep else ""


def _sort_key(name: str) -> tuple[int, str]:
    head = name.split(".", 1)[0]
    return (int(head) if head.isdigit() else 0, name)


def _read_chunks(path: Path, size: int) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(size):
            yield chunk


class MaildirStore:
    """MailStore over local Maildirs."""

    def __init__(self, backend: MaildirBackend, limits: Limits, *, uw_compat: bool = False) -> None:
        self.name = backend.name
        self.root = backend.path
        self.users_file = backend.users_file
        self.chunk_size = limits.retr_chunk_size
        self.form = WireForm(uw_compat)
        self._hashing = ThreadPoolExecutor(limits.password_hash_workers, thread_name_prefix="argon2")

    async def login(self, user: str, password: str, peer: Peer) -> Mailbox | None:
        users = await asyncio.to_thread(read_users, self.users_file)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._hashing, verify, users, user, password)
        if not ok or not valid_user_name(user):
            return None
        home = self.root / user
        try:
            await asyncio.to_thread(make_maildir, home)
        except OSError as err:
            raise StoreError(f"cannot create maildir for {user!r}: {err.strerror}") from None
        return MaildirMailbox(home, self.chunk_size, self.form)

    async def aclose(self) -> None:
        self._hashing.shutdown(wait=False, cancel_futures=True)


class MaildirMailbox:
    """One user's Maildir; every path it touches stays inside `home`."""

    def __init__(self, home: Path, chunk_size: int, form: WireForm | None = None) -> None:
        self.home = home
        self.chunk_size = chunk_size
        self.form = form or WireForm()
        self.folder_dir: Path | None = None
        self._files: dict[str, Path] = {}
        self._sizes: dict[tuple[int, int, int, int], int] = {}  # file -> octets, last line ended

    def _folder_path(self, folder: str) -> Path | None:
        if is_inbox(folder):
            return self.home
        levels = folder.split(FOLDER_SEPARATOR)
        if any("." in level for level in levels):
            return None  # "." is Maildir++'s own separator: no such folder
        path = self.home / ("." + ".".join(encode_mutf7(level) for level in levels))
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):  # lstat: a symlink is not a folder
                return None
        except OSError:
            return None
        if path.resolve().parent != self.home.resolve():
            return None
        return path

    def _scan(self, folder_dir: Path) -> list[tuple[str, Path, int]]:
        found: list[tuple[str, Path, int]] = []
        for sub in SUBDIRS:
            try:
                entries = list(os.scandir(folder_dir / sub))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or "T" in _flags(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append((entry.name, Path(entry.path), st.st_size))
        found.sort(key=lambda item: _sort_key(item[0]))
        return found

    async def select(self, folder: str) -> list[MessageRef]:
        path = await asyncio.to_thread(self._folder_path, folder)
        self.folder_dir = path
        self._files = {}
        if path is None:
            return []
        refs: list[MessageRef] = []
        for name, file, size in await asyncio.to_thread(self._scan, path):
            uid = name.split(":", 1)[0]
            if uid in self._files:
                continue
            self._files[uid] = file
            refs.append(MessageRef(uid, size, seen="S" in _flags(name)))
        return refs

    def _locate(self, ref: MessageRef) -> Path | None:
        """The message's file now: flags may have renamed it since select."""
        path = self._files.get(ref.id)
        if path is not None and os.path.lexists(path):
            return path
        if self.folder_dir is None:
            return None
        for sub in SUBDIRS:
            try:
                names = os.listdir(self.folder_dir / sub)
            except OSError:
                continue
            for name in names:
                if name.split(":", 1)[0] == ref.id:
                    self._files[ref.id] = self.folder_dir / sub / name
                    return self._files[ref.id]
        return None

    def _wire_size(self, ref: MessageRef) -> int:
        path = self._locate(ref)
        if path is None:
            return 0
        try:
            st = os.lstat(path)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in self._sizes:
                self._sizes[key] = wire_size_of(_read_chunks(path, READ_SIZE))
            return self.form.size(self._sizes[key], ref.seen)
        except OSError:
            return 0

    async def wire_size(self, msg: MessageRef) -> int:
        return await asyncio.to_thread(self._wire_size, msg)

    async def fetch(self, msg: MessageRef) -> AsyncGenerator[bytes, None]:
        path = await asyncio.to_thread(self._locate, msg)
        if path is None:
            raise StoreError(f"message {msg.id} vanished")
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as err:
            raise StoreError(f"cannot open message {msg.id}: {err.strerror}") from None
        enc = self.form.encoder(msg.seen, bare_lf=True)
        with os.fdopen(fd, "rb") as f:
            while True:
                try:
                    chunk = await asyncio.to_thread(f.read, self.chunk_size)
                except OSError as err:
                    raise StoreError(f"cannot read message {msg.id}: {err.strerror}") from None
                out = enc.feed(chunk)
                if out:
                    yield out
                if len(chunk) < self.chunk_size:  # a short read of a regular file is its end
                    break
        tail = enc.finish()
        if tail:
            yield tail

    def _mark_seen(self, ref: MessageRef) -> None:
        path = self._locate(ref)
        if path is None:
            return
        flags = _flags(path.name)
        if path.parent.name == "cur" and "S" in flags:
            return
        new_name = f"{ref.id}:2,{''.join(sorted(set(flags + 'S')))}"
        target = path.parent.parent / "cur" / new_name
        os.rename(path, target)
        self._files[ref.id] = target

    async def mark_seen(self, msg: MessageRef) -> None:
        try:
            await asyncio.to_thread(self._mark_seen, msg)
        except OSError as err:
            raise StoreError(f"cannot flag message {msg.id}: {err.strerror}") from None

    def _delete(self, refs: Sequence[MessageRef]) -> None:
        for ref in refs:
            path = self._locate(ref)
            if path is not None:
                os.unlink(path)
                self._files.pop(ref.id, None)

    async def release(self, deleted: Sequence[MessageRef]) -> None:
        try:
            await asyncio.to_thread(self._delete, deleted)
        except OSError as err:
            raise StoreError(f"cannot delete: {err.strerror}") from None

    async def close(self) -> None:
        self._files = {}
