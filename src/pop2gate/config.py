"""The TOML configuration: parsed with tomllib, validated with pydantic.

Every limit is a named setting here; docs/configuration.md lists them. Each
`[[backend]]` type's keys are its own model, found through `pop2gate.stores.registry`.
"""

from __future__ import annotations

import functools
import grp
import operator
import pwd
import socket
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .stores.base import BackendConfig
from .stores.registry import BACKENDS


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (IPv6 as [addr]:port)")
    return host.strip("[]"), int(port)


ListenKey = Literal["listen", "tls_listen", "proxy_listen"]


class ServerSettings(_Model):
    hostname: str = Field(default_factory=socket.gethostname)
    listen: list[str] = ["127.0.0.1:109"]
    tls_listen: list[str] = []
    tls_cert: Path | None = None
    tls_key: Path | None = None
    proxy_listen: list[str] = []
    proxy_trusted: list[IPvAnyNetwork] = []
    show_version: bool = False
    uw_compat: bool = False
    # None: "nobody" when started as root, else whoever started it (gateway.privileges).
    user: str | None = None
    group: str | None = None  # None: the user's primary group

    @field_validator("listen", "tls_listen", "proxy_listen")
    @classmethod
    def _check_listen(cls, value: list[str]) -> list[str]:
        for item in value:
            _split_listen(item)
        return value

    @model_validator(mode="after")
    def _check_listeners(self) -> ServerSettings:
        if not (self.listen or self.tls_listen or self.proxy_listen):
            raise ValueError("listen, tls_listen and proxy_listen are empty: needs at least one HOST:PORT")
        for key in ("tls_cert", "tls_key"):
            if self.tls_listen and getattr(self, key) is None:
                raise ValueError(f"{key} is required when tls_listen is set")
        return self

    @field_validator("user", "group")
    @classmethod
    def _check_account(cls, value: str | None, info: ValidationInfo) -> str | None:
        lookup = pwd.getpwnam if info.field_name == "user" else grp.getgrnam
        if value is not None:
            try:
                lookup(value)
            except KeyError:
                raise ValueError(f"no such {info.field_name} {value!r}") from None
        return value

    @field_validator("hostname")
    @classmethod
    def _check_hostname(cls, value: str) -> str:
        if not value or any(c.isspace() or ord(c) < 0x21 for c in value):
            raise ValueError("must be one word without spaces or control characters")
        return value

    def addresses(self, key: ListenKey = "listen") -> list[tuple[str, int]]:
        """The HOST:PORT pairs of one listener kind."""
        return [_split_listen(item) for item in getattr(self, key)]


class Limits(_Model):
    login_timeout: float = Field(180, gt=0)
    idle_timeout: float = Field(1800, gt=0)
    command_timeout: float = Field(60, gt=0)
    send_timeout: float = Field(120, gt=0)
    bad_login_delay: float = Field(3, ge=0)
    bad_login_max_delay: float = Field(30, ge=0)
    login_failure_window: float = Field(600, gt=0)
    max_login_failures_per_second: int = Field(20, ge=1, le=10_000)
    max_tracked_addresses: int = Field(100_000, ge=1, le=10_000_000)
    ipv6_prefix: int = Field(64, ge=1, le=128)
    max_connections: int = Field(200, gt=0)
    max_connections_per_address: int = Field(20, gt=0)
    max_prelogin_connections: int = Field(100, gt=0)
    max_sessions_per_user: int = Field(10, gt=0)
    max_logins_per_address: int = Field(2, gt=0)
    listen_backlog: int = Field(1024, ge=1, le=65535)
    tls_handshake_timeout: float = Field(30, gt=0)
    proxy_header_timeout: float = Field(5, gt=0)
    close_linger: float = Field(2, ge=0)
    password_hash_workers: int = Field(2, ge=1, le=64)
    retr_chunk_size: int = Field(65536, ge=1024, le=16 * 1024 * 1024)
    # IMAP backends (docs/imap.md).
    imap_connect_timeout: float = Field(30, gt=0)
    imap_command_timeout: float = Field(120, gt=0)
    imap_fetch_chunk: int = Field(1024 * 1024, ge=4096, le=64 * 1024 * 1024)
    imap_fetch_memory: int = Field(64 * 1024 * 1024, ge=4096)
    imap_readahead: int = Field(256 * 1024, ge=0, le=64 * 1024 * 1024)
    imap_budget_timeout: float = Field(30, gt=0)
    imap_max_workers: int = Field(64, ge=2, le=4096)
    expunge_without_uidplus: bool = False

    @model_validator(mode="after")
    def _check_imap_memory(self) -> Limits:
        if self.imap_fetch_memory < self.imap_fetch_chunk:
            raise ValueError("imap_fetch_memory must be at least imap_fetch_chunk")
        return self


if TYPE_CHECKING:
    Backend = BackendConfig  # every entry is one, of the type its `type` names
else:
    # A `[[backend]]` table is validated against the model its `type` names.
    Backend = Annotated[functools.reduce(operator.or_, (t.model for t in BACKENDS.values())),
                        Field(discriminator="type")]


class Routing(_Model):
    default: str
    domains: dict[str, str] = {}
    users: dict[str, str] = {}


class Config(_Model):
    server: ServerSettings = Field(default_factory=ServerSettings)
    limits: Limits = Field(default_factory=Limits)
    backend: list[Backend] = Field(min_length=1)
    routing: Routing

    @model_validator(mode="after")
    def _check_names(self) -> Config:
        names = [b.name for b in self.backend]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"backend names must be unique: {', '.join(dupes)}")
        if self.routing.default not in names:
            raise ValueError(f"routing.default names unknown backend {self.routing.default!r}")
        for table in ("domains", "users"):
            for key, target in getattr(self.routing, table).items():
                if target not in names:
                    raise ValueError(f"routing.{table}.{key}: unknown backend {target!r}")
        return self


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)


def parse_config(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def load_config(path: Path) -> Config:
    """Read and validate a TOML config file; raise ConfigError naming the bad key."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 at octet {err.start}") from None
    except ValueError as err:  # tomllib's int(): more digits than Python converts
        raise ConfigError(f"{path}: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nested too deeply") from None
    return parse_config(data)
