"""Files that hold secrets or mail: replaced whole and durably (the users file, the OAuth2
token files, fetch's output), and secret files checked closed to group and others (fetch's
password file, an OAuth2 client secret)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def check_secret(path: Path | str, st: os.stat_result) -> None:
    """ValueError when group or others have any access to `st` (the file at `path`): a secret
    file is mode 0600 or 0400."""
    if st.st_mode & 0o077:
        raise ValueError(f"{path} is open to group or others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it")


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` with `text` (UTF-8) atomically, mode 0600, owned by `owner` (uid, gid)
    when given: written to a temporary file beside it, fsynced, renamed over it, and the
    directory fsynced. On any failure `path` is as it was and no temporary file stays."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
