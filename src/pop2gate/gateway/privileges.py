"""Dropping root: bind the listeners first, then become the serving user for good.

Started as root, `serve` becomes `server.user`, "nobody" when unset; staying root takes
`user = "root"` and logs a warning. Not started as root it stays who it is (`user`, when
set, must be that user). The unprivileged process may not be able to read the
interpreter's files, so what a session loads lazily is loaded before the switch (the store
modules and ssl are imported with the listeners; the codecs here). After the switch the
stores' paths are checked as the serving user, before anything is served.
"""

from __future__ import annotations

import codecs
import grp
import logging
import os
import pwd
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..config import Config, ConfigError

log = logging.getLogger("pop2gate.privileges")

DEFAULT_USER = "nobody"
# idna and punycode: host names (socket.getaddrinfo, ssl's server_hostname); utf-16-be:
# modified UTF-7 folder names (stores.folders); the rest: the IMAP client's and the stores' text.
PRELOAD_CODECS = ("idna", "punycode", "utf-16-be", "ascii", "latin-1", "utf-8")
_ACCESS_WORDS = ((os.R_OK, "readable"), (os.W_OK, "writable"), (os.X_OK, "searchable"))


class PrivilegeError(Exception):
    """The configured user cannot be switched to."""


@runtime_checkable
class NeedsAccess(Protocol):
    """Backend settings naming files: key -> (path, `os.access` mode) the serving user needs."""

    def needed_access(self) -> dict[str, tuple[Path, int]]: ...


def drop_privileges(config: Config) -> None:
    """Preload, become the serving user, then check the stores' paths as that user.

    Raises PrivilegeError when the user cannot be switched to, ConfigError (naming the
    key) when a store's path is not usable by it.
    """
    preload()
    become(config.server.user, config.server.group)
    check_store_access(config)


def preload() -> None:
    """Load the codecs sessions look up, so no codec is imported after the switch."""
    for name in PRELOAD_CODECS:
        codecs.lookup(name)


def become(user: str | None, group: str | None = None) -> None:
    """Switch to `user` (and `group`, default: the user's primary group).

    As root: `user` None means DEFAULT_USER; a user with uid 0 keeps root, with a warning;
    any other user gets all of real, effective and saved ids, supplementary groups are
    reduced to the one group, and getting root back is checked to fail. Not as root:
    `user`, when set, must be who we already are.
    """
    euid = os.geteuid()
    if user is None:
        if euid != 0:
            return
        user = DEFAULT_USER
    uid, gid = _ids(user, group)
    if euid != 0:
        if euid != uid:
            raise PrivilegeError(f"cannot become {user!r}: not running as root")
        return
    if uid == 0:
        log.warning("running as root (server.user = %r): sessions keep every privilege; "
                    "leave server.user unset to serve as %s", user, DEFAULT_USER)
        return
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("root could be regained after dropping privileges")
    log.info("running as user=%s uid=%d gid=%d", user, uid, gid)


def _ids(user: str, group: str | None) -> tuple[int, int]:
    """(uid, gid) of `user` and `group` (default: the user's primary group)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"server.user: no such user {user!r}") from None
    try:
        return pw.pw_uid, grp.getgrnam(group).gr_gid if group else pw.pw_gid
    except KeyError:
        raise PrivilegeError(f"server.group: no such group {group!r}") from None


def serving_ids(config: Config) -> tuple[int, int] | None:
    """(uid, gid) `serve` will run as when started as root, for files an operator command
    writes as root; None when not root (such files stay the caller's)."""
    if os.geteuid() != 0:
        return None
    return _ids(config.server.user or DEFAULT_USER, config.server.group)


def check_store_access(config: Config) -> None:
    """Raise ConfigError naming every store path the current user cannot use as its store needs."""
    problems = []
    for i, backend in enumerate(config.backend):
        if isinstance(backend, NeedsAccess):
            for key, (path, mode) in backend.needed_access().items():
                if not os.access(path, mode):
                    problems.append(f"backend.{i}.{key}: {path} {_why_not(path, mode)}")
    if problems:
        raise ConfigError("; ".join(problems))


def _why_not(path: Path, mode: int) -> str:
    try:
        path.stat()
    except FileNotFoundError:
        return "does not exist"
    except OSError:
        pass  # a directory on the way is closed to us: say what the store needs
    words = [word for bit, word in _ACCESS_WORDS if mode & bit]
    need = " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)
    try:
        who = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        who = f"uid {os.getuid()}"
    return f"is not {need} by user {who}"
