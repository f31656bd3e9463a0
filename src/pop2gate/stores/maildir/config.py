"""`[[backend]] type = "maildir"`: the embedded store's settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ..base import BackendConfig


class MaildirBackend(BackendConfig):
    type: Literal["maildir"]
    path: Path
    users_file: Path

    def needed_access(self) -> dict[str, tuple[Path, int]]:
        """Key -> (path, `os.access` mode) the serving user needs: the store opens `path`, creates
        and renames below it, and reads `users_file` at each login (missing: no users yet, so
        its directory must be searchable for it to be found once written)."""
        users = (self.users_file, os.R_OK) if os.path.exists(self.users_file) else (self.users_file.parent, os.X_OK)
        return {"path": (self.path, os.R_OK | os.W_OK | os.X_OK), "users_file": users}
