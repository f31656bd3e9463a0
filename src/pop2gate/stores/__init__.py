"""Mail stores: the backends a POP2 session reads from."""

from __future__ import annotations

from ..config import Config
from .base import MailStore


def open_stores(config: Config) -> dict[str, MailStore]:
    """Build every `[[backend]]` store, by name. IMAP stores share one memory budget,
    so `imap_fetch_memory` bounds message data in memory across all of them."""
    from .imap import ByteBudget

    budget = ByteBudget(config.limits.imap_fetch_memory)
    stores: dict[str, MailStore] = {}
    for backend in config.backend:
        if backend.type == "maildir":
            from .maildir import MaildirStore

            stores[backend.name] = MaildirStore(backend, config.limits)
        elif backend.type == "imap":
            from .imap import ImapStore

            stores[backend.name] = ImapStore(backend, config.limits, budget)
        else:
            raise ValueError(f"unknown backend type {backend.type!r}")
    return stores
