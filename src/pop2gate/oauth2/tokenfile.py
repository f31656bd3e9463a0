"""One user's grant on disk: `tokens_dir/<user>`, JSON, mode 0600, replaced atomically.

It holds the argon2id hash of the user's POP2 password and the refresh token sealed with
AES-256-GCM under a key derived from that same password (argon2id, own salt). The disk alone
gives no token; the token file and one password give that one user's grant (docs/oauth2.md).
The file's name, user and IMAP login are bound to the sealed token as associated data.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import files
from ..passwords import check_password, hash_password, octets, valid_user_name

FORMAT = "pop2gate-oauth2 1"
# The key's derivation costs what the password hash beside it costs: either is the same
# guessing oracle to someone holding the file.
KDF = {"name": "argon2id", "time_cost": 2, "memory_cost": 19456, "parallelism": 1}
MAX_FILE = 64 * 1024


class TokenFileError(Exception):
    """The file is unreadable, malformed, or does not open with the key."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise TokenFileError("malformed token file")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise TokenFileError("malformed token file") from None


def derive_key(password: str, salt: bytes, kdf: dict[str, Any] = KDF) -> bytes:
    """The 256-bit sealing key for this password and salt."""
    if kdf.get("name") != "argon2id":
        raise TokenFileError(f"unknown key derivation {kdf.get('name')!r}")
    return hash_secret_raw(octets(password), salt,
                           time_cost=int(kdf["time_cost"]), memory_cost=int(kdf["memory_cost"]),
                           parallelism=int(kdf["parallelism"]), hash_len=32, type=Type.ID)


@dataclass(frozen=True)
class TokenFile:
    """The parsed file; `sealed` is the refresh token encrypted (nonce + ciphertext)."""

    user: str
    imap_user: str
    password_hash: str
    salt: bytes
    kdf: dict[str, Any]
    sealed: bytes

    def _aad(self) -> bytes:
        return f"{FORMAT}\0{self.user}\0{self.imap_user}".encode("utf-8", "surrogateescape")

    @classmethod
    def create(cls, user: str, imap_user: str, password: str, refresh_token: str) -> TokenFile:
        """A new file for `user`: fresh salt, the password's hash, the token sealed."""
        if not valid_user_name(user):
            raise ValueError(f"invalid user name {user!r}: use letters, digits and . _ + @ -")
        if not password:
            raise ValueError("empty password")
        salt = secrets.token_bytes(16)
        blank = cls(user, imap_user, hash_password(password), salt, dict(KDF), b"")
        return blank.reseal(derive_key(password, salt), refresh_token)

    def check_password(self, password: str) -> bool:
        return check_password(self.password_hash, password)

    def key(self, password: str) -> bytes:
        return derive_key(password, self.salt, self.kdf)

    def open(self, key: bytes) -> str:
        """The refresh token; TokenFileError when the key is not this file's."""
        try:
            plain = AESGCM(key).decrypt(self.sealed[:12], self.sealed[12:], self._aad())
        except (InvalidTag, ValueError):
            raise TokenFileError("the token does not open with this password") from None
        return plain.decode("utf-8")

    def reseal(self, key: bytes, refresh_token: str) -> TokenFile:
        """A copy holding `refresh_token` (a rotated one) under the same key, with a new nonce."""
        nonce = secrets.token_bytes(12)
        sealed = nonce + AESGCM(key).encrypt(nonce, refresh_token.encode("utf-8"), self._aad())
        return replace(self, sealed=sealed)

    def dumps(self) -> str:
        return json.dumps({"format": FORMAT, "user": self.user, "imap_user": self.imap_user,
                           "password_hash": self.password_hash, "kdf": {**self.kdf, "salt": _b64(self.salt)},
                           "sealed_refresh_token": _b64(self.sealed)}, indent=1) + "\n"

    @classmethod
    def loads(cls, text: str) -> TokenFile:
        try:
            data = json.loads(text)
        except ValueError:
            raise TokenFileError("malformed token file") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TokenFileError("not a pop2gate token file (format)")
        kdf = data.get("kdf")
        if not isinstance(kdf, dict) or not all(isinstance(kdf.get(k), int) for k in
                                                ("time_cost", "memory_cost", "parallelism")):
            raise TokenFileError("malformed token file (kdf)")
        fields = [data.get(k) for k in ("user", "imap_user", "password_hash")]
        if not all(isinstance(f, str) for f in fields):
            raise TokenFileError("malformed token file")
        user, imap_user, password_hash = (str(f) for f in fields)
        salt = _unb64(kdf.get("salt"))
        return cls(user, imap_user, password_hash, salt, {k: v for k, v in kdf.items() if k != "salt"},
                   _unb64(data.get("sealed_refresh_token")))


def path_of(tokens_dir: Path, user: str) -> Path | None:
    """`tokens_dir/<user>`, None for a name that is not a valid user name (no path tricks)."""
    return tokens_dir / user if valid_user_name(user) else None


def read(tokens_dir: Path, user: str) -> TokenFile | None:
    """The user's file; None when there is none."""
    path = path_of(tokens_dir, user)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise TokenFileError(f"cannot read {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_FILE + 1)
    if len(raw) > MAX_FILE:
        raise TokenFileError(f"{path} is larger than {MAX_FILE} octets")
    tf = TokenFile.loads(raw.decode("utf-8", "replace"))
    if tf.user != user:
        raise TokenFileError(f"{path} belongs to user {tf.user!r}")
    return tf


def lock(tokens_dir: Path, user: str) -> int:
    """Block until this process holds `tokens_dir/.<user>.lock` (flock); close the returned fd
    to let go. Instances sharing tokens_dir refresh and rotate one user's token one at a time."""
    fd = os.open(tokens_dir / f".{user}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write(tokens_dir: Path, tf: TokenFile, owner: tuple[int, int] | None = None) -> Path:
    """Replace the user's file atomically, mode 0600 (owned by `owner`, uid and gid, when given)."""
    path = tokens_dir / tf.user
    files.replace(path, tf.dumps(), owner)
    return path


def make_dir(tokens_dir: Path, owner: tuple[int, int] | None = None) -> None:
    """Create tokens_dir (mode 0700) if missing; hand it to `owner` (uid, gid) when given, since the
    serving user replaces files in it when a refresh token rotates."""
    tokens_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if owner is not None:
        os.chown(tokens_dir, *owner)
        os.chmod(tokens_dir, 0o700)


def users(tokens_dir: Path) -> list[str]:
    """The users that have a file, sorted."""
    try:
        names = os.listdir(tokens_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if valid_user_name(n) and (tokens_dir / n).is_file())


def remove(tokens_dir: Path, user: str) -> bool:
    """Delete the user's file; False when there was none."""
    path = path_of(tokens_dir, user)
    if path is None:
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
