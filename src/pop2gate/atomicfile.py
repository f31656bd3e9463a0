"""Files replaced whole and durably: the users file, the OAuth2 token files, fetch's output."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
