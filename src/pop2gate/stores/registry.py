"""Every backend type: `[[backend]] type` -> its settings model, and what builds its stores.

Adding a backend is one entry in BACKENDS: `pop2gate.config` builds the choices of a
`[[backend]]` table from it, and `pop2gate.stores.open_stores` builds the stores with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .base import BackendConfig, MailStore
from .imap import ByteBudget, ImapBackend, ImapStore
from .maildir import MaildirBackend, MaildirStore

if TYPE_CHECKING:
    from ..config import Limits

B = TypeVar("B", bound=BackendConfig)
OpenStore = Callable[[BackendConfig], MailStore]


@dataclass(frozen=True)
class StoreOptions:
    """What every store is built with besides its own `[[backend]]` table."""

    limits: Limits
    uw_compat: bool = False  # `server.uw_compat`: stores send UW ipop2d's form (stores.wireform)


@dataclass(frozen=True)
class BackendType:
    """One `[[backend]] type`: the model its tables validate against, and its opener.

    `opener(options)` runs once per `open_stores`, and only when a backend of this type
    is configured; what it returns builds each store of the type, so those stores can
    share what it made (the IMAP stores share one ByteBudget).
    """

    model: type[BackendConfig]
    opener: Callable[[StoreOptions], OpenStore]

    @classmethod
    def of(cls, model: type[B], opener: Callable[[StoreOptions], Callable[[B], MailStore]]) -> BackendType:
        """The entry for `model`, whose opener builds stores from that model's tables only."""

        def checked_opener(options: StoreOptions) -> OpenStore:
            open_one = opener(options)

            def open_checked(backend: BackendConfig) -> MailStore:
                if not isinstance(backend, model):
                    got = type(backend).__name__
                    raise TypeError(f"backend {backend.name!r}: {model.__name__} expected, got {got}")
                return open_one(backend)

            return open_checked

        return cls(model, checked_opener)


def _maildir(options: StoreOptions) -> Callable[[MaildirBackend], MailStore]:
    def open_one(backend: MaildirBackend) -> MailStore:
        return MaildirStore(backend, options.limits, uw_compat=options.uw_compat)

    return open_one


def _imap(options: StoreOptions) -> Callable[[ImapBackend], MailStore]:
    # One budget for all IMAP backends: `imap_fetch_memory` bounds message data across them.
    budget = ByteBudget(options.limits.imap_fetch_memory)

    def open_one(backend: ImapBackend) -> MailStore:
        return ImapStore(backend, options.limits, budget, uw_compat=options.uw_compat)

    return open_one


BACKENDS: dict[str, BackendType] = {
    "maildir": BackendType.of(MaildirBackend, _maildir),
    "imap": BackendType.of(ImapBackend, _imap),
}
