"""Socket activation: the listening sockets systemd (or another manager) hands over.

The protocol of sd_listen_fds(3): `LISTEN_PID` is our pid, `LISTEN_FDS` the number of sockets,
passed as descriptors 3, 4, ...; `LISTEN_FDNAMES` (colon-separated, from the socket unit's
`FileDescriptorName=`) may name each. A socket named `tls` is served as a `tls_listen` one,
`proxy` as a `proxy_listen` one, any other name (systemd's default is the unit's name) as a
plain `listen` one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

from ..config import ListenKey

FIRST_FD = 3
MAX_FDS = 1024
KIND_OF_NAME: dict[str, ListenKey] = {"tls": "tls_listen", "proxy": "proxy_listen"}
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(OSError):
    """The handed-over sockets cannot be served; the message says which and why."""


def inherited_sockets(environ: MutableMapping[str, str] | None = None,
                      pid: int | None = None) -> list[tuple[ListenKey, socket.socket]]:
    """The listening sockets passed to this process, each with the listener kind its name gives.

    Empty when nothing was passed, or it was passed to another process (`LISTEN_PID` differs).
    The variables are removed, as sd_listen_fds(1) does, so that nothing we start inherits them.
    """
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID", "") != str(os.getpid() if pid is None else pid):
        return []
    count_text = env.get("LISTEN_FDS", "")
    names = env.get("LISTEN_FDNAMES", "").split(":")
    for key in _VARIABLES:
        env.pop(key, None)
    if not count_text.isdigit() or not 0 < int(count_text) <= MAX_FDS:
        raise ActivationError(f"LISTEN_FDS={count_text!r} is not a number of sockets from 1 to {MAX_FDS}")
    result = []
    for i, fd in enumerate(range(FIRST_FD, FIRST_FD + int(count_text))):
        name = names[i] if i < len(names) else ""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as err:
            raise ActivationError(f"LISTEN_FDS: descriptor {fd} ({name or 'unnamed'}) is not a socket: "
                                  f"{err.strerror}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ActivationError(f"LISTEN_FDS: descriptor {fd} ({name or 'unnamed'}) is not a listening "
                                  "stream socket (ListenStream= in the socket unit, Accept=no)")
        sock.set_inheritable(False)
        result.append((KIND_OF_NAME.get(name, "listen"), sock))
    return result
