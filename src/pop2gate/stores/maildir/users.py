"""The Maildir store's users file: `name:argon2-hash` lines, mode 0600."""

from __future__ import annotations

import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,63}")
# argon2id at the OWASP-recommended minimum (19 MiB, 2 passes, 1 lane): each
# verification holds that much memory, so the store also bounds how many run at once.
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def valid_user_name(name: str) -> bool:
    return USER_NAME.fullmatch(name) is not None


def read_users(path: Path) -> dict[str, str]:
    """Name -> hash. A missing file means no users."""
    users: dict[str, str] = {}
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return users
    for line in text.splitlines():
        name, sep, hashed = line.partition(":")
        if sep and valid_user_name(name):
            users[name] = hashed.strip()
    return users


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash("pop2gate-no-such-user")


def _octets(password: str) -> bytes:
    """The password as the octets the client sent: UTF-8, any other octet kept as is."""
    return password.encode("utf-8", "surrogateescape")


def verify(users: dict[str, str], name: str, password: str) -> bool:
    """Check a password; unknown users cost the same time as known ones."""
    hashed = users.get(name) if valid_user_name(name) else None
    try:
        return _hasher.verify(hashed or _dummy_hash(), _octets(password)) and hashed is not None
    except (VerificationError, InvalidHashError):
        return False


def set_password(path: Path, name: str, password: str) -> bool:
    """Create or change a user; returns True when the user is new. Atomic rewrite."""
    if not valid_user_name(name):
        raise ValueError(f"invalid user name {name!r}: use letters, digits and . _ + @ -")
    if not password:
        raise ValueError("empty password")
    users = read_users(path)
    new = name not in users
    users[name] = _hasher.hash(_octets(password))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(f"{n}:{h}\n" for n, h in sorted(users.items()))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return new
