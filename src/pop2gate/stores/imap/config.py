"""`[[backend]] type = "imap"`: an IMAP server; TLS verified unless the operator says otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from ...oauth2.config import OAuth2Settings, is_loopback, needed_access
from ..base import BackendConfig

TlsMode = Literal["implicit", "starttls", "none"]
AuthMode = Literal["password", "oauth2"]


class ImapBackend(BackendConfig):
    """An IMAP server; TLS verified unless the operator says otherwise."""

    type: Literal["imap"]
    url: str
    tls: TlsMode | None = None
    ca_file: Path | None = None
    timeout: float | None = Field(None, gt=0)
    allow_plaintext: bool = False
    master_login: bool = False  # UW's `HELO user*admin`: off unless the operator enables it
    auth: AuthMode = "password"  # "oauth2": the grant stored by `pop2gate oauth add` (docs/oauth2.md)
    oauth2: OAuth2Settings | None = None

    @model_validator(mode="after")
    def _check_url(self) -> ImapBackend:
        scheme, host, _ = self.address()
        tls = self.tls_mode()
        if scheme == "imaps" and tls != "implicit":
            raise ValueError("imaps:// means tls = \"implicit\"; use imap:// for starttls or none")
        if scheme == "imap" and tls == "implicit":
            raise ValueError("tls = \"implicit\" needs an imaps:// url")
        if tls == "none" and not self.allow_plaintext and not is_loopback(host):
            raise ValueError(f"tls = \"none\" to non-loopback host {host!r} needs allow_plaintext = true")
        if self.auth == "oauth2" and self.oauth2 is None:
            raise ValueError('auth = "oauth2" needs a [backend.oauth2] table')
        if self.auth == "password" and self.oauth2 is not None:
            raise ValueError('a [backend.oauth2] table needs auth = "oauth2"')
        if self.auth == "oauth2" and self.master_login:
            raise ValueError('master_login needs auth = "password"')
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file {str(self.ca_file)!r} is not a readable file")
        return self

    def address(self) -> tuple[str, str, int]:
        """(scheme, host, port) from the url."""
        try:
            u = urlsplit(self.url)
            port = u.port
        except ValueError:
            raise ValueError(f"url {self.url!r} is not imaps://host[:port] or imap://host[:port]") from None
        if (u.scheme not in ("imap", "imaps") or not u.hostname or u.username is not None
                or u.path not in ("", "/") or u.query or u.fragment):
            raise ValueError(f"url {self.url!r} is not imaps://host[:port] or imap://host[:port]")
        return u.scheme, u.hostname, port or (993 if u.scheme == "imaps" else 143)

    def tls_mode(self) -> TlsMode:
        if self.tls is not None:
            return self.tls
        return "implicit" if self.url.lower().startswith("imaps:") else "starttls"

    def needed_access(self) -> dict[str, tuple[Path, int]]:
        """Key -> (path, `os.access` mode) the serving user needs: `ca_file` is read when the store is
        built; with OAuth2, the client secret and tokens_dir (rotated tokens are written there)."""
        need = {"ca_file": (self.ca_file, os.R_OK)} if self.ca_file is not None else {}
        if self.oauth2 is not None:
            need.update(needed_access(self.oauth2))
        return need
