"""What the process needs from the system: enough open files, and accept errors kept quiet."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
from typing import Any

from ..config import ConfigError, Limits

log = logging.getLogger("pop2gate.server")

SPARE_FILES = 64  # listeners, logs, the users file, thread pools' pipes
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def files_needed(limits: Limits) -> int:
    """Each session holds its client socket and at most one backend connection."""
    return 2 * limits.max_connections + SPARE_FILES


def ensure_open_files(limits: Limits) -> None:
    """Raise the soft open-file limit to what `max_connections` needs, or refuse to start."""
    needed = files_needed(limits)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        top = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        log.info("open-file limit raised from %d to %d for max_connections=%d", soft, top, limits.max_connections)
        if top < needed:
            raise ConfigError(f"limits.max_connections: {limits.max_connections} sessions need about {needed} "
                              f"open files, but the limit is {hard} (ulimit -n); lower it or raise the limit")


class AcceptErrors:
    """A loop exception handler: an accept that fails for want of resources is one warning a
    second (asyncio retries it), not a traceback per attempt; anything else as usual."""

    def __init__(self) -> None:
        self._last = float("-inf")
        self._quiet = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES):
            loop.default_exception_handler(context)
            return
        now = loop.time()
        if now - self._last < 1:
            self._quiet += 1
            return
        more = f" ({self._quiet} more since the last report)" if self._quiet else ""
        log.warning("accepting a connection failed: %s%s", exc.strerror, more)
        self._last, self._quiet = now, 0
