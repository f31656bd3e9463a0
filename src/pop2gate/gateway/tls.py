"""Implicit TLS for POP2 clients: the server's SSL context, and the handshake with its deadline."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path


class TlsError(OSError):
    """TLS cannot be set up: the certificate or key at start (pop2gate does not start), or one
    connection's handshake (that connection is closed)."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2 or later, the certificate chain in `cert` with its private key in `key` (PEM)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ValueError) as err:
        raise TlsError(f"server.tls_cert {cert} / server.tls_key {key}: {err}") from None
    return context


def hold_input(writer: asyncio.StreamWriter) -> None:
    """Stop reading a connection just accepted, so that its first octets (the ClientHello) wait in
    the socket for `handshake` rather than land in the stream's buffer, where TLS never sees them.
    Call it in the listener's callback itself, before the event loop reads."""
    transport = writer.transport
    assert isinstance(transport, asyncio.ReadTransport)  # a socket's transport reads too
    transport.pause_reading()


async def handshake(writer: asyncio.StreamWriter, context: ssl.SSLContext, timeout: float) -> None:
    """Turn an accepted connection into TLS within `timeout` seconds, or close it and raise TlsError."""
    try:
        await asyncio.wait_for(writer.start_tls(context), timeout)
    except TimeoutError:
        writer.transport.abort()
        raise TlsError(f"no TLS handshake within limits.tls_handshake_timeout={timeout:g}s") from None
    except OSError as err:  # ssl.SSLError, a reset or an end of stream during the handshake
        writer.transport.abort()
        raise TlsError(f"TLS handshake failed: {err.__class__.__name__}: {err}") from None
