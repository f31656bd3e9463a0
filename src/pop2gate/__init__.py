"""pop2gate: a secure IMAP-to-POP2 (RFC 937) conversion server."""

__version__ = "0.1.0"
