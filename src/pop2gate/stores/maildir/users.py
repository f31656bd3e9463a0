"""The Maildir store's users file: `name:argon2-hash` lines, mode 0600."""

from __future__ import annotations

from pathlib import Path

from ... import files
from ...passwords import check_password, hash_password, valid_user_name

__all__ = ["read_users", "set_password", "valid_user_name", "verify"]


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


def verify(users: dict[str, str], name: str, password: str) -> bool:
    """Check a password; unknown users cost the same time as known ones."""
    return check_password(users.get(name) if valid_user_name(name) else None, password)


def set_password(path: Path, name: str, password: str, owner: tuple[int, int] | None = None) -> bool:
    """Create or change a user; returns True when the user is new. Atomic, durable rewrite,
    mode 0600, owned by `owner` (uid, gid) when given."""
    if not valid_user_name(name):
        raise ValueError(f"invalid user name {name!r}: use letters, digits and . _ + @ -")
    if not password:
        raise ValueError("empty password")
    users = read_users(path)
    new = name not in users
    users[name] = hash_password(password)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.replace(path, "".join(f"{n}:{h}\n" for n, h in sorted(users.items())), owner)
    return new
