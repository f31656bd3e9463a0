"""Mail stores: the backends a POP2 session reads from."""

from __future__ import annotations

from ..config import Backend, Limits
from .base import MailStore


def open_store(backend: Backend, limits: Limits) -> MailStore:
    """Build the store a `[[backend]]` table describes."""
    if backend.type == "maildir":
        from .maildir import MaildirStore

        return MaildirStore(backend, limits)
    if backend.type == "imap":
        from .imap import ImapStore

        return ImapStore(backend, limits)
    raise ValueError(f"unknown backend type {backend.type!r}")
