"""Folder names on their way into a store: INBOX, and IMAP modified UTF-7.

Names arrive checked: the session lets through only names that passed
`pop2gate.pop2.wire.folder_levels`, and a store splits a name into levels at
`pop2gate.pop2.wire.FOLDER_SEPARATOR`. Rules of one store's own layout (a level
holding "." in a Maildir, the server's delimiter on IMAP) stay in that store.
"""

from __future__ import annotations

import base64


def is_inbox(name: str) -> bool:
    """INBOX is case-insensitive (RFC 3501)."""
    return name.upper() == "INBOX"


def encode_mutf7(text: str) -> str:
    """Encode text as IMAP modified UTF-7 (RFC 3501 section 5.1.3): how Dovecot names
    folders on disk and on the wire."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)
