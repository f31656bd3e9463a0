"""The SASL initial responses that carry an OAuth2 access token to an IMAP server."""

from __future__ import annotations

from typing import Literal

Mechanism = Literal["xoauth2", "oauthbearer"]


def _saslname(user: str) -> str:
    """RFC 5801 saslname: `,` and `=` escaped."""
    return user.replace("=", "=3D").replace(",", "=2C")


def initial_response(mechanism: Mechanism, user: str, token: str, host: str, port: int) -> bytes:
    """The client's first message, before base64: XOAUTH2 (Google's and Microsoft's form) or
    OAUTHBEARER (RFC 7628, with the server's host and port)."""
    if mechanism == "xoauth2":
        text = f"user={user}\x01auth=Bearer {token}\x01\x01"
    else:
        text = f"n,a={_saslname(user)},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
    return text.encode("utf-8")
