"""The token endpoint (RFC 6749 section 3.2) and the device authorization endpoint (RFC 8628),
over httpx with TLS verified; every request bounded by `[backend.oauth2] timeout`.

Nothing here logs, and no error text carries a token or a secret. httpx loads its asyncio
network layer (httpcore, anyio) at the first request; it is imported here instead, so a request
after the privilege drop imports nothing (gateway.privileges).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio._backends._asyncio  # noqa: F401
import anyio.streams.tls  # noqa: F401
import httpcore._backends.anyio  # noqa: F401
import httpx

from .config import OAuth2Settings

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class EndpointError(Exception):
    """The endpoint could not be reached, was too slow, or answered nonsense."""


class GrantError(Exception):
    """The endpoint refused: `code` is its `error` (invalid_grant, authorization_pending, ...)."""

    def __init__(self, code: str, description: str = "") -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code


@dataclass(frozen=True)
class Tokens:
    """A token response: the access token, its lifetime in seconds, and a refresh token if one came."""

    access_token: str
    expires_in: float
    refresh_token: str | None


def _clean(text: object, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit] if isinstance(text, str) else ""


def parse_tokens(data: dict[str, Any]) -> Tokens:
    access, refresh = data.get("access_token"), data.get("refresh_token")
    if not isinstance(access, str) or not access:
        raise EndpointError("token response without access_token")
    if str(data.get("token_type", "bearer")).lower() != "bearer":
        raise EndpointError(f"token_type {_clean(data.get('token_type'), 20)!r} is not Bearer")
    expires = data.get("expires_in", 3600)
    try:
        lifetime = float(expires)
    except (TypeError, ValueError):
        raise EndpointError("token response with a malformed expires_in") from None
    return Tokens(access, max(0.0, lifetime), refresh if isinstance(refresh, str) and refresh else None)


class Endpoint:
    """One backend's token and device endpoints; `aclose` when done."""

    def __init__(self, settings: OAuth2Settings) -> None:
        self.settings = settings
        self._secret = settings.client_secret()
        self._http = httpx.AsyncClient(timeout=settings.timeout, verify=True, follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _client_auth(self) -> dict[str, str]:
        form = {"client_id": self.settings.client_id}
        if self._secret is not None:
            form["client_secret"] = self._secret
        return form

    async def _post(self, url: str, form: dict[str, str]) -> dict[str, Any]:
        try:
            resp = await self._http.post(url, data={**form, **self._client_auth()},
                                         headers={"Accept": "application/json"})
        except httpx.TimeoutException:
            raise EndpointError(f"{url}: no answer within {self.settings.timeout:g}s") from None
        except httpx.HTTPError as err:
            raise EndpointError(f"{url}: {type(err).__name__}: {_clean(str(err), 100)}") from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), str) and 400 <= resp.status_code < 500:
            raise GrantError(_clean(data["error"], 60), _clean(data.get("error_description")))
        if resp.status_code != 200 or not isinstance(data, dict):
            raise EndpointError(f"{url}: HTTP {resp.status_code}")
        return data

    async def refresh(self, refresh_token: str) -> Tokens:
        """A new access token (and perhaps a rotated refresh token) for a stored grant."""
        return parse_tokens(await self._post(self.settings.token_url,
                                             {"grant_type": "refresh_token", "refresh_token": refresh_token}))

    async def exchange_code(self, code: str, redirect_uri: str, verifier: str) -> Tokens:
        """The authorization code grant, with its PKCE verifier (RFC 7636)."""
        return parse_tokens(await self._post(self.settings.token_url, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": verifier}))

    async def device_start(self) -> dict[str, Any]:
        """RFC 8628 section 3.1: the device code, user code and where to enter it."""
        assert self.settings.device_url is not None
        data = await self._post(self.settings.device_url, {"scope": self.settings.scope})
        for key in ("device_code", "user_code"):
            if not isinstance(data.get(key), str):
                raise EndpointError(f"device authorization response without {key}")
        if not isinstance(data.get("verification_uri") or data.get("verification_url"), str):
            raise EndpointError("device authorization response without verification_uri")
        return data

    async def device_poll(self, device_code: str) -> Tokens:
        """One poll (RFC 8628 section 3.4); GrantError("authorization_pending") until approved."""
        return parse_tokens(await self._post(self.settings.token_url,
                                             {"grant_type": DEVICE_GRANT, "device_code": device_code}))
