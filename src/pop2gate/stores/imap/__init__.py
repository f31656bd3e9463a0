"""The IMAP store: a user's IMAP mailbox served over POP2."""

from .store import ByteBudget, ImapMailbox, ImapStore, split_master

__all__ = ["ByteBudget", "ImapMailbox", "ImapStore", "split_master"]
