"""The PROXY protocol (gateway/proxy.py): the parser on its own, with a fuzz target, and proxy
listeners on real sockets, where a trusted proxy's header names the session's peer."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import fuzz
from helpers import PASSWORD, expect_closed, read_line
from pop2gate.config import ConfigError, parse_config
from pop2gate.gateway.proxy import (
    V1_MAX,
    V2_MAX,
    V2_SIGNATURE,
    Header,
    NeedMore,
    ProxyHeaderError,
    is_trusted,
    parse,
)

GREETING = b"+ POP2 test.invalid pop2gate server ready\r\n"
HELO = f"HELO alice {PASSWORD}\r\n".encode()


# --- headers as a proxy writes them -------------------------------------------------------


def v1(source: str, sport: int, dest: str = "127.0.0.1", dport: int = 109) -> bytes:
    proto = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {proto} {source} {dest} {sport} {dport}\r\n".encode()


def v2(source: str | None, sport: int = 0, *, command: int = 1, family: int | None = None,
       transport: int = 1, tlvs: bytes = b"", version: int = 2, block: bytes = b"") -> bytes:
    """A v2 header; `source` None gives an UNSPEC family with `block` as its addresses."""
    if source is None:
        fam = 0
    else:
        src = ipaddress.ip_address(source)
        dst = ipaddress.ip_address("127.0.0.1" if src.version == 4 else "::1")
        block, fam = src.packed + dst.packed + struct.pack("!HH", sport, 109), 1 if src.version == 4 else 2
    fam = fam if family is None else family
    body = block + tlvs
    return V2_SIGNATURE + bytes([version << 4 | command, fam << 4 | transport]) + struct.pack("!H", len(body)) + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# --- the parser ---------------------------------------------------------------------------


@pytest.mark.parametrize("header,source", [
    (v1("192.0.2.7", 40000), ("192.0.2.7", 40000)),
    (v1("2001:db8::7", 65535, "::1"), ("2001:db8::7", 65535)),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
    (v2("192.0.2.9", 1234), ("192.0.2.9", 1234)),
    (v2("2001:db8::9", 4321), ("2001:db8::9", 4321)),
    (v2("192.0.2.9", 1234, tlvs=tlv(0x01, b"pop2") + tlv(0x02, b"mail.example") + tlv(0x05, b"x" * 128)),
     ("192.0.2.9", 1234)),
    (v2(None, command=0), None),  # LOCAL: the proxy's own health check
    (v2("192.0.2.9", 1234, command=0), None),  # LOCAL ignores any addresses
    (v2(None), None),  # PROXY with UNSPEC
    (v2(None, family=3, block=b"/run/x\0".ljust(216, b"\0")), None),  # UNIX
    (v2("192.0.2.9", 1234, transport=2), None),  # DGRAM: not this connection
])
def test_parse_valid_headers(header, source):
    assert parse(header + b"QUIT\r\n") == Header(len(header), source)
    for cut in range(len(header)):
        need = parse(header[:cut])
        assert isinstance(need, NeedMore) and cut + need.n <= len(header)


@pytest.mark.parametrize("data,why", [
    (b"HELO alice pw\r\n", "not a PROXY header"),
    (b"\x16\x03\x01\x02\x00", "not a PROXY header"),  # a TLS ClientHello
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 40000\r\n", "four fields"),
    (b"PROXY TCP4  192.0.2.7 127.0.0.1 40000 109\r\n", "four fields"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 \r\n", "bad port"),
    (b"PROXY TCP5 192.0.2.7 127.0.0.1 1 2\r\n", "TCP4|TCP6|UNKNOWN"),
    (b"PROXY TCP4 2001:db8::1 127.0.0.1 1 2\r\n", "TCP4 address"),
    (b"PROXY TCP6 192.0.2.7 ::1 1 2\r\n", "TCP6 address"),
    (b"PROXY TCP4 192.0.2.07 127.0.0.1 1 2\r\n", "TCP4 address"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 65536 2\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 -1 2\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\n", "printable"),  # a bare LF ends nothing
    (b"PROXY TCP4 192.0.2.7\x00", "printable"),
    (b"PROXY UNKNOWN " + b"x" * 200, f"no CRLF within {V1_MAX}"),
    (v2("192.0.2.9", 1, version=1), "version"),
    (v2("192.0.2.9", 1, command=2), "command"),
    (v2("192.0.2.9", 1, family=4), "family"),
    (v2("192.0.2.9", 1, transport=3), "transport"),
    (v2("192.0.2.9", 1, tlvs=b"t" * (V2_MAX - 16 - 12 + 1)), f"more than {V2_MAX}"),
    (V2_SIGNATURE + b"\x21\x11\x00\x08" + b"\0" * 8, "shorter than its addresses"),
])
def test_parse_refuses(data, why):
    with pytest.raises(ProxyHeaderError, match=why):
        parse(data)


def test_parse_accepts_the_largest_v2_header():
    header = v2("192.0.2.9", 1, tlvs=b"t" * (V2_MAX - 16 - 12))
    assert len(header) == V2_MAX and parse(header) == Header(V2_MAX, ("192.0.2.9", 1))


def test_trusted_networks():
    nets = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")]
    assert is_trusted("10.1.2.3", nets) and is_trusted("2001:db8::5", nets)
    assert is_trusted("::ffff:10.1.2.3", nets)  # an IPv4 client of a dual-stack listener
    assert not is_trusted("11.0.0.1", nets) and not is_trusted("unknown", nets) and not is_trusted("x", [])


# The fuzz target: any octets give a header, a "need more" within the bound, or a clean error.
v1_words = st.text(alphabet="0123456789abcdef.: \r\n", max_size=110).map(str.encode)
octets = st.one_of(
    st.binary(max_size=700),
    st.binary(max_size=120).map(lambda b: b"PROXY " + b),
    st.builds(lambda t, b: b"PROXY " + t + b" " + b, st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN"]), v1_words),
    st.builds(lambda t, w: b"PROXY " + t + b" " + " ".join(w).encode() + b"\r\n", st.sampled_from([b"TCP4", b"TCP6"]),
              st.lists(st.text(alphabet="0123456789abcdef.:", max_size=16), max_size=5)),
    st.binary(max_size=600).map(lambda b: V2_SIGNATURE + b),
    st.builds(lambda vc, ft, n, b: V2_SIGNATURE + bytes([vc, ft]) + struct.pack("!H", n) + b,
              st.sampled_from([0x20, 0x21, 0x22]), st.integers(0, 0x33), st.integers(0, 600), st.binary(max_size=600)),
)


@fuzz(3000)
@given(octets)
def test_fuzz_parse_never_raises_anything_else(data):
    try:
        result = parse(data)
    except ProxyHeaderError:
        return
    if isinstance(result, NeedMore):
        assert result.n >= 1 and len(data) + result.n <= V2_MAX
        if data.startswith(b"P"):
            assert len(data) + result.n <= V1_MAX
    else:
        assert isinstance(result, Header) and 0 < result.size <= min(len(data), V2_MAX)
        assert parse(data[:result.size]) == result  # decided by its own octets only


@fuzz(500)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(0, 65535),
       st.booleans(), st.binary(max_size=300), st.binary(max_size=40))
def test_fuzz_headers_read_back(address, port, text, tlvs, rest):
    header = v1(str(address), port, "::1" if address.version == 6 else "127.0.0.1") if text \
        else v2(str(address), port, tlvs=tlvs)
    assert parse(header + rest) == Header(len(header), (str(address), port))


# --- proxy listeners on real sockets ------------------------------------------------------


def proxy_settings(trusted: list[str] | None = None) -> dict:
    """Only a proxy listener, so the first server `make_server` starts is that one."""
    return {"listen": [], "proxy_listen": ["127.0.0.1:0"],
            "proxy_trusted": ["127.0.0.0/8"] if trusted is None else trusted}


async def proxied(srv, header: bytes):
    reader, writer = await srv.open()
    writer.write(header)
    await writer.drain()
    return reader, writer


async def closed_without_greeting(reader) -> bool:
    try:
        got = await expect_closed(reader)
    except ConnectionResetError:
        got = b""
    return got == b""


@pytest.mark.parametrize("header,peer", [
    (v1("192.0.2.7", 40000), "192.0.2.7:40000"),
    (v2("192.0.2.9", 1234, tlvs=tlv(0x02, b"mail.example")), "192.0.2.9:1234"),
    (v2("2001:db8::9", 4321), "2001:db8::9:4321"),
])
async def test_header_address_is_the_sessions_peer(make_server, env, caplog, header, peer):
    caplog.set_level(logging.INFO, logger="pop2gate")
    env.deliver("alice", b"Subject: x\n\nbody\n")
    srv = await make_server(server=proxy_settings())
    reader, writer = await proxied(srv, header)
    assert await read_line(reader) == GREETING
    writer.write(HELO + b"QUIT\r\n")
    assert await expect_closed(reader) == b"#1 message in INBOX\r\n+ OK\r\n"
    writer.close()
    assert f"connect peer={peer}" in caplog.text and f"quit peer={peer} user='alice'" in caplog.text
    assert f"proxied peer={peer} via=127.0.0.1:" in caplog.text
    assert "connect peer=127.0.0.1:" not in caplog.text


async def test_limits_count_the_header_address(make_server):
    """max_connections_per_address=1: two clients behind one proxy are two addresses, one client twice is one."""
    srv = await make_server(limits={"max_connections_per_address": 1}, server=proxy_settings())
    first, w1 = await proxied(srv, v1("192.0.2.1", 1000))
    assert await read_line(first) == GREETING
    other, w2 = await proxied(srv, v2("192.0.2.2", 1000))
    assert await read_line(other) == GREETING
    again, w3 = await proxied(srv, v1("192.0.2.1", 1001))
    assert (await read_line(again)).startswith(b"- ")  # refused: 192.0.2.1 has its one session
    for w in (w1, w2, w3):
        w.close()


@pytest.mark.parametrize("header", [v2(None, command=0), b"PROXY UNKNOWN\r\n", v2(None, family=3)])
async def test_local_and_unknown_keep_the_connections_address(make_server, caplog, header):
    caplog.set_level(logging.INFO, logger="pop2gate")
    srv = await make_server(server=proxy_settings())
    reader, writer = await proxied(srv, header)
    assert await read_line(reader) == GREETING
    port = writer.get_extra_info("sockname")[1]
    writer.write(b"QUIT\r\n")
    assert await expect_closed(reader) == b"+ OK\r\n"
    writer.close()
    assert f"connect peer=127.0.0.1:{port}" in caplog.text


async def test_header_in_pieces_and_a_command_right_after_it(make_server):
    srv = await make_server(server=proxy_settings())
    reader, writer = await srv.open()
    header = v2("192.0.2.9", 1234)
    for piece in (header[:5], header[5:14], header[14:20]):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.05)
    writer.write(header[20:] + b"QUIT\r\n")  # nothing after the header is taken as header
    assert await expect_closed(reader) == GREETING + b"+ OK\r\n"
    writer.close()


@pytest.mark.parametrize("trusted", [[], ["10.0.0.0/8", "::1/128"]])
async def test_untrusted_source_is_closed(make_server, caplog, trusted):
    caplog.set_level(logging.INFO, logger="pop2gate")
    srv = await make_server(server=proxy_settings(trusted))
    reader, writer = await proxied(srv, v1("192.0.2.7", 40000))
    assert await closed_without_greeting(reader)
    writer.close()
    assert "source is not in server.proxy_trusted" in caplog.text and srv.gateway.active == 0


@pytest.mark.parametrize("data", [HELO, b"PROXY TCP4 bogus\r\n", V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\0" * 12,
                                  b"PROXY UNKNOWN" + b"x" * 200])
async def test_garbage_is_closed(make_server, caplog, data):
    caplog.set_level(logging.INFO, logger="pop2gate")
    srv = await make_server(server=proxy_settings())
    reader, writer = await proxied(srv, data)
    assert await closed_without_greeting(reader)
    writer.close()
    assert "closed peer=127.0.0.1:" in caplog.text and srv.gateway.active == 0


async def test_no_header_in_time_is_closed_and_holds_no_slot(make_server, caplog):
    caplog.set_level(logging.INFO, logger="pop2gate")
    srv = await make_server(limits={"proxy_header_timeout": 1, "max_connections": 1,
                                    "max_connections_per_address": 1}, server=proxy_settings())
    silent, w1 = await proxied(srv, b"PROXY TCP4 192.0.2")  # starts, never ends
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, w2 = await proxied(srv, v1("192.0.2.7", 40000))  # the one slot is free meanwhile
    assert await read_line(reader) == GREETING
    w2.write(b"QUIT\r\n")
    assert await expect_closed(reader) == b"+ OK\r\n"
    assert await closed_without_greeting(silent) and loop.time() - started < 5
    for w in (w1, w2):
        w.close()
    assert "no PROXY header within limits.proxy_header_timeout=1s" in caplog.text


async def test_plain_listener_takes_no_header(make_server):
    srv = await make_server(server={"proxy_trusted": ["127.0.0.0/8"]})
    reader, writer = await srv.open()
    assert await read_line(reader) == GREETING  # the greeting comes first: no header is waited for
    writer.close()


@pytest.mark.parametrize("value", [["10.0.0.1/8"], ["nonsense"], "10.0.0.0/8"])
def test_proxy_trusted_is_validated(env, value):
    data = env.config_dict()
    data["server"]["proxy_trusted"] = value
    with pytest.raises(ConfigError, match="server.proxy_trusted"):
        parse_config(data)


def test_proxy_defaults(env):
    server = env.config().server
    assert server.proxy_listen == [] and server.proxy_trusted == []
    assert env.config().limits.proxy_header_timeout == 5
