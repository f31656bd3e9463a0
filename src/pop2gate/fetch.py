"""`pop2gate fetch`: list a POP2 mailbox, or move its messages into a local Maildir.

A message is acknowledged (ACKS, or ACKD with --delete) only after it is on
disk: written to tmp/, fsynced, then renamed into new/.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from .pop2.client import Client
from .stores.maildir import make_maildir


def _deliver_name(n: int) -> str:
    return f"{int(time.time())}.P{os.getpid()}Q{n}.{socket.gethostname().replace('/', '_')}"


def list_messages(client: Client, count: int) -> list[tuple[int, int]]:
    """(number, octets) of every message; reads sizes only, changes nothing."""
    return [(n, client.read(n)) for n in range(1, count + 1)]


def fetch_to_maildir(client: Client, count: int, maildir: Path, delete: bool,
                     report: Callable[[str], None] = lambda _: None) -> int:
    """Copy every message into `maildir`; returns how many were saved."""
    make_maildir(maildir)
    saved = 0
    for n in range(1, count + 1):
        if client.read(n) == 0:
            continue
        name = _deliver_name(n)
        tmp = maildir / "tmp" / name
        with open(tmp, "wb") as f:
            got = client.retr_to(f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, maildir / "new" / name)
        saved += 1
        report(f"message {n}: {got} octets saved as new/{name}")
        client.ackd() if delete else client.acks()
    return saved
