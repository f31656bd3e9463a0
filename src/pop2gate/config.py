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


def doc_default(text: str) -> dict[str, Any]:
    """`json_schema_extra` for a default the reference describes in words (docs/configuration.md)."""
    return {"doc_default": text}


class ServerSettings(_Model):
    """Where and how the server listens, and who it runs as."""

    hostname: str = Field(
        default_factory=socket.gethostname, json_schema_extra=doc_default("the machine's name"),
        description="The host name in the greeting `+ POP2 <hostname> pop2gate server ready`. One word.")
    listen: list[str] = Field(
        ["127.0.0.1:109"],
        description="Addresses to listen on, `HOST:PORT`; IPv6 as `[::1]:109`. Port 0 picks a free port. May be "
                    "empty when `tls_listen` or `proxy_listen` is not; at least one address is required.")
    tls_listen: list[str] = Field(
        [], description="Addresses where clients speak TLS from the first octet, POP2 inside (TLS 1.2 or later). "
                        "See [listeners.md](listeners.md).")
    tls_cert: Path | None = Field(
        None, description="The server's certificate chain (PEM) for `tls_listen`; required when it is set. Read "
                          "at start, before dropping root.")
    tls_key: Path | None = Field(
        None, description="The private key (PEM) of `tls_cert`; required when `tls_listen` is set.")
    proxy_listen: list[str] = Field(
        [], description="Addresses whose connections must start with a PROXY protocol header (v1 or v2) from a "
                        "trusted proxy; the header's client address becomes the session's peer. See "
                        "[listeners.md](listeners.md).")
    proxy_trusted: list[IPvAnyNetwork] = Field(
        [], description="Networks (CIDR, e.g. `\"10.0.0.2/32\"`) the proxies connect from; empty: nobody. A "
                        "connection to `proxy_listen` from anywhere else is closed unread.")
    show_version: bool = Field(
        False, description="Put the version in the greeting (`+ POP2 host pop2gate 0.1.0 server ready`). Off by "
                           "default: a version helps attackers more than clients.")
    uw_compat: bool = Field(
        False, description="Message data as UW `ipop2d` sent it: a `Status: RO` line (`R` when seen, `O` for "
                           "old) at the end of the header and a CRLF after every message, both counted in `=c`. "
                           "For clients written against UW.")
    user: str | None = Field(
        None, json_schema_extra=doc_default("`nobody` as root, else whoever started it"),
        description="Started as root, `serve` binds its listeners, then becomes this user for good (real, "
                    "effective and saved ids; supplementary groups reduced to `group`); in `--inetd` mode it "
                    "switches before reading anything. Unset, as root, means `nobody`; staying root takes "
                    "`user = \"root\"` (or another uid-0 user), which switches nothing and logs a warning. Not "
                    "started as root: unset means staying who you are; set, it must be the current user, else "
                    "exit 2. The codecs sessions use are loaded before the switch, so the unprivileged process "
                    "never imports from the interpreter's files. After the switch and before serving, each "
                    "store's files are checked as this user: a Maildir `path` must be readable, writable and "
                    "searchable, its `users_file` and an IMAP `ca_file` readable; if not, `pop2gate: config "
                    "error: backend.N.<key>: <path> is not ... by user <name>` and exit 2. Homes below `path` "
                    "(`<path>/<user>/`) must belong to this user too. `pop2gate demo` always serves as whoever "
                    "runs it: its files are that user's own.")
    group: str | None = Field(
        None, json_schema_extra=doc_default("the user's primary group"),
        description="The group to switch to with `user` (or with the default `nobody`).")

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
    """Every limit the server enforces. Times are in seconds.

    Fixed by the protocol, not settings: a command line is at most 512 octets including its
    line end (RFC 937), and the server never holds more than that of unparsed input per session.
    """

    login_timeout: float = Field(
        180, gt=0, description="Time from connect to a successful HELO, in total: a client that trickles octets "
                               "gains nothing. Then `- Autologout; idle for too long` and close; nothing is "
                               "deleted.")
    idle_timeout: float = Field(
        1800, gt=0, description="Time allowed between commands after login (UW and Dovecot use the same). Same "
                                "reply and close; nothing is deleted.")
    command_timeout: float = Field(
        60, gt=0, description="Time a command line may take from its first octet to its line end; a trickle "
                              "cannot stretch it. Same reply and close.")
    send_timeout: float = Field(
        120, gt=0, description="Time a client may take no data we send (RETR to a client that stopped reading, "
                               "say) before the connection is cut. Nothing is deleted.")
    bad_login_delay: float = Field(
        3, ge=0, description="Delay before `- Bad login` is sent and the connection closed, for a first recent "
                             "failure. It doubles with each further failure from the same address (see "
                             "`ipv6_prefix`), and with each further failure for the same user name (as sent in "
                             "HELO) from any address; the larger of the two applies. Slows password guessing "
                             "from one address and across many.")
    bad_login_max_delay: float = Field(30, ge=0, description="The cap on that doubling delay.")
    login_failure_window: float = Field(
        600, gt=0, description="How long failures are remembered after an address's (or user name's) latest one. "
                               "A successful login forgets only that user's failures from that address, never "
                               "another account's.")
    max_login_failures_per_second: int = Field(
        20, ge=1, le=10_000,
        description="Failed logins per second across all addresses; past it, every further failure waits "
                    "`bad_login_max_delay`. Caps guessing spread over more addresses and names than the doubling "
                    "can catch: with the default `max_connections` the unthrottled rate would be about 67 a "
                    "second, while honest clients rarely fail more than a few a second.")
    max_tracked_addresses: int = Field(
        100_000, ge=1, le=10_000_000,
        description="Addresses whose failures are remembered; the same bound holds for user names and for "
                    "address-user pairs. Past it, the oldest (by latest failure) is forgotten first, so each "
                    "failure costs the same however many are tracked. About 75 MB when all three are full.")
    ipv6_prefix: int = Field(
        64, ge=1, le=128,
        description="IPv6 clients are counted by this prefix, for the login delay and for "
                    "`max_connections_per_address`: one host usually owns a whole /64. An IPv4-mapped IPv6 "
                    "address counts as its IPv4 address.")
    max_connections: int = Field(
        200, gt=0,
        description="Sessions served at once by one process. When a new connection would pass it, the oldest "
                    "session that has not logged in gives way (one waiting out a failed login's delay first; then "
                    "one waiting for HELO from an address that failed a login recently; then one that has sent "
                    "nothing for `greeting_grace`; then the oldest whose HELO has arrived or that is newer than "
                    "that; then one whose login is under way) and gets `- Too many "
                    "connections, try again later`; a logged-in session never does. When every slot is logged "
                    "in, the new connection gets that reply and is closed. At start the open-file limit is raised "
                    "to about twice this (plus 64), or the server refuses to start naming this key.")
    max_connections_per_address: int = Field(
        20, gt=0, description="Sessions from one client address at once; past it, the same reply and close. "
                              "Keeps one client from taking every slot.")
    max_prelogin_connections: int = Field(
        100, gt=0, description="Sessions that have not logged in, at once; past it, the oldest of them gives way "
                               "as above. Idle or failing clients cannot hold the slots real users need.")
    greeting_grace: float = Field(
        2, ge=0, description="Time after connecting in which a client that has sent nothing yet does not count "
                             "as idle when a session must give way: time to read the greeting and send HELO. "
                             "Past it, such a client gives way before any whose HELO has arrived.")
    max_sessions_per_user: int = Field(
        10, gt=0, description="Logged-in sessions of one user (per backend) at once; past it the new login gets "
                              "`- Too many sessions for this user, try again later`.")
    max_logins_per_address: int = Field(
        2, gt=0, description="Logins one client address (IPv6: its `ipv6_prefix` network) has under way at once; "
                             "more wait their turn before the password is checked. Addresses that failed a login "
                             "within `login_failure_window` have one login under way at a time between them, so a "
                             "flood of failing logins cannot queue ahead of everyone else's password check.")
    listen_backlog: int = Field(
        1024, ge=1, le=65535,
        description="Connections the kernel queues for each listener before pop2gate accepts them (capped by "
                    "`net.core.somaxconn`). Too small, and a burst of clients sees connection timeouts rather "
                    "than a reply.")
    tls_handshake_timeout: float = Field(
        30, gt=0, description="Time a connection to `tls_listen` has to complete its TLS handshake; then it is "
                              "closed (logged). Until then it holds no session slot.")
    proxy_header_timeout: float = Field(
        5, gt=0, description="Time a connection to `proxy_listen` has to send its whole PROXY header; then it is "
                             "closed (logged), without a greeting.")
    close_linger: float = Field(
        2, ge=0, description="When a session ends, the server sends its last reply and FIN, then reads and "
                             "discards client input for at most this long, so unread input cannot turn the close "
                             "into a reset that destroys the last reply.")
    password_hash_workers: int = Field(
        2, ge=1, le=64, description="Password checks (argon2id, 19 MiB each) of the Maildir store that run at "
                                    "once; more wait. Bounds the memory and CPU a burst of logins can take.")
    retr_chunk_size: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024,
        description="Octets read from the store and written to the client at a time during RETR. Bounds the "
                    "memory one transfer holds.")
    # Maildir backends.
    maildir_readahead: int = Field(
        256 * 1024, ge=0, le=64 * 1024 * 1024,
        description="Maildir backends: when a message is counted (READ, or the answer to an ack), the messages "
                    "after it are read too, in the same trip to a worker thread, while their octets total at "
                    "most this (0: none); each at most `retr_chunk_size`. Held until sent, or until the session "
                    "moves elsewhere: with the message counted (up to `retr_chunk_size`), the most one session "
                    "holds.")
    maildir_recheck_interval: float = Field(
        1.0, ge=0, le=3600,
        description="Maildir backends: a message read ahead (or counted, before its RETR) is announced from "
                    "what was read while that read is younger than this; older, the folder is looked at again, "
                    "and a message another client removed reads `=0`. 0: always look again. Within it, a "
                    "message another client removed is still sent whole from what was read; never a wrong "
                    "count, never anything lost.")
    # IMAP backends (docs/imap.md).
    imap_connect_timeout: float = Field(
        30, gt=0, description="IMAP backends: time to connect, finish TLS and read the greeting.")
    imap_command_timeout: float = Field(
        120, gt=0, description="IMAP backends: time each IMAP command may take (each partial fetch is one "
                               "command).")
    imap_fetch_chunk: int = Field(
        1024 * 1024, ge=4096, le=64 * 1024 * 1024,
        description="IMAP backends: octets per partial fetch of a message that was not read ahead; a larger "
                    "message takes several, each sent before the one before has been written to the client, and "
                    "is written to the client as it arrives. Also the largest literal an IMAP response may carry "
                    "otherwise (read-ahead bodies).")
    imap_fetch_memory: int = Field(
        64 * 1024 * 1024, ge=4096,
        description="IMAP backends: octets of message data all sessions of all IMAP backends together may be "
                    "reading from the backends at once; a session waits for room before each read of a message "
                    "from the server (256 KiB at most). At least `imap_fetch_chunk`.")
    imap_readahead: int = Field(
        256 * 1024, ge=0, le=64 * 1024 * 1024,
        description="IMAP backends: octets of small messages a session reads ahead in one `UID FETCH` (0: off). "
                    "A message counts as small up to half of it, and at most `imap_fetch_chunk`. Held in "
                    "`imap_fetch_memory` until sent; read-ahead never waits for room, and all sessions' read-ahead "
                    "together holds at most half of `imap_fetch_memory`.")
    imap_recheck_interval: float = Field(
        1.0, ge=0, le=3600,
        description="IMAP backends: a message count pop2gate already knows (a message read ahead, one "
                    "announced before) is announced without asking the server again while the last time it "
                    "was asked what changed (the folder's selection, a `NOOP`) is younger than this; older, a "
                    "`NOOP` first lets the server "
                    "report messages another client removed, which then read `=0`. 0: always ask. Within "
                    "it, a message read ahead that another client removed is still sent whole from what "
                    "was read; never a wrong count, never anything lost. See [imap.md](imap.md).")
    imap_budget_timeout: float = Field(
        30, gt=0, description="IMAP backends: time a session waits for room in `imap_fetch_memory` before a "
                              "read. Past it the RETR fails like any backend failure (the connection closes "
                              "mid-data, nothing is deleted) and the log says so.")
    imap_max_logins: int = Field(
        32, ge=1, le=4096,
        description="IMAP backends: logins (connect, TLS, ID, authenticate) under way at once to one backend; "
                    "more wait their turn. A backend that makes logins wait (its login processes, its penalty "
                    "for failures) then holds at most this many of its connections in logins. Replaces "
                    "`imap_max_workers` (the IMAP client no longer uses threads): a config that sets that key "
                    "is refused with a message naming this one.")
    expunge_without_uidplus: bool = Field(
        False, description="IMAP backends without UIDPLUS: a plain `EXPUNGE` would also remove messages other "
                           "clients flagged `\\Deleted`, so by default pop2gate only flags its messages and logs "
                           "it; `true` expunges anyway. See [imap.md](imap.md).")

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: object) -> object:
        if isinstance(data, dict) and "imap_max_workers" in data:
            raise ValueError("imap_max_workers is gone: the IMAP client runs no threads; remove it (logins "
                             "at once per backend: imap_max_logins)")
        return data

    @model_validator(mode="after")
    def _check_imap_memory(self) -> Limits:
        if self.imap_fetch_memory < self.imap_fetch_chunk:
            raise ValueError("imap_fetch_memory must be at least imap_fetch_chunk")
        return self


