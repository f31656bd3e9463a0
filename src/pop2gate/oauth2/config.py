"""`[backend.oauth2]`: where the grant comes from, how it is stored, and the provider presets.

A provider preset fills `authorize_url`, `token_url`, `scope` and `mechanism` with the
values the provider publishes (docs/oauth2.md names the sources); a key the operator
writes overrides the preset's.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import files
from .sasl import Mechanism


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Preset:
    """One provider's published endpoints, IMAP scope, SASL mechanism, and the extra
    authorization parameters it needs to hand out a refresh token."""

    authorize_url: str
    token_url: str
    scope: str
    mechanism: Mechanism
    authorize_params: dict[str, str] = field(default_factory=dict)


PROVIDERS: dict[str, Preset] = {
    # developers.google.com/identity/protocols/oauth2/native-app and
    # developers.google.com/gmail/imap/xoauth2-protocol
    "google": Preset(
        authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
        token_url="https://oauth2.googleapis.com/token",  # noqa: S106 (a URL)
        scope="https://mail.google.com/",
        mechanism="xoauth2",
        authorize_params={"access_type": "offline", "prompt": "consent"},
    ),
    # learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow and
    # learn.microsoft.com/exchange/client-developer/legacy-protocols/
    #   how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
    "microsoft": Preset(
        authorize_url="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        token_url="https://login.microsoftonline.com/common/oauth2/v2.0/token",  # noqa: S106 (a URL)
        scope="https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
        mechanism="xoauth2",
    ),
}

_URL_KEYS = ("authorize_url", "token_url", "device_url")


def check_url(key: str, url: str) -> None:
    """https://, or http:// to a loopback host only: tokens never cross a network in clear."""
    try:
        u = urlsplit(url)
        host = u.hostname or ""
        u.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError(f"{key} {url!r} is not an http(s) URL") from None
    if u.scheme not in ("https", "http") or not host or u.username is not None or u.fragment:
        raise ValueError(f"{key} {url!r} is not an https:// URL")
    if u.scheme == "http" and not is_loopback(host):
        raise ValueError(f"{key} {url!r}: plain http only to a loopback host; use https://")


class OAuth2Settings(BaseModel):
    """The `[backend.oauth2]` table of an IMAP backend with `auth = "oauth2"`: where the grant comes
    from and where it is kept. A `provider` fills `authorize_url`, `token_url`, `scope` and
    `mechanism` with its published values; a key written here overrides the preset's. URLs are
    `https://` (verified against the system's CAs); plain `http://` only to a loopback host.
    Set up Gmail or Microsoft 365 with [oauth2.md](oauth2.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["google", "microsoft"] | None = Field(
        None, description="`\"google\"` or `\"microsoft\"`: the provider's published endpoints, IMAP scope "
                          "and SASL mechanism (listed with their sources in [oauth2.md](oauth2.md)).")
    authorize_url: str = Field(
        json_schema_extra={"doc_default": "the provider's, else required"},
        description="The authorization endpoint `pop2gate oauth add` sends the browser to.")
    token_url: str = Field(
        json_schema_extra={"doc_default": "the provider's, else required"},
        description="The token endpoint: the grant at `oauth add`, then a new access token at a login "
                    "whose cached one is near its expiry.")
    device_url: str | None = Field(
        None, description="The device authorization endpoint (RFC 8628); when set, `oauth add` prints a code "
                          "to enter there instead of a URL to open.")
    client_id: str = Field(min_length=1, description="The client (application) registered with the provider.")
    client_secret_file: Path | None = Field(
        None, description="A file whose first line is the client secret, mode 0600 or 0400 (else refused). "
                          "Unset for a public client.")
    scope: str = Field(
        min_length=1, json_schema_extra={"doc_default": "the provider's, else required"},
        description="The scopes requested, space-separated.")
    mechanism: Mechanism = Field(
        "xoauth2", json_schema_extra={"doc_default": "the provider's, else `\"xoauth2\"`"},
        description="The SASL mechanism of the IMAP login: `\"xoauth2\"` (Google's and Microsoft's) or "
                    "`\"oauthbearer\"` (RFC 7628).")
    tokens_dir: Path = Field(
        description="Absolute path of the token files (`tokens_dir/<user>`: the POP2 password's hash and the "
                    "refresh token encrypted with it). The serving user reads and replaces files there.")
    timeout: float = Field(30, gt=0, description="Seconds each request to the token or device endpoint may take; "
                                                 "past it the login is `- Mail server error`.")

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("provider"), str) and data["provider"] in PROVIDERS:
            preset = PROVIDERS[data["provider"]]
            filled = {"authorize_url": preset.authorize_url, "token_url": preset.token_url,
                      "scope": preset.scope, "mechanism": preset.mechanism}
            return {**filled, **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> OAuth2Settings:
        for key in _URL_KEYS:
            url = getattr(self, key)
            if url is not None:
                check_url(key, url)
        if self.client_secret_file is not None:
            check_secret_file(self.client_secret_file)
        if not self.tokens_dir.is_absolute():
            raise ValueError(f"tokens_dir {str(self.tokens_dir)!r} must be an absolute path")
        return self

    def authorize_params(self) -> dict[str, str]:
        """The provider's extra authorization parameters (none without a provider)."""
        return dict(PROVIDERS[self.provider].authorize_params) if self.provider else {}

    def client_secret(self) -> str | None:
        """The client secret, read from its file (first line)."""
        if self.client_secret_file is None:
            return None
        return self.client_secret_file.read_text("utf-8").strip() or None


def check_secret_file(path: Path) -> None:
    """A secret file must be a regular file closed to group and others (mode 0600 or 0400)."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file")
        files.check_secret(path, st)
    except OSError as err:
        raise ValueError(f"client_secret_file {str(path)!r}: {err.strerror}") from None
    except ValueError as err:
        raise ValueError(f"client_secret_file: {err}") from None


def needed_access(settings: OAuth2Settings) -> dict[str, tuple[Path, int]]:
    """What the serving user needs: the secret to read, tokens_dir to read and replace files in."""
    need = {"oauth2.tokens_dir": (settings.tokens_dir, os.R_OK | os.W_OK | os.X_OK)}
    if settings.client_secret_file is not None:
        need["oauth2.client_secret_file"] = (settings.client_secret_file, os.R_OK)
    return need
