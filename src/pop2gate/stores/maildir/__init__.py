"""The embedded default store: one Maildir per user, Maildir++ folders.

Layout: `<path>/<user>/` is the user's INBOX (cur/ new/ tmp/); folder
`Archive/2024` is `<path>/<user>/.Archive.2024/` (levels in modified UTF-7).
Passwords live in the users file (argon2 hashes, see users.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

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

T = TypeVar("T")

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


# A directory below the store's root is opened only where it is a directory, never through
# a symlink: nothing a user can write into a Maildir can lead the store outside it.
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Walk:
    """Directory fds opened one component at a time from the root; closed on leaving `with`."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def open(self, name: str | Path, dir_fd: int | None = None, flags: int = _DIR) -> int:
        fd = os.open(name, flags, dir_fd=dir_fd)
        self.fds.append(fd)
        return fd

    def __enter__(self) -> _Walk:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for fd in reversed(self.fds):
            os.close(fd)


class MaildirStore:
    """MailStore over local Maildirs."""

    def __init__(self, backend: MaildirBackend, limits: Limits, *, uw_compat: bool = False) -> None:
        self.name = backend.name
        self.root = backend.path
        self.users_file = backend.users_file
        self.limits = limits
        self.chunk_size = limits.retr_chunk_size
        self.form = WireForm(uw_compat)
        self._hashing = ThreadPoolExecutor(limits.password_hash_workers, thread_name_prefix="argon2")

    async def login(self, user: str, password: str, peer: Peer) -> Mailbox | None:
        users = await asyncio.to_thread(read_users, self.users_file)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._hashing, verify, users, user, password)
        if not ok or not valid_user_name(user):
            return None
        try:
            await asyncio.to_thread(_make_home, self.root, user)
        except OSError as err:
            raise StoreError(f"cannot open maildir of {user!r}: {err.strerror}") from None
        return MaildirMailbox(self.root, user, self.chunk_size, self.form, readahead=self.limits.maildir_readahead,
                              recheck=self.limits.maildir_recheck_interval)

    async def aclose(self) -> None:
        self._hashing.shutdown(wait=False, cancel_futures=True)


