"""Logging set-up: one line per event on stderr (stdout may be the POP2 stream)."""

from __future__ import annotations

import logging
import sys

LEVELS = ("debug", "info", "warning", "error")


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pop2gate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
