"""Dropping root: bind the listeners first, then become the configured user for good."""

from __future__ import annotations

import grp
import logging
import os
import pwd

log = logging.getLogger("pop2gate.privileges")


class PrivilegeError(Exception):
    """The configured user cannot be switched to."""


def drop_privileges(user: str | None, group: str | None = None) -> None:
    """Switch to `user` (and `group`, default: the user's primary group).

    As root: all of real, effective and saved ids change, supplementary groups are
    reduced to the one group, and getting root back is checked to fail. Not as root:
    `user` must be who we already are. Without `user`, running as root is logged.
    """
    if user is None:
        if os.geteuid() == 0:
            log.warning("running as root: set server.user to drop privileges after binding")
        return
    try:
        pw = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
    except KeyError as err:
        raise PrivilegeError(f"no such user or group: {err.args[0]}") from None
    if os.geteuid() != 0:
        if os.geteuid() != pw.pw_uid:
            raise PrivilegeError(f"cannot become {user!r}: not running as root")
        return
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("root could be regained after dropping privileges")
    log.info("running as user=%s uid=%d gid=%d", user, pw.pw_uid, gid)
