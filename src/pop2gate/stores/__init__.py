"""Mail stores: the backends a POP2 session reads from (types: `registry`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import MailStore
from .registry import BACKENDS, OpenStore, StoreOptions

if TYPE_CHECKING:
    from ..config import Config


def open_stores(config: Config) -> dict[str, MailStore]:
    """Build every `[[backend]]` store, by name, each with its type's opener (the IMAP
    stores share one memory budget, so `imap_fetch_memory` bounds message data in memory
    across all of them). Stores send `server.uw_compat`'s form themselves."""
    options = StoreOptions(config.limits, uw_compat=config.server.uw_compat)
    openers: dict[str, OpenStore] = {}
    stores: dict[str, MailStore] = {}
    for backend in config.backend:
        if backend.type not in openers:
            openers[backend.type] = BACKENDS[backend.type].opener(options)
        stores[backend.name] = openers[backend.type](backend)
    return stores
