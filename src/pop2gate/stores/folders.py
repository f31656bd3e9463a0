"""Folder names as POP2 clients send them: validation and IMAP modified UTF-7.

A name is the user's own mailbox name: levels separated by "/", UTF-8 text.
Anything that could reach outside the user's mail is refused here, once, for
every store.
"""

from __future__ import annotations

import base64

SEPARATOR = "/"


class InvalidFolderName(ValueError):
    """The name could reach outside the user's own folders."""


def check_folder_name(name: str) -> list[str]:
    """Return the name's levels, or raise InvalidFolderName."""
    if not name or name[0] in "/{":
        raise InvalidFolderName(name)
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise InvalidFolderName(name)
    levels = name.split(SEPARATOR)
    if any(level in ("", ".", "..") for level in levels):
        raise InvalidFolderName(name)
    return levels


def is_inbox(name: str) -> bool:
    """INBOX is case-insensitive (RFC 3501)."""
    return name.upper() == "INBOX"


def encode_mutf7(text: str) -> str:
    """Encode text as IMAP modified UTF-7 (RFC 3501 section 5.1.3)."""
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


def decode_mutf7(text: str) -> str:
    """Decode IMAP modified UTF-7 back to text."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.index("-", i)
        chunk = text[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            out.append(base64.b64decode(b64).decode("utf-16-be"))
        i = end + 1
    return "".join(out)
