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

    UW's `host:user` form is accepted only where `host` is the name of a
    configured backend; anything else is refused before any connection is made.
    Otherwise a `[routing] users` rule wins over a `domains` rule over `default`.
    The rules match the user part of `user*admin` (a master login).
    """

    def __init__(self, config: Config, stores: Mapping[str, MailStore]):
        self._config = config
        self._stores = dict(stores)
        self._users = dict(config.routing.users)
        self._domains = {d.lower(): b for d, b in config.routing.domains.items()}

    def route(self, login: str) -> Route | None:
        alias, sep, user = login.partition(":")
        if sep:
            if not user or alias not in self._stores:
                return None
            return Route(self._stores[alias], user)
        name = login.partition("*")[0]
        domain = name.rpartition("@")[2].lower() if "@" in name else None
        backend = self._users.get(name) or (self._domains.get(domain) if domain else None)
        return Route(self._stores[backend or self._config.routing.default], login)
