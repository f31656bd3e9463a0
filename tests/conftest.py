"""Shared fixtures: a Maildir store on disk and a pop2gate server on a loopback port."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import Gateways, MailEnv
from pop2gate.gateway.listeners import Gateway


@pytest.fixture
def env(tmp_path: Path) -> MailEnv:
    e = MailEnv(tmp_path)
    e.add_user("alice")
    return e


@dataclass
class Running:
    host: str
    port: int
    gateway: Gateway

    async def talk(self, data: bytes, timeout: float = 10) -> bytes:
        """Send `data` at once, return everything until the server closes."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(data)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(-1), timeout)
        finally:
            writer.close()

    async def open(self):
        return await asyncio.open_connection(self.host, self.port)


@pytest.fixture
async def make_server(env: MailEnv):
    """Start pop2gate servers in this event loop on free loopback ports."""
    gateways = Gateways()

    async def make(limits: dict | None = None, server: dict | None = None) -> Running:
        env.limits.update(limits or {})
        env.server.update(server or {})
        return Running(*await gateways.start(env.config()))

    yield make
    await gateways.aclose()


@pytest.fixture
async def server(make_server) -> Running:
    return await make_server()


@dataclass
class Served:
    port: int
    log: Path  # the server's stderr (its log lines)
    proc: object


@pytest.fixture
def served(env: MailEnv, tmp_path: Path):
    """`pop2gate serve -c FILE` as a subprocess on a free loopback port, its log in a file."""
    import signal
    import subprocess

    from helpers import BIN, free_port, wait_port

    port = free_port()
    cfg = env.write_config(f"127.0.0.1:{port}")
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([str(BIN / "pop2gate"), "serve", "-c", str(cfg)], stderr=err, text=True)
    try:
        wait_port(port, proc)
        yield Served(port, log, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(10)


# --- IMAP backends: private Dovecot, Cyrus and Courier servers ----------------

def _running(server):
    """Start `server`, yield it, stop it; a test that needs it fails (never skips) when it cannot start."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dovecot():
    """A running private Dovecot (tests/dovecot.py)."""
    from dovecot import Dovecot

    yield from _running(Dovecot())


# --- Cyrus (both layouts) and Courier, and all four layouts behind one interface -------------

@pytest.fixture(scope="session")
def cyrus_unix():
    """A private Cyrus, '/' separator with altnamespace (tests/cyrus.py)."""
    from cyrus import Cyrus

    yield from _running(Cyrus(layout="unix"))


@pytest.fixture(scope="session")
def cyrus_debian():
    """A private Cyrus in Debian's default layout: '.' separator, folders under INBOX."""
    from cyrus import Cyrus

    yield from _running(Cyrus(layout="debian"))


@pytest.fixture(scope="session")
def courier():
    """A private Courier-IMAP (tests/courier.py)."""
    from courier import Courier

    yield from _running(Courier())


@pytest.fixture(scope="session", params=["dovecot", "cyrus-unix", "cyrus-debian", "courier"])
def imap_server(request):
    """Each IMAP server layout in turn (tests/backends.py), started once for the whole run;
    a test that needs one fails (never skips) when it cannot start."""
    from backends import ImapServer

    layout = request.param
    if layout == "dovecot":
        import dovecot

        dc = request.getfixturevalue("dovecot")
        return ImapServer(layout, dovecot.HOST, dc.port, dict(dovecot.USERS), dc.imap, "", ".", dovecot.MASTER,
                          log=dc.log)
    if layout.startswith("cyrus"):
        import cyrus

        cy = request.getfixturevalue(layout.replace("-", "_"))
        return ImapServer(layout, cyrus.HOST, cy.port, dict(cyrus.USERS), cy.imap,
                          "" if cy.layout == "unix" else "INBOX.", cy.sep, cyrus.PROXY)
    import courier as courier_mod

    co = request.getfixturevalue("courier")
    # Courier as Debian sets it up: AUTH=PLAIN only after STARTTLS
    return ImapServer(layout, courier_mod.HOST, co.port, dict(courier_mod.USERS), co.imap, "INBOX.", ".", None,
                      ca_file=str(co.ca_file), log=co.log)


# --- OAuth2: the test authorization server and a Dovecot that takes its tokens -------------

@pytest.fixture(scope="session")
def oauth_server():
    """The test authorization server (tests/oauthserver.py)."""
    from oauthserver import OAuthServer

    server = OAuthServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def oauth_dovecot(oauth_server):
    """A private Dovecot that accepts XOAUTH2 and OAUTHBEARER tokens oauth_server says are active."""
    from dovecot_oauth import OAuthDovecot

    yield from _running(OAuthDovecot(oauth_server.url("/introspect")))
