"""Login names and password hashes shared by the Maildir users file and the OAuth2 token files."""

from __future__ import annotations

import re
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,63}")
# argon2id at the OWASP-recommended minimum (19 MiB, 2 passes, 1 lane): each
# verification holds that much memory, so the stores also bound how many run at once.
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def valid_user_name(name: str) -> bool:
    """A name usable as a file name: letters, digits and . _ + @ -, not starting with a dot."""
    return USER_NAME.fullmatch(name) is not None


def octets(password: str) -> bytes:
    """The password as the octets the client sent: UTF-8, any other octet kept as is."""
    return password.encode("utf-8", "surrogateescape")


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash("pop2gate-no-such-user")


def hash_password(password: str) -> str:
    """The argon2id hash of a password."""
    return _hasher.hash(octets(password))


def check_password(hashed: str | None, password: str) -> bool:
    """True when `password` matches `hashed`; None (no such user) costs the same time and fails."""
    try:
        return _hasher.verify(hashed or _dummy_hash(), octets(password)) and hashed is not None
    except (VerificationError, InvalidHashError):
        return False
