"""Logging set-up: one line per event, as text or JSON, to stderr or syslog.

Standard output is never used (in inetd mode it is the POP2 stream). Every line logged
while a session runs carries that session's id (`session=` in text, `"session"` in JSON),
the lines of the stores it calls included: the id lives in a context variable of the
session's task. Event lines pass their fields as `extra=event(...)`; JSON prints them as
keys of their own. No password is ever passed to a log call.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from .config import LogSettings

LEVELS = ("debug", "info", "warning", "error")

_session: ContextVar[str] = ContextVar("pop2gate_session", default="")


def begin_session() -> str:
    """Give the running task (one connection) a new session id, and return it."""
    sid = secrets.token_hex(6)
    _session.set(sid)
    return sid


def event(name: str, **fields: object) -> dict[str, object]:
    """`extra=` for an event line: its name and fields, which JSON lines show as keys."""
    return {"event": name, "fields": fields}


class _AddSession(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.session = _session.get()
        return True


class TextFormatter(logging.Formatter):
    """`[TIME ]LEVEL logger: [session=ID ]message`; no time where the log's reader adds one."""

    def __init__(self, timestamps: bool) -> None:
        super().__init__(("%(asctime)s " if timestamps else "") + "%(levelname)s %(name)s: %(session_tag)s%(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        sid = getattr(record, "session", "")
        record.session_tag = f"session={sid} " if sid else ""  # put in its place, not searched for
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, session, event, message,
    the event's fields, and the exception's traceback if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        for key in ("session", "event"):
            if getattr(record, key, ""):
                out[key] = getattr(record, key)
        out["message"] = record.getMessage()
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def under_journald() -> bool:
    """Whether stderr is the journal's stream (systemd sets JOURNAL_STREAM to its device:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def stderr_is_the_client() -> bool:
    """Whether stderr is the socket stdin is, as inetd, xinetd and systemd's Accept=yes leave it:
    a log line written there would go to the client, inside the POP2 stream."""
    try:
        err, inp = os.fstat(2), os.fstat(0)
    except OSError:
        return False
    return stat.S_ISSOCK(err.st_mode) and (err.st_dev, err.st_ino) == (inp.st_dev, inp.st_ino)


def _syslog_handler(settings: LogSettings) -> logging.Handler:
    facility = logging.handlers.SysLogHandler.facility_names[settings.syslog_facility]
    handler = logging.handlers.SysLogHandler(settings.syslog_target(), facility)  # a socket path: datagram, else stream
    handler.ident = f"pop2gate[{os.getpid()}]: "
    return handler


def _handler(settings: LogSettings) -> logging.Handler:
    """The handler `settings` asks for; where stderr is the client's socket (inetd), syslog
    instead, or nowhere if it cannot be reached. Raises OSError when `destination = "syslog"`
    cannot be reached."""
    handler: logging.Handler
    if settings.destination == "syslog" or stderr_is_the_client():
        try:
            handler = _syslog_handler(settings)
        except OSError:
            if settings.destination == "syslog":
                raise
            handler = logging.NullHandler()  # stderr is the client's: no log beats a broken session
        timestamps = False  # syslog stamps each line itself
    else:
        handler = logging.StreamHandler(sys.stderr)
        timestamps = not under_journald()  # journald stamps each line itself
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter(timestamps))
    handler.addFilter(_AddSession())
    return handler


def _install(handler: logging.Handler, level: str) -> None:
    root = logging.getLogger("pop2gate")
    old = root.handlers[:]
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    for h in old:
        h.close()


_override: list[str | None] = []  # [the --log-level], once setup_logging has run


def setup_logging(settings: LogSettings | None = None, level: str | None = None) -> None:
    """Send pop2gate's log lines where `settings` ([log]) says; `level` (--log-level) overrides its
    level, now and at every reload. Raises OSError when `destination = "syslog"` cannot be reached."""
    settings = settings or LogSettings()
    _install(_handler(settings), level or settings.level)
    _override[:] = [level]


def prepare_reload(settings: LogSettings) -> Callable[[], None] | None:
    """What puts `settings` in force at a reload, made ready now (raises OSError as setup_logging
    does, changing nothing); None where setup_logging never ran (a gateway inside a test)."""
    if not _override:
        return None
    handler = _handler(settings)
    level = _override[0] or settings.level
    return lambda: _install(handler, level)
