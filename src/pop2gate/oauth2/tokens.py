"""What a login on an `auth = "oauth2"` backend needs: the POP2 password checked against the
user's token file, then an access token, from memory while it lasts or from the token endpoint.

Access tokens live in memory only, per user, until shortly before they expire; they are handed
out only after the password matched. A rotated refresh token is sealed again and the file
replaced atomically. Logs name users and outcomes, never a token or a password.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, TypeVarTuple

from ..passwords import check_password
from . import tokenfile
from .config import OAuth2Settings
from .endpoint import Endpoint, EndpointError, GrantError
from .tokenfile import TokenFile, TokenFileError

log = logging.getLogger("pop2gate.oauth2")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# An access token is used until this long before it expires: at most a minute, at most a tenth
# of its lifetime (a token that lives 5 minutes is renewed after 4.5).
EXPIRY_MARGIN = 60.0


class OAuthUnavailable(Exception):
    """No access token could be had for a reason that is not the user's: the text is for the log."""


@dataclass(frozen=True)
class Access:
    """What the IMAP login sends: the mailbox's login name and a current access token."""

    imap_user: str
    token: str


def _renew_at(now: float, lifetime: float) -> float:
    return now + lifetime - min(EXPIRY_MARGIN, lifetime / 10)


async def _locked(tokens_dir: Path, user: str) -> int:
    """`tokenfile.lock` in a thread; a lock that arrives after the wait was cancelled is let go."""
    waiting = asyncio.ensure_future(asyncio.to_thread(tokenfile.lock, tokens_dir, user))
    try:
        return await asyncio.shield(waiting)
    except asyncio.CancelledError:
        waiting.add_done_callback(lambda t: None if t.cancelled() or t.exception() else os.close(t.result()))
        raise


class TokenSource:
    """One backend's access tokens; `aclose` when done."""

    def __init__(self, backend: str, settings: OAuth2Settings, hash_workers: int) -> None:
        self.backend = backend
        self.settings = settings
        self.endpoint = Endpoint(settings)
        self._cache: dict[str, tuple[Access, float]] = {}  # user -> (access, monotonic renew time)
        self._locks: dict[str, asyncio.Lock] = {}
        self._hashing = ThreadPoolExecutor(hash_workers, thread_name_prefix=f"oauth2-{backend}")

    async def _run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._hashing, fn, *args)

    async def access(self, user: str, password: str) -> Access | None:
        """The user's access; None for a bad login (no file, wrong password, a revoked grant).

        Raises OAuthUnavailable when the token endpoint cannot be used.
        """
        try:
            tf = await self._run(tokenfile.read, self.settings.tokens_dir, user)
        except TokenFileError as err:
            raise OAuthUnavailable(str(err)) from None
        if tf is None:
            await self._run(check_password, None, password)  # same cost as a real check
            log.info("backend %s: no token file for %r (pop2gate oauth add)", self.backend, user)
            return None
        if not await self._run(tf.check_password, password):
            log.info("backend %s: wrong password for %r", self.backend, user)
            return None
        lock = self._locks.setdefault(user, asyncio.Lock())
        async with lock:
            cached = self._cache.get(user)
            if cached is not None and time.monotonic() < cached[1]:
                return cached[0]
            try:
                held = await _locked(self.settings.tokens_dir, user)
            except OSError as err:
                raise OAuthUnavailable(f"cannot lock the token file of {user!r}: {err.strerror}") from None
            try:
                return await self._renew(tf, password)
            finally:
                os.close(held)

    async def _renew(self, seen: TokenFile, password: str) -> Access | None:
        """Refresh under the file's lock, from the file as it is now: another instance sharing
        tokens_dir may have rotated the token since `seen` was read."""
        user = seen.user
        try:
            tf = await self._run(tokenfile.read, self.settings.tokens_dir, user)
        except TokenFileError as err:
            raise OAuthUnavailable(str(err)) from None
        if tf is None or tf.password_hash != seen.password_hash:
            log.info("backend %s: the token file of %r was removed or replaced meanwhile", self.backend, user)
            return None
        key = await self._run(tf.key, password)
        try:
            refresh = tf.open(key)
        except TokenFileError as err:
            raise OAuthUnavailable(f"token file of {user!r}: {err}") from None
        try:
            tokens = await self.endpoint.refresh(refresh)
        except GrantError as err:
            if err.code == "invalid_grant":
                log.warning("backend %s: the grant of %r was revoked or has expired (invalid_grant): "
                            "run `pop2gate oauth add %s` again", self.backend, user, user)
                self._cache.pop(user, None)
                return None
            raise OAuthUnavailable(f"token endpoint refused the refresh for {user!r}: {err}") from None
        except EndpointError as err:
            raise OAuthUnavailable(f"token endpoint: {err}") from None
        if tokens.refresh_token is not None and tokens.refresh_token != refresh:
            try:
                await self._run(tokenfile.write, self.settings.tokens_dir, tf.reseal(key, tokens.refresh_token))
            except OSError as err:
                raise OAuthUnavailable(f"cannot store the rotated refresh token of {user!r}: "
                                       f"{err.strerror}") from None
            log.info("backend %s: stored the rotated refresh token of %r", self.backend, user)
        access = Access(tf.imap_user, tokens.access_token)
        self._cache[user] = (access, _renew_at(time.monotonic(), tokens.expires_in))
        log.debug("backend %s: new access token for %r, valid %gs", self.backend, user, tokens.expires_in)
        return access

    def forget(self, user: str) -> None:
        """Drop the cached access token (the IMAP server refused it)."""
        self._cache.pop(user, None)

    async def aclose(self) -> None:
        self._hashing.shutdown(wait=False, cancel_futures=True)
        await self.endpoint.aclose()
