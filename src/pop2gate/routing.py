"""Which backend serves which user: the operator's allowlist, never the client's choice."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .config import Config
from .stores.base import MailStore


@dataclass(frozen=True)
class Route:
    store: MailStore
    user: str


class Router:
    """Maps a HELO user name to a configured store.

    A `[routing] users` rule wins over a `domains` rule over `default`; the rules match
    the user part of `user*admin` (a master login). UW's `name:user` form is accepted
    only where `name` is the backend the rules give that user, or one the operator marked
    `selectable`; anything else is refused before any connection is made.
    """

    def __init__(self, config: Config, stores: Mapping[str, MailStore]) -> None:
        self._config = config
        self._stores = dict(stores)
        self._users = dict(config.routing.users)
        self._domains = {d.lower(): b for d, b in config.routing.domains.items()}
        self._selectable = {b.name for b in config.backend if b.selectable}

    def _backend(self, login: str) -> str:
        name = login.partition("*")[0]
        domain = name.rpartition("@")[2].lower() if "@" in name else None
        return self._users.get(name) or (self._domains.get(domain) if domain else None) \
            or self._config.routing.default

    def route(self, login: str) -> Route | None:
        alias, sep, user = login.partition(":")
        if sep:
            if not user or alias not in self._stores:
                return None
            if alias != self._backend(user) and alias not in self._selectable:
                return None
            return Route(self._stores[alias], user)
        return Route(self._stores[self._backend(login)], login)
