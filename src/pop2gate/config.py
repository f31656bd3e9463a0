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
from collections.abc import Sequence
from dataclasses import dataclass
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
from .tomllines import key_lines, line_of


@dataclass(frozen=True)
class Issue:
    """One thing wrong in a configuration: its key path, what is wrong, and where."""

    key: str  # "limits.login_timeout", "backend.0.imap.url"; "" for the file as a whole
    message: str
    source: str = ""  # the file, when there is one
    line: int | None = None

    def __str__(self) -> str:
        where = self.source + (f":{self.line}" if self.line is not None else "")
        what = f"{self.key}: {self.message}" if self.key else self.message
        return f"{where}: {what}" if where else what


class ConfigError(Exception):
    """The configuration is invalid: `issues` names every bad key (and its line, from a file)."""

    def __init__(self, problem: str | Sequence[Issue]) -> None:
        self.issues = [Issue("", problem)] if isinstance(problem, str) else list(problem)
        super().__init__("; ".join(str(i) for i in self.issues))


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
    imap_budget_timeout: float = Field(30, gt=0)
    imap_max_workers: int = Field(64, ge=2, le=4096)
    expunge_without_uidplus: bool = False

    @model_validator(mode="after")
    def _check_imap_memory(self) -> Limits:
        if self.imap_fetch_memory < self.imap_fetch_chunk:
            raise ValueError("imap_fetch_memory must be at least imap_fetch_chunk")
        return self


class LogSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    destination: Literal["stderr", "syslog"] = "stderr"
    syslog_address: str = "/dev/log"
    syslog_facility: Literal["mail", "daemon", "auth", "authpriv", "user", "local0", "local1", "local2",
                             "local3", "local4", "local5", "local6", "local7"] = "mail"

    @field_validator("syslog_address")
    @classmethod
    def _check_syslog_address(cls, value: str) -> str:
        if not value.startswith("/"):
            _split_listen(value)
        return value


class MetricsSettings(_Model):
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is not None:
            _split_listen(value)
        return value

    def address(self) -> tuple[str, int] | None:
        return _split_listen(self.listen) if self.listen is not None else None


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
    log: LogSettings = Field(default_factory=LogSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    backend: list[Backend] = Field(min_length=1)
    routing: Routing



Loc = tuple[str | int, ...]


def _issues(err: ValidationError) -> list[tuple[Loc, str]]:
    return [(tuple(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in err.errors()]


def _cross_checks(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """What no single table can check: unique backend names, routing entries naming backends.
    Runs on the raw tables, so these are reported beside any other error."""
    backends = data.get("backend")
    routing = data.get("routing")
    if not isinstance(backends, list) or not isinstance(routing, dict):
        return []
    names: list[str] = [b["name"] for b in backends if isinstance(b, dict) and isinstance(b.get("name"), str)]
    found: list[tuple[Loc, str]] = []
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        found.append((("backend",), f"backend names must be unique: {', '.join(dupes)}"))
    if not backends or len(names) < len(backends):
        return found  # a backend without a valid name: its own error says so; rules cannot be checked
    default = routing.get("default")
    if isinstance(default, str) and default not in names:
        found.append((("routing", "default"), f"names unknown backend {default!r}"))
    for table in ("domains", "users"):
        rules = routing.get(table)
        for key, target in rules.items() if isinstance(rules, dict) else ():
            if isinstance(target, str) and target not in names:
                found.append((("routing", table, key), f"unknown backend {target!r}"))
    return found


def _file_path(loc: Loc) -> Loc:
    """`loc` as a path in the file: without the backend type pydantic puts after `backend.N`."""
    if len(loc) > 2 and loc[0] == "backend" and isinstance(loc[1], int) and loc[2] in BACKENDS:
        return loc[:2] + loc[3:]
    return loc


def _validate(data: dict[str, Any], source: str = "", text: str | None = None) -> Config:
    found: list[tuple[Loc, str]] = []
    config = None
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        found = _issues(err)
    if isinstance(data, dict):
        found += _cross_checks(data)
    if not found:
        assert config is not None
        return config
    lines = _key_lines(text) if text is not None else {}
    issues = [Issue(".".join(str(p) for p in loc) or "(top level)", msg, source, line_of(lines, _file_path(loc)))
              for loc, msg in found]
    raise ConfigError(sorted(issues, key=lambda i: (i.line is None, i.line or 0)))  # in file order


def _key_lines(text: str) -> dict[Loc, int]:
    try:
        return key_lines(text)
    except Exception:  # a position is a help, never a reason to fail: the errors stand without it
        return {}


def parse_config(data: dict[str, Any]) -> Config:
    """Validate configuration tables; raise ConfigError naming every bad key."""
    return _validate(data)


def load_config(path: Path) -> Config:
    """Read and validate a TOML config file: a Config, or ConfigError naming every bad key
    with its line."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode()
        data = tomllib.loads(text)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([Issue("", str(err), source)]) from None
    except UnicodeDecodeError as err:
        raise ConfigError([Issue("", f"not UTF-8 at octet {err.start}", source)]) from None
    except ValueError as err:  # tomllib's int(): more digits than Python converts
        raise ConfigError([Issue("", str(err), source)]) from None
    except RecursionError:
        raise ConfigError([Issue("", "arrays or tables nested too deeply", source)]) from None
    return _validate(data, source, text)
