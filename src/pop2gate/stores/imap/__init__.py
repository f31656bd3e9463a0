"""The IMAP store: a user's IMAP mailbox served over POP2 (docs/imap.md).

`config` the `[[backend]] type = "imap"` settings, `store` the asynchronous store the
sessions use, `conn` one asyncio IMAP connection (pipelined), `parser` the server's
responses (sans I/O), `wire` IMAP quoting and FETCH items, `budget` the cap on message
octets in memory.
"""

from .budget import ByteBudget
from .config import ImapBackend
from .store import ImapMailbox, ImapStore, imap_name, split_master

__all__ = ["ByteBudget", "ImapBackend", "ImapMailbox", "ImapStore", "imap_name", "split_master"]