def _make_home(root: Path, user: str) -> None:
    """Create `<root>/<user>/` with cur/ new/ tmp/ where missing; refuse a home that is a symlink."""
    with _Walk() as walk:
        root_fd = walk.open(root, flags=os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the operator's
        with contextlib.suppress(FileExistsError):
            os.mkdir(user, 0o700, dir_fd=root_fd)
        home_fd = walk.open(user, root_fd)
        for sub in ("cur", "new", "tmp"):
            with contextlib.suppress(FileExistsError):
                os.mkdir(sub, 0o700, dir_fd=home_fd)


class _Unflagged(Exception):
    """A seen flag noted by `mark_seen` could not be applied on disk."""

    def __init__(self, ref: MessageRef, err: OSError) -> None:
        super().__init__(f"cannot flag message {ref.id}: {err.strerror}")


class MaildirMailbox:
    """One user's Maildir, `<root>/<user>/`. Every directory and file below the root is
    reached one component at a time without following a symlink (`_Walk`), for reading,
    renaming and unlinking alike, so the mailbox never leaves the user's own Maildir.

    A message is read once: its count (READ, or the answer to an ack) reads a message of up to
    `chunk_size` octets in wire form whole, and the small messages after it up to `readahead`
    octets, in one trip to a worker thread; those octets are kept for their RETR, and announced
    from memory while younger than `recheck` seconds. A larger message is counted (once per
    file) and streamed. Seen flags (ACKS) are noted and applied with the store's next trip to a
    worker thread, whatever it is for, and when the folder is selected again or released, or
    the session closes, cleanly or not. Each trip is one `_Walk` from the store's root."""

    def __init__(self, root: Path, user: str, chunk_size: int, form: WireForm | None = None, *,
                 readahead: int = 0, recheck: float = 0.0) -> None:
        self.root = root
        self.user = user
        self.chunk_size = chunk_size
        self.form = form or WireForm()
        self.readahead = readahead
        self.recheck = recheck
        self.folder_dir: str | None = None  # the selected folder's directory in the home ("" INBOX)
        self._files: dict[str, tuple[str, str]] = {}  # id -> (subdirectory, file name)
        self._sizes: dict[tuple[int, int, int, int], int] = {}  # file -> octets, last line ended
        self._refs: list[MessageRef] = []  # the selected folder's snapshot, for what comes next
        self._position: dict[str, int] = {}  # id -> its place in `_refs`
        self._held: dict[MessageRef, bytes] = {}  # messages read, in wire form, until their RETR
        self._held_at = 0.0  # when they were read (time.monotonic)
        self._seen: list[MessageRef] = []  # ACKS noted, not yet on disk

    @property
    def home(self) -> Path:
        return self.root / self.user

    def _open_folder(self, walk: _Walk, folder_dir: str) -> int:
        root_fd = walk.open(self.root, flags=os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        home_fd = walk.open(self.user, root_fd)
        return walk.open(folder_dir, home_fd) if folder_dir else home_fd

    @staticmethod
    def _dir_name(folder: str) -> str | None:
        if is_inbox(folder):
            return ""
        levels = folder.split(FOLDER_SEPARATOR)
        if any("." in level for level in levels):
            return None  # "." is Maildir++'s own separator: no such folder
        return "." + ".".join(encode_mutf7(level) for level in levels)

    # -- trips to a worker thread -----------------------------------------------------------

    async def _trip(self, fn: Callable[[], T], *, flags_first: bool = False) -> T:
        """Run `fn` in a worker thread, after the seen flags noted since the last trip.
        Raises StoreError when a flag cannot be applied: after `fn` has run, or, with
        `flags_first` (deletions), without running it."""
        seen, self._seen = self._seen, []
        if not seen:
            return await asyncio.to_thread(fn)
        try:
            result, unflagged = await asyncio.to_thread(self._flagged_then, seen, fn, flags_first)
        except _Unflagged as err:  # flags_first: `fn` did not run
            raise StoreError(str(err)) from None
        if unflagged is not None:
            raise StoreError(str(unflagged))
        return result

    def _flagged_then(self, seen: list[MessageRef], fn: Callable[[], T],
                      flags_first: bool) -> tuple[T, _Unflagged | None]:
        try:
            self._apply_seen(seen)
        except _Unflagged as err:
            if flags_first:
                raise
            return fn(), err
        return fn(), None

    def _subdirs(self, walk: _Walk) -> dict[str, int]:
        """The fds of the selected folder's cur/ and new/ (those that are directories of its own)."""
        if self.folder_dir is None:
            return {}
        folder_fd = self._open_folder(walk, self.folder_dir)
        subs: dict[str, int] = {}
        for sub in SUBDIRS:
            with contextlib.suppress(OSError):
                subs[sub] = walk.open(sub, folder_fd)
        return subs

    def _locate(self, walk: _Walk, ref: MessageRef) -> tuple[dict[str, int], str, str] | None:
        """(fds of the folder's cur/ and new/, the message's subdirectory, its file name) now:
        flags may have renamed it since select. Only regular files count."""
        subs = self._subdirs(walk)
        found = self._find(subs, ref)
        return None if found is None else (subs, *found)

    def _find(self, subs: dict[str, int], ref: MessageRef) -> tuple[str, str] | None:
        known = self._files.get(ref.id)
        if known and known[0] in subs and self._is_file(subs[known[0]], known[1]):
            return known
        # Renamed since it was last seen (another client changed its flags): look for it.
        for sub, fd in subs.items():
            with contextlib.suppress(OSError):
                for name in os.listdir(fd):
                    if name.split(":", 1)[0] == ref.id and self._is_file(fd, name):
                        self._files[ref.id] = (sub, name)
                        return sub, name
        return None

    @staticmethod
    def _is_file(dir_fd: int, name: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def _open_message(self, ref: MessageRef) -> int | None:
        with _Walk() as walk:
            found = self._locate(walk, ref)
            if found is None:
                return None
            subs, sub, name = found
            return os.open(name, _FILE, dir_fd=subs[sub])

    # -- select ----------------------------------------------------------------------------

    def _scan(self, folder_dir: str) -> list[tuple[str, str, int]]:
        found: list[tuple[str, str, int]] = []
        with _Walk() as walk:
            folder_fd = self._open_folder(walk, folder_dir)
            for sub in SUBDIRS:
                try:
                    sub_fd = walk.open(sub, folder_fd)
                    names = os.listdir(sub_fd)
                except OSError:
                    continue  # missing, or a symlink: no mail there
                for name in names:
                    if name.startswith(".") or "T" in _flags(name):
                        continue
                    try:
                        st = os.stat(name, dir_fd=sub_fd, follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        found.append((sub, name, st.st_size))
        found.sort(key=lambda item: _sort_key(item[1]))
        return found

    def _select(self, folder: str) -> list[tuple[str, str, int]] | None:
        self.folder_dir = None
        self._files = {}
        folder_dir = self._dir_name(folder)
        if folder_dir is None:
            return None
        try:
            found = self._scan(folder_dir)
        except OSError:
            return None  # no such folder, or not a directory of its own
        self.folder_dir = folder_dir
        return found

    async def select(self, folder: str) -> list[MessageRef]:
        self._held = {}
        self._refs, self._position = [], {}
        try:
            found = await self._trip(lambda: self._select(folder))
        finally:
            if self.folder_dir is None:
                self._files = {}
        if found is None:
            return []
        refs: list[MessageRef] = []
        for sub, name, size in found:
            uid = name.split(":", 1)[0]
            if uid in self._files:
                continue
            self._files[uid] = (sub, name)
            refs.append(MessageRef(uid, size, seen="S" in _flags(name)))
        self._refs = refs
        self._position = {ref.id: n for n, ref in enumerate(refs)}
        return refs

    # -- READ and RETR -----------------------------------------------------------------------

    def _count(self, ref: MessageRef) -> tuple[int, dict[MessageRef, bytes]]:
        """The octets RETR will send for `ref`, and the messages read whole: `ref` when it fits
        in one RETR chunk, then the small ones after it up to `readahead` octets."""
        with _Walk() as walk:
            subs = self._subdirs(walk)
            size, wire = self._count_one(subs, ref)
            held = {} if wire is None else {ref: wire}
            if wire is None or not self.readahead:
                return size, held
            ahead = 0
            at = self._position.get(ref.id)
            for after in [] if at is None else self._refs[at + 1 :]:
                if ahead + after.size > self.readahead:
                    break  # its file holds at least its snapshot size
                n, wire = self._count_one(subs, after)
                if wire is None or ahead + n > self.readahead:
                    break
                held[after] = wire
                ahead += n
            return size, held

    def _count_one(self, subs: dict[str, int], ref: MessageRef) -> tuple[int, bytes | None]:
        """`ref`'s octets in wire form, and those octets when they fit in one RETR chunk."""
        try:
            found = self._find(subs, ref)
            if found is None:
                return 0, None
            fd = os.open(found[1], _FILE, dir_fd=subs[found[0]])
        except OSError:
            return 0, None
        try:
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_size <= self.chunk_size:
                    data = f.read(self.chunk_size + 1)
                    if len(data) <= self.chunk_size:
                        enc = self.form.encoder(ref.seen, bare_lf=True)
                        wire, tail = enc.feed(data), enc.finish()
                        wire = wire + tail if tail else wire
                        return len(wire), wire if len(wire) <= self.chunk_size else None
                    f.seek(0)
                key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                if key not in self._sizes:
                    self._sizes[key] = wire_size_of(iter(lambda: f.read(READ_SIZE), b""))
                return self.form.size(self._sizes[key], ref.seen), None
        except OSError:
            return 0, None

    async def wire_size(self, msg: MessageRef) -> int:
        wire = self._held.get(msg)
        if wire is not None and time.monotonic() - self._held_at < self.recheck:
            return len(wire)  # read a moment ago, for this very announcement or ahead of it
        self._held = {}
        at = time.monotonic()
        size, self._held = await self._trip(lambda: self._count(msg))
        self._held_at = at
        return size

    def _open_and_read(self, ref: MessageRef) -> tuple[BinaryIO, bytes] | None:
        """The message's file and its first chunk, in one trip to a worker thread."""
        fd = self._open_message(ref)
        if fd is None:
            return None
        f = os.fdopen(fd, "rb")
        try:
            return f, f.read(self.chunk_size)
        except BaseException:
            f.close()
            raise

    async def fetch(self, msg: MessageRef) -> AsyncGenerator[bytes, None]:
        """A message counted and held is sent from memory: its count went out and these are
        exactly its octets, so even when another client has removed it since, sending it
        whole is the only correct end. Any other is read from its file in RETR chunks."""
        wire = self._held.pop(msg, None)
        if wire is not None:
            if wire:
                yield wire
            return
        try:
            opened = await self._trip(lambda: self._open_and_read(msg))
        except OSError as err:
            raise StoreError(f"cannot open message {msg.id}: {err.strerror}") from None
        if opened is None:
            raise StoreError(f"message {msg.id} vanished")
        f, chunk = opened
        enc = self.form.encoder(msg.seen, bare_lf=True)
        with f:
            while True:
                out = enc.feed(chunk)
                if out:
                    yield out
                if len(chunk) < self.chunk_size:  # a short read of a regular file is its end
                    break
                try:
                    chunk = await asyncio.to_thread(f.read, self.chunk_size)
                except OSError as err:
                    raise StoreError(f"cannot read message {msg.id}: {err.strerror}") from None
        tail = enc.finish()
        if tail:
            yield tail

    # -- ACKS and ACKD -------------------------------------------------------------------------

    async def mark_seen(self, msg: MessageRef) -> None:
        """Note the flag; the next trip to a worker thread applies it (see the class)."""
        self._seen.append(msg)

    def _apply_seen(self, refs: list[MessageRef]) -> None:
        """Move each message into cur/ with the S flag. Every one is tried; the first failure
        is raised after."""
        failed: _Unflagged | None = None
        with _Walk() as walk:
            subs = self._subdirs(walk)
            for ref in refs:
                try:
                    self._mark_seen(subs, ref)
                except OSError as err:
                    failed = failed or _Unflagged(ref, err)
        if failed is not None:
            raise failed

    def _mark_seen(self, subs: dict[str, int], ref: MessageRef) -> None:
        found = self._find(subs, ref)
        if found is None:
            return
        sub, name = found
        flags = _flags(name)
        if sub == "cur" and "S" in flags:
            return
        if "cur" not in subs:
            raise FileNotFoundError(errno.ENOENT, "no cur/ of its own in the folder")
        new_name = f"{ref.id}:2,{''.join(sorted(set(flags + 'S')))}"
        os.rename(name, new_name, src_dir_fd=subs[sub], dst_dir_fd=subs["cur"])
        self._files[ref.id] = ("cur", new_name)

    def _delete(self, refs: Sequence[MessageRef]) -> None:
        with _Walk() as walk:
            subs = self._subdirs(walk)
            for ref in refs:
                found = self._find(subs, ref)
                if found is not None:
                    os.unlink(found[1], dir_fd=subs[found[0]])
                    self._files.pop(ref.id, None)

    async def release(self, deleted: Sequence[MessageRef]) -> None:
        """The flags noted first, then the deletions; none when a flag cannot be applied (the
        session then says so, and the messages ACKD'd are fetched again, never lost unseen)."""
        self._held = {}
        if not deleted and not self._seen:
            return
        try:
            await self._trip(lambda: self._delete(deleted), flags_first=True)
        except OSError as err:
            raise StoreError(f"cannot delete: {err.strerror}") from None

    async def close(self) -> None:
        """Apply the flags noted (the session may have ended any way at all), delete nothing."""
        self._held = {}
        if self._seen:
            try:
                await self._trip(lambda: None)
            except (StoreError, OSError, RuntimeError) as err:  # RuntimeError: the pool is shut down
                log.warning("user %r: seen flags not applied: %s", self.user, err)
        self._files = {}