class LogSettings(_Model):
    """Where log lines go and what they look like. Each connection gets a session id (12 hex digits),
    on every line logged for it, the stores' lines included. The event lines: `connect`, `login`
    (user, backend, client address), `bad login` (user, backend when the name routes to one,
    delay), `select`, `retr`, `deleted` (deletions applied), `quit`, `close`/`disconnect` (and
    why), `closed`. At `debug` each command is logged too. Passwords never appear, at any level;
    in inetd mode standard output is the POP2 stream and carries nothing else.
    [troubleshooting.md](troubleshooting.md) lists the lines and what to do about each.
    """

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log detail. `--log-level` on the command line overrides it.")
    format: Literal["text", "json"] = Field(
        "text", description="`text`: `TIME LEVEL logger: session=ID message`. `json`: one JSON object a line with "
                            "`time` (UTC), `level`, `logger`, `session`, `event`, `message` and the event's fields "
                            "(`peer`, `user`, `backend`, `folder`, `messages`, `n`, `octets`, `count`, `delay`, "
                            "`why`).")
    destination: Literal["stderr", "syslog"] = Field(
        "stderr", description="Standard error, or syslog. On standard error under systemd (it is the journal's "
                              "stream: `JOURNAL_STREAM`), text lines carry no time of their own: the journal adds "
                              "it. Syslog lines carry none either. Where standard error is the client's socket (inetd, "
                              "xinetd, systemd `Accept=yes`), lines go to syslog at `syslog_address` instead, or "
                              "nowhere if it cannot be reached: never into the POP2 stream.")
    syslog_address: str = Field(
        "/dev/log", description="With `destination = \"syslog\"`: a socket path, or `HOST:PORT` (UDP).")
    syslog_facility: Literal["mail", "daemon", "auth", "authpriv", "user", "local0", "local1", "local2",
                             "local3", "local4", "local5", "local6", "local7"] = Field(
        "mail", description="With `destination = \"syslog\"`: the facility of every line.")

    @field_validator("syslog_address")
    @classmethod
    def _check_syslog_address(cls, value: str) -> str:
        if not value.startswith("/"):
            _split_listen(value)
        return value

    def syslog_target(self) -> str | tuple[str, int]:
        """`syslog_address` as SysLogHandler takes it: a socket path, or (host, port)."""
        return self.syslog_address if self.syslog_address.startswith("/") else _split_listen(self.syslog_address)


