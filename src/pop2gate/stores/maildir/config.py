"""`[[backend]] type = "maildir"`: the embedded store's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..base import BackendConfig


class MaildirBackend(BackendConfig):
    type: Literal["maildir"]
    path: Path
    users_file: Path
