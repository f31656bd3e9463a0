"""The TOML configuration: parsed with tomllib, validated with pydantic.

Every limit is a named setting here; docs/configuration.md lists them.
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (IPv6 as [addr]:port)")
    return host.strip("[]"), int(port)


class ServerSettings(_Model):
    hostname: str = Field(default_factory=socket.gethostname)
    listen: list[str] = ["127.0.0.1:109"]
    show_version: bool = False
    uw_compat: bool = False

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one HOST:PORT")
        for item in value:
            _split_listen(item)
        return value

    @field_validator("hostname")
    @classmethod
    def _check_hostname(cls, value: str) -> str:
        if not value or any(c.isspace() or ord(c) < 0x21 for c in value):
            raise ValueError("must be one word without spaces or control characters")
        return value

    def addresses(self) -> list[tuple[str, int]]:
        return [_split_listen(item) for item in self.listen]


class Limits(_Model):
    login_timeout: float = Field(180, gt=0)
    idle_timeout: float = Field(1800, gt=0)
    bad_login_delay: float = Field(3, ge=0)
    bad_login_max_delay: float = Field(30, ge=0)
    login_failure_window: float = Field(600, gt=0)
    max_connections: int = Field(200, gt=0)
    max_connections_per_address: int = Field(20, gt=0)
    close_linger: float = Field(2, ge=0)
    password_hash_workers: int = Field(2, ge=1, le=64)
    retr_chunk_size: int = Field(65536, ge=1024, le=16 * 1024 * 1024)


class MaildirBackend(_Model):
    name: str
    type: Literal["maildir"]
    path: Path
    users_file: Path


Backend = Annotated[Union[MaildirBackend], Field(discriminator="type")]


class Routing(_Model):
    default: str


class Config(_Model):
    server: ServerSettings = Field(default_factory=ServerSettings)
    limits: Limits = Field(default_factory=Limits)
    backend: list[Backend] = Field(min_length=1)
    routing: Routing

    @model_validator(mode="after")
    def _check_names(self) -> "Config":
        names = [b.name for b in self.backend]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"backend names must be unique: {', '.join(dupes)}")
        if self.routing.default not in names:
            raise ValueError(f"routing.default names unknown backend {self.routing.default!r}")
        return self

    def backend_named(self, name: str) -> Backend:
        return next(b for b in self.backend if b.name == name)


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)


def parse_config(data: dict) -> Config:
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
    return parse_config(data)