class MetricsSettings(_Model):
    """Prometheus metrics (counters end in `_total`): `pop2gate_sessions_active`,
    `pop2gate_sessions_total`, `pop2gate_logins_total{result="ok|failed|refused",backend}`,
    `pop2gate_messages_retrieved_total{backend}`, `pop2gate_retrieved_octets_total{backend}`,
    `pop2gate_deletions_total{backend}`, `pop2gate_backend_command_seconds{backend,command}` (a
    histogram of each store call a session makes: `login`, `select`, `wire_size`, `mark_seen`,
    `release`), `pop2gate_errors_total{kind="protocol|timeout|send_timeout|backend|retr|internal"}`,
    `pop2gate_connections_refused_total{reason="max_connections|max_connections_per_address|max_sessions_per_user|shed"}`
    and `pop2gate_logins_throttled_total` (failed logins whose delay was raised above
    `bad_login_delay` by repeated failures). No label holds a user name or a client address.
    Values are per process: with several instances, scrape each.
    """

    listen: str | None = Field(
        None, json_schema_extra=doc_default("off"),
        description="`HOST:PORT` where Prometheus text is served at `/metrics` (e.g. `\"127.0.0.1:9109\"`). "
                    "Bound before the server drops root. Not served in `--inetd` mode (one process per "
                    "connection).")

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
    """Which backend serves which user. The client never names a host. UW's `HELO name:user
    password` form is accepted only where `name` is the backend these rules give that user, or a
    backend marked `selectable`; any other prefix is a bad login, and no connection is made
    anywhere.
    """

    default: str = Field(description="The backend that serves every user not matched otherwise. Must name a "
                                     "`[[backend]]`.")
    domains: dict[str, str] = Field(
        {}, description="`{ \"example.org\" = \"backend\" }`: by the user name's part after `@`, "
                        "case-insensitive; win over `default`.")
    users: dict[str, str] = Field(
        {}, description="`{ \"alice\" = \"backend\" }`: per-user rules; win over `domains`.")


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
