"""`[[backend]] type = "maildir"`: the embedded store's settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..base import BackendConfig


class MaildirBackend(BackendConfig):
    """The embedded store: one Maildir per user below `path`, passwords in `users_file`.

    What it does on the wire: LF line ends become CRLF; a message whose last line has no line
    end gets one; the `=c` count is exactly the octets RETR sends. Messages flagged `T`
    (trashed) and anything that is not a regular file (a symlink, say) are not listed. A folder
    that is a symlink, or resolves outside the user's Maildir, reads as empty (`#0`). A message
    of up to `limits.retr_chunk_size` octets is read once, when counted (with the next ones, up
    to `limits.maildir_readahead` octets), and RETR sends those octets. ACKS renames the message
    into `cur/` with the `S` (seen) flag, together with the store's next look at the folder, and
    at the latest when the folder is left or the session ends, however it ends. ACKD deletes the
    file when the folder is released (QUIT, or FOLD), and never otherwise.
    """

    type: Literal["maildir"]
    path: Path = Field(
        description="Directory holding one Maildir per user: `<path>/<user>/` is INBOX (`cur/ new/ tmp/`), "
                    "Maildir++ folders are `<path>/<user>/.Archive.2024/` for `Archive/2024` (levels in IMAP "
                    "modified UTF-7, as Dovecot writes them). A user's Maildir is created at first login.")
    users_file: Path = Field(
        description="`name:argon2-hash` lines, mode 0600. Written by `pop2gate user add NAME -c FILE` (or "
                    "`--users-file FILE`); read at each login, so changes take effect at once.")

    def needed_access(self) -> dict[str, tuple[Path, int]]:
        """Key -> (path, `os.access` mode) the serving user needs: the store opens `path`, creates
        and renames below it, and reads `users_file` at each login (missing: no users yet, so
        its directory must be searchable for it to be found once written)."""
        users = (self.users_file, os.R_OK) if os.path.exists(self.users_file) else (self.users_file.parent, os.X_OK)
        return {"path": (self.path, os.R_OK | os.W_OK | os.X_OK), "users_file": users}
