"""The PROXY protocol header (v1 text, v2 binary) that a proxy sends first: the client's real address.

`parse` is sans-I/O: bytes in, a `Header`, a `NeedMore` or a `ProxyHeaderError` out, and it
never asks for more than one header can hold. `proxied_peer` reads one header from a stream,
on a listener whose connections must come from a trusted proxy.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from ..stores.base import Peer

V1_PREFIX = b"PROXY "
V1_MIN = len(b"PROXY UNKNOWN\r\n")  # the shortest v1 line
V1_MAX = 107  # the longest v1 line, CRLF included (the specification's bound)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version and command, family and transport, length
# Longer v2 headers are refused: this covers IPv6 addresses (36 octets) and the TLVs haproxy
# sends (ALPN, authority, unique id, SSL details); the specification allows up to 16 + 65535.
V2_MAX = 536
_ADDRESS_LEN = {1: 12, 2: 36}  # INET, INET6: source, destination, source port, destination port

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyHeaderError(ValueError):
    """The bytes are no valid PROXY header; the connection is to be closed."""


@dataclass(frozen=True)
class Header:
    """A whole header: `size` octets long; `source` is the client, or None to keep the connection's
    own address (v2 LOCAL, v1 UNKNOWN, UNIX and unspecified families)."""

    size: int
    source: tuple[str, int] | None


@dataclass(frozen=True)
class NeedMore:
    """The header is not complete yet: read at least `n` more octets."""

    n: int


def parse(data: bytes) -> Header | NeedMore:
    """Parse the header at the start of `data` (which may go on past it)."""
    if not data:
        return NeedMore(1)
    if V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
        return _v1(data) if len(data) >= len(V1_PREFIX) else NeedMore(V1_MIN - len(data))
    if V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        return _v2(data) if len(data) >= len(V2_SIGNATURE) else NeedMore(V2_FIXED - len(data))
    raise ProxyHeaderError("not a PROXY header")


def _v1(data: bytes) -> Header | NeedMore:
    end = data.find(b"\r\n", 0, V1_MAX)
    line = data[:end] if end >= 0 else data[:V1_MAX].removesuffix(b"\r")
    if any(not 0x20 <= c < 0x7F for c in line):
        raise ProxyHeaderError("v1 header has a character that is not printable ASCII")
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"v1 header has no CRLF within {V1_MAX} octets")
        return NeedMore(max(1, V1_MIN - len(data)))
    fields = line.split(b" ")
    if fields[:2] == [b"PROXY", b"UNKNOWN"]:
        return Header(end + 2, None)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("v1 header is not PROXY TCP4|TCP6|UNKNOWN with four fields")
    kind = ipaddress.IPv4Address if fields[1] == b"TCP4" else ipaddress.IPv6Address
    try:
        source = kind(fields[2].decode())
        kind(fields[3].decode())
    except ValueError:
        raise ProxyHeaderError(f"v1 header has a bad {fields[1].decode()} address") from None
    ports = [int(p) for p in fields[4:] if p.isdigit() and len(p) <= 5 and int(p) < 65536]
    if len(ports) != 2:
        raise ProxyHeaderError("v1 header has a bad port")
    return Header(end + 2, (str(source), ports[0]))


def _v2(data: bytes) -> Header | NeedMore:
    if data[12:13] and data[12] >> 4 != 2:
        raise ProxyHeaderError("v2 header with a version other than 2")
    if data[12:13] and data[12] & 0xF > 1:
        raise ProxyHeaderError("v2 header with a command other than LOCAL or PROXY")
    if data[13:14] and (data[13] >> 4 > 3 or data[13] & 0xF > 2):
        raise ProxyHeaderError("v2 header with an unknown address family or transport")
    if len(data) < V2_FIXED:
        return NeedMore(V2_FIXED - len(data))
    size = V2_FIXED + int.from_bytes(data[14:16], "big")
    if size > V2_MAX:
        raise ProxyHeaderError(f"v2 header of {size} octets, more than {V2_MAX}")
    if len(data) < size:
        return NeedMore(size - len(data))
    command, family, transport = data[12] & 0xF, data[13] >> 4, data[13] & 0xF
    if command == 0 or transport != 1 or family not in _ADDRESS_LEN:
        return Header(size, None)  # LOCAL (a health check), or nothing we can use: the connection's own
    if size - V2_FIXED < _ADDRESS_LEN[family]:
        raise ProxyHeaderError("v2 header shorter than its addresses")
    body = data[V2_FIXED:size]
    width = 4 if family == 1 else 16
    source = ipaddress.ip_address(body[:width])
    port = int.from_bytes(body[2 * width : 2 * width + 2], "big")
    return Header(size, (str(source), port))  # TLVs after the addresses are skipped


async def read_header(reader: asyncio.StreamReader) -> Header:
    """Read exactly one header from `reader`; nothing after it is consumed."""
    data = b""
    while isinstance(result := parse(data), NeedMore):
        try:
            data += await reader.readexactly(result.n)
        except asyncio.IncompleteReadError:
            raise ProxyHeaderError("connection closed before the PROXY header ended") from None
    return result


def is_trusted(host: str, networks: Sequence[Network]) -> bool:
    """Is `host` (a connection's address) inside one of `networks`?"""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


async def proxied_peer(reader: asyncio.StreamReader, peer: Peer, trusted: Sequence[Network],
                       timeout: float) -> Peer:
    """The client behind the proxy at `peer`, from its header; ProxyHeaderError if it is not trusted,
    sends no valid header, or takes longer than `timeout`."""
    if not is_trusted(peer.host, trusted):
        raise ProxyHeaderError("source is not in server.proxy_trusted")
    try:
        header = await asyncio.wait_for(read_header(reader), timeout)
    except TimeoutError:
        raise ProxyHeaderError(f"no PROXY header within limits.proxy_header_timeout={timeout:g}s") from None
    return peer if header.source is None else Peer(*header.source)
