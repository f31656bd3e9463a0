"""Implicit TLS listeners (gateway/tls.py) and `pop2gate fetch --tls`, on real sockets."""

from __future__ import annotations

import asyncio
import logging
import re
import select
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from helpers import BIN, PASSWORD, expect_closed, read_line
from pop2gate.config import ConfigError, parse_config
from pop2gate.gateway.listeners import Gateway
from pop2gate.gateway.tls import TlsError, server_context
from pop2gate.pop2.client import AsyncClient, Client

POP2GATE = str(BIN / "pop2gate")
GREETING = b"+ POP2 test.invalid pop2gate server ready\r\n"
MESSAGE = b"Subject: over tls\n\nsecret body\n"
WIRE = MESSAGE.replace(b"\n", b"\r\n")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A test CA (ca.pem) and its server certificate (server.pem, server.key) for localhost, 127.0.0.1."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pop2gate tls test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d)
    return d


def tls_settings(pki: Path) -> dict:
    """Only a TLS listener, so the first server `make_server` starts is the TLS one."""
    return {"listen": [], "tls_listen": ["127.0.0.1:0"],
            "tls_cert": str(pki / "server.pem"), "tls_key": str(pki / "server.key")}


def client_context(pki: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=pki / "ca.pem")


def listening_port(proc: subprocess.Popen, timeout: float = 30) -> int:
    """The port `pop2gate serve` logs for its tls_listen address (it was given port 0)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and select.select([proc.stderr], [], [], left)[0]:
        line = proc.stderr.readline()
        if not line:
            break
        if found := re.search(r"listening on \('127\.0\.0\.1', (\d+)\) \(tls_listen\)", line):
            return int(found.group(1))
    raise AssertionError(f"pop2gate serve did not listen (exit status {proc.poll()})")


def test_fetch_tls_end_to_end_through_serve(env, pki, tmp_path):
    """`pop2gate serve` with a tls_listen port, `pop2gate fetch --tls --ca-file` saving and deleting."""
    env.deliver("alice", MESSAGE)
    env.server.update(tls_settings(pki))
    cfg = env.write_config()
    proc = subprocess.Popen([POP2GATE, "serve", "-c", str(cfg)], stderr=subprocess.PIPE, text=True)
    try:
        port = listening_port(proc)
        out = tmp_path / "saved"
        fetch = [POP2GATE, "fetch", f"localhost:{port}", "--tls", "--ca-file", str(pki / "ca.pem"),
                 "--user", "alice"]
        result = subprocess.run([*fetch, "--maildir", str(out), "--delete"], input=PASSWORD + "\n",
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert [p.read_bytes() for p in (out / "new").iterdir()] == [WIRE]
        assert env.files("alice") == []
        # Without --ca-file the test CA is not trusted: no session, a clear error, exit 1.
        env.deliver("alice", MESSAGE)
        plain = [POP2GATE, "fetch", f"127.0.0.1:{port}", "--tls", "--user", "alice", "--list"]
        result = subprocess.run(plain, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            "pop2gate fetch: TLS certificate of 127.0.0.1 not accepted: unable to get local issuer certificate"]
        # --insecure: no verification, and a warning that says so.
        result = subprocess.run([*plain, "--insecure"], input=PASSWORD + "\n", capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        assert "warning: --insecure: the server's certificate is not verified" in result.stderr
        assert result.stdout == f"     1 {len(WIRE):10d}\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert len(env.files("alice")) == 1


def test_fetch_help_documents_tls():
    result = subprocess.run([POP2GATE, "fetch", "--help"], capture_output=True, text=True, timeout=60)
    assert "--tls" in result.stdout and "--ca-file" in result.stdout and "verified" in result.stdout


def test_ca_file_without_tls_is_a_usage_error(pki):
    result = subprocess.run([POP2GATE, "fetch", "host", "--ca-file", str(pki / "ca.pem"), "--user", "a", "--list"],
                            input="x\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--ca-file needs --tls" in result.stderr


async def test_blocking_client_session_over_tls(make_server, env, pki):
    env.deliver("alice", MESSAGE)
    srv = await make_server(server=tls_settings(pki))

    def session() -> tuple[int, int, bytes, int]:
        with Client.connect("127.0.0.1", srv.port, timeout=10, ssl_context=client_context(pki)) as c:
            got = c.helo("alice", PASSWORD), c.read(), c.retr(), c.ackd()
            c.quit()
            return got

    assert await asyncio.to_thread(session) == (1, len(WIRE), WIRE, 0)
    assert env.files("alice") == []


async def test_async_client_session_over_tls(make_server, env, pki):
    env.deliver("alice", MESSAGE)
    srv = await make_server(server=tls_settings(pki))
    c = await AsyncClient.connect("localhost", srv.port, timeout=10, ssl_context=client_context(pki))
    assert c.greeting is not None and c.greeting.text.startswith("POP2 test.invalid")
    assert await c.helo("alice", PASSWORD) == 1
    assert await c.read() == len(WIRE) and await c.retr() == WIRE
    await c.acks()
    await c.quit()


async def test_client_checks_the_server_name(make_server, pki):
    srv = await make_server(server=tls_settings(pki))

    def connect() -> None:
        Client.connect("127.0.0.1", srv.port, timeout=10, ssl_context=client_context(pki),
                       server_hostname="other.invalid")

    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(connect)


async def test_plain_text_client_on_tls_port_is_closed_without_greeting(make_server, pki, caplog):
    caplog.set_level(logging.INFO, logger="pop2gate")
    srv = await make_server(server=tls_settings(pki))
    reader, writer = await srv.open()
    writer.write(f"HELO alice {PASSWORD}\r\n".encode())
    try:
        got = await expect_closed(reader, timeout=10)
    except ConnectionResetError:
        got = b""
    writer.close()
    assert b"POP2" not in got and b"+" not in got
    assert "TLS handshake failed" in caplog.text
    assert srv.gateway.active == 0


async def test_stalled_handshake_is_closed_and_holds_no_slot(make_server, env, pki, caplog):
    caplog.set_level(logging.INFO, logger="pop2gate")
    env.deliver("alice", MESSAGE)
    srv = await make_server(limits={"tls_handshake_timeout": 1, "max_connections": 1,
                                    "max_connections_per_address": 1}, server=tls_settings(pki))
    loop = asyncio.get_running_loop()
    stalled, stalled_writer = await srv.open()  # connects, never says a word
    # The only slot is free for a real client meanwhile.
    c = await AsyncClient.connect("127.0.0.1", srv.port, timeout=10, ssl_context=client_context(pki))
    assert await c.helo("alice", PASSWORD) == 1
    await c.quit()
    started = loop.time()
    try:
        got = await expect_closed(stalled, timeout=10)
    except ConnectionResetError:
        got = b""
    stalled_writer.close()
    assert got == b"" and loop.time() - started < 5
    assert "no TLS handshake within limits.tls_handshake_timeout=1s" in caplog.text


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_12_is_accepted_and_older_refused(make_server, pki, caplog):
    caplog.set_level(logging.INFO, logger="pop2gate")
    srv = await make_server(server=tls_settings(pki))
    ctx = client_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c = await AsyncClient.connect("127.0.0.1", srv.port, timeout=10, ssl_context=ctx)
    await c.quit()
    assert server_context(pki / "server.pem", pki / "server.key").minimum_version == ssl.TLSVersion.TLSv1_2
    old = client_context(pki)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # this client would take TLS 1.1: the server must refuse it
    with pytest.raises(OSError):
        await AsyncClient.connect("127.0.0.1", srv.port, timeout=10, ssl_context=old)
    assert "TLS handshake failed: SSLError: [SSL: UNSUPPORTED_PROTOCOL]" in caplog.text


def test_tls_listen_needs_cert_and_key(env, pki):
    data = env.config_dict()
    data["server"]["tls_listen"] = ["127.0.0.1:0"]
    with pytest.raises(ConfigError, match="server: tls_cert is required when tls_listen is set"):
        parse_config(data)
    data["server"]["tls_cert"] = str(pki / "server.pem")
    with pytest.raises(ConfigError, match="server: tls_key is required when tls_listen is set"):
        parse_config(data)


def test_some_listener_is_required(env):
    data = env.config_dict()
    data["server"]["listen"] = []
    with pytest.raises(ConfigError, match="needs at least one HOST:PORT"):
        parse_config(data)


async def test_unloadable_certificate_stops_the_start(env, pki):
    data = env.config_dict()
    data["server"].update(tls_settings(pki), tls_key=str(pki / "ca.pem"))  # not the certificate's key
    gateway = Gateway(parse_config(data))
    try:
        with pytest.raises(TlsError, match="server.tls_cert .* / server.tls_key .*ca.pem"):
            await gateway.start()
    finally:
        await gateway.aclose()


async def test_greeting_is_the_first_thing_inside_tls(make_server, pki):
    """Sessions over TLS are the same sessions: the same greeting, the same replies."""
    srv = await make_server(server=tls_settings(pki))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=client_context(pki),
                                                   server_hostname="localhost")
    assert await read_line(reader) == GREETING
    writer.write(b"QUIT\r\n")
    assert await expect_closed(reader) == b"+ OK\r\n"
    writer.close()
