"""The MailStore interface every backend implements, and the base of every backend's settings.

A store authenticates a user and hands back a Mailbox: that user's view of
their folders. Messages are named by a store-chosen id (a Maildir unique name,
an IMAP UID) that never changes while the session lasts, so another client
changing the folder can never make a session touch the wrong message.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field


class StoreError(Exception):
    """A backend failed. The message goes to the log; the client sees a generic reply."""


class BackendConfig(BaseModel):
    """One `[[backend]]` table. Each backend type narrows `type` to its own name (a Literal)
    and adds its keys; `pop2gate.stores.registry` knows them all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The backend's name, unique: `[routing]` names it, and so may UW-style "
                                  "`HELO name:user`.")
    type: str = Field(description="Which store serves it; its other keys depend on it.")
    selectable: bool = Field(
        False, description="Whether a client may pick it with UW's `HELO name:user`. Without it, `name:user` is "
                           "accepted only where `name` is the backend the `[routing]` rules give that user; "
                           "anything else is `- Bad login`, and no backend is contacted.")


@dataclass(frozen=True)
class Peer:
    """The POP2 client's address, as the gateway sees it."""

    host: str
    port: int


@dataclass(frozen=True)
class MessageRef:
    """One message of a folder snapshot: a stable id, its size in octets, its seen flag.

    `size` is what the store knows when it selects the folder; the exact
    number of octets RETR sends comes from `Mailbox.wire_size`.
    """

    id: str
    size: int
    seen: bool = False


class Mailbox(Protocol):
    """One authenticated user's mail."""

    async def select(self, folder: str) -> list[MessageRef]:
        """Open `folder` and return its messages, oldest first.

        A folder that is missing or unreadable gives an empty list. The name has
        already passed `pop2gate.pop2.wire.folder_levels` (the session's check);
        a store adds only its own rules.
        """

    async def wire_size(self, msg: MessageRef) -> int:
        """Octets RETR will send for `msg`: its wire form (`pop2gate.stores.wireform`),
        with UW ipop2d's Status line and trailer when the store was built with uw_compat.

        0 when the message is gone or empty.
        """

    def fetch(self, msg: MessageRef) -> AsyncGenerator[bytes, None]:
        """Stream exactly the octets `wire_size` counted, in bounded chunks.

        Raises StoreError when the message is gone or the backend fails.
        """

    async def mark_seen(self, msg: MessageRef) -> None:
        """Flag `msg` as seen."""

    async def release(self, deleted: Sequence[MessageRef]) -> None:
        """Apply deletions for exactly `deleted` in the selected folder.

        Called only on a clean release (QUIT, or FOLD to another folder).
        Raises StoreError when the deletions could not be applied.
        """

    async def close(self) -> None:
        """End the backend session without deleting anything."""


class MailStore(Protocol):
    """A backend: checks credentials and opens a user's Mailbox."""

    name: str

    async def login(self, user: str, password: str, peer: Peer) -> Mailbox | None:
        """Return the user's Mailbox with INBOX not yet selected, or None on a bad login.

        Raises StoreError when the backend cannot be reached.
        """

    async def aclose(self) -> None:
        """Release what the store holds (thread pools, caches)."""
