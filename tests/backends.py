"""The private IMAP servers of the tests behind one interface, so one test runs against all.

Four layouts: "dovecot" (Maildir++, '.' separator, no prefix), "cyrus-unix" ('/' separator,
altnamespace), "cyrus-debian" ('.' separator, folders under `INBOX.`), "courier" ('.',
`INBOX.`). Folder names given to these helpers are layout-neutral ("Archive/2024", any
Unicode) and become each server's IMAP name here, as a user's own IMAP client would name them.
"""

from __future__ import annotations

import imaplib
from collections.abc import Callable
from dataclasses import dataclass

import imapserver
from pop2gate.stores.folders import encode_mutf7

LAYOUTS = ["dovecot", "cyrus-unix", "cyrus-debian", "courier"]


@dataclass
class ImapServer:
    """One running server in one layout, as a test sees it."""

    layout: str
    host: str
    port: int
    users: dict[str, str]
    login: Callable[[str], imaplib.IMAP4]  # the server's own IMAP client, logged in as a user
    prefix: str  # the personal namespace's prefix ("" or "INBOX.")
    sep: str  # the hierarchy separator
    master: tuple[str, str] | None  # a master user (user*master) the server honours, if any
    ca_file: str | None = None  # the CA for STARTTLS; None: the server is used without TLS
    log: Callable[[], str] = lambda: ""  # the server's log, where the tests can read it

    def backend(self, **extra: object) -> dict[str, object]:
        """The pop2gate `[[backend]]` for this server, named "srv", on loopback: STARTTLS where
        the server is set up for it (`ca_file`), else plain IMAP."""
        b: dict[str, object] = {"name": "srv", "type": "imap", "url": f"imap://{self.host}:{self.port}"}
        b.update({"tls": "starttls", "ca_file": self.ca_file} if self.ca_file else {"tls": "none"})
        return {**b, **extra}

    def folder(self, name: str) -> str:
        """The IMAP name of the user's folder `name` ("a/b"; INBOX stays INBOX)."""
        if name.upper() == "INBOX":
            return "INBOX"
        return self.prefix + encode_mutf7(name.replace("/", self.sep))

    def append(self, user: str, data: bytes, folder: str = "INBOX", flags: str = "") -> int:
        """Store `data` (CRLF lines) byte for byte, creating the folder; return its UID."""
        return imapserver.append(self.login, user, data, self.folder(folder), flags)

    def uids(self, user: str, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags of every message, \\Deleted ones included."""
        return imapserver.uids(self.login, user, self.folder(folder))

    def bodies(self, user: str, folder: str = "INBOX") -> dict[int, bytes]:
        """UID -> the server's own BODY.PEEK[] of every message."""
        return imapserver.bodies(self.login, user, self.folder(folder))

    def store(self, user: str, uid: int, flag: str, folder: str = "INBOX", expunge: bool = False) -> None:
        """Another client sets `flag` on `uid` (and expunges the folder)."""
        imapserver.flag(self.login, user, uid, flag, self.folder(folder), expunge)

    def clear(self, user: str, folder: str = "INBOX") -> None:
        """Empty `folder` (if it exists)."""
        imapserver.clear(self.login, user, self.folder(folder))
