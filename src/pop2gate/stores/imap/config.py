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
    """IMAP-to-POP2 conversion: an IMAP server, its TLS verified unless the operator says
    otherwise. The `imap_*` limits apply too. Logins, folders, deletion and the servers
    tested: [imap.md](imap.md).
    """

    type: Literal["imap"]
    url: str = Field(description="`imaps://host[:port]` (default port 993) or `imap://host[:port]` (default port "
                                 "143). Nothing else: no user, path or query. IPv6 as `imaps://[2001:db8::1]:993`.")
    tls: TlsMode | None = Field(
        None, json_schema_extra={"doc_default": "from `url`"},
        description="`\"implicit\"` (`imaps://`: TLS from the first byte), `\"starttls\"` (`imap://`: STARTTLS is "
                    "required; a server that does not offer it is not used), or `\"none\"` (`imap://` only: no "
                    "encryption).")
    ca_file: Path | None = Field(
        None, json_schema_extra={"doc_default": "the system's CAs"},
        description="PEM file of the CAs that may sign the server's certificate. The certificate and the host "
                    "name in `url` are always verified.")
    timeout: float | None = Field(
        None, gt=0, json_schema_extra={"doc_default": "the `imap_*_timeout` limits"},
        description="Seconds for connecting and for each IMAP command to this backend. Without it, "
                    "`imap_connect_timeout` applies to connecting and `imap_command_timeout` to each command.")
    allow_plaintext: bool = Field(
        False, description="`tls = \"none\"` is refused at start for any host that is not loopback (`localhost`, "
                           "`127.0.0.0/8`, `::1`) unless this is `true`: passwords would cross the network in "
                           "clear text.")
    master_login: bool = Field(  # UW's `HELO user*admin`: off unless the operator enables it
        False, description="Accept UW's administrator login `HELO user*admin password` (see "
                           "[imap.md](imap.md)). Off, such a login is a bad login and no connection is made.")
    auth: AuthMode = Field(
        "password", description="How pop2gate logs in to the server: `\"password\"` with the POP2 client's "
                                "user and password, or `\"oauth2\"` with an OAuth2 access token for the "
                                "grant `pop2gate oauth add` stored; then the `[backend.oauth2]` table below is "
                                "required (see [oauth2.md](oauth2.md)).")
    oauth2: OAuth2Settings | None = Field(
        None, description="With `auth = \"oauth2\"`: the `[backend.oauth2]` table, right after this "
                          "backend's keys.")

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
