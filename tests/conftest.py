"""Shared fixtures."""

from __future__ import annotations

import pytest


# --- IMAP backend: a private Dovecot (tests/dovecot.py) ---------------------

@pytest.fixture(scope="session")
def dovecot():
    """A running private Dovecot; a test that needs it fails (never skips) without it."""
    from dovecot import Dovecot

    server = Dovecot().start()
    try:
        yield server
    finally:
        server.stop()
