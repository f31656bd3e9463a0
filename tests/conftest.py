"""Shared fixtures: a Maildir store on disk and a pop2gate server on a loopback port."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pop2gate.config import Config, parse_config
from pop2gate.passwords import set_password
from pop2gate.server import Gateway
from pop2gate.stores.maildir import make_maildir

PASSWORD = "secret pass"  # a space inside: passwords are the rest of the line
BIN = Path(sys.executable).parent


@dataclass
class MailEnv:
    """A Maildir backend in a temporary directory."""

    root: Path
    limits: dict = field(default_factory=dict)
    server: dict = field(default_factory=dict)
    counter: int = 0

    @property
    def mail(self) -> Path:
        return self.root / "mail"

    @property
    def users_file(self) -> Path:
        return self.root / "users"

    def add_user(self, name: str, password: str = PASSWORD) -> Path:
        set_password(self.users_file, name, password)
        home = self.mail / name
        make_maildir(home)
        return home

    def folder(self, user: str, folder: str = "INBOX") -> Path:
        home = self.mail / user
        path = home if folder == "INBOX" else home / ("." + folder.replace("/", "."))
        make_maildir(path)
        return path

    def deliver(self, user: str, data: bytes, folder: str = "INBOX", flags: str | None = None) -> str:
        """Write one message; returns its unique name."""
        self.counter += 1
        uid = f"{1700000000 + self.counter}.M{self.counter}P1.test"
        path = self.folder(user, folder)
        if flags is None:
            (path / "new" / uid).write_bytes(data)
        else:
            (path / "cur" / f"{uid}:2,{flags}").write_bytes(data)
        return uid

    def files(self, user: str, folder: str = "INBOX") -> list[str]:
        path = self.folder(user, folder)
        return sorted(n.split(":")[0] for sub in ("new", "cur") for n in os.listdir(path / sub))

    def config_dict(self, listen: str = "127.0.0.1:0") -> dict:
        limits = {"bad_login_delay": 0.05, **self.limits}
        return {
            "server": {"hostname": "test.invalid", "listen": [listen], **self.server},
            "limits": limits,
            "backend": [
                {"name": "local", "type": "maildir", "path": str(self.mail), "users_file": str(self.users_file)}
            ],
            "routing": {"default": "local"},
        }

    def config(self) -> Config:
        return parse_config(self.config_dict())

    def write_config(self, listen: str = "127.0.0.1:0") -> Path:
        def toml_value(v):
            if isinstance(v, str):
                return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, list):
                return "[" + ", ".join(toml_value(x) for x in v) + "]"
            return str(v)

        data = self.config_dict(listen)
        lines = []
        for table in ("server", "limits", "routing"):
            lines.append(f"[{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in data[table].items()]
        for b in data["backend"]:
            lines.append("[[backend]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in b.items()]
        path = self.root / "pop2gate.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


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
    started = []

    async def make(limits: dict | None = None, server: dict | None = None) -> Running:
        env.limits.update(limits or {})
        env.server.update(server or {})
        gateway = Gateway(env.config())
        servers = await gateway.start()
        started.append((gateway, servers))
        host, port = servers[0].sockets[0].getsockname()[:2]
        return Running(host, port, gateway)

    yield make
    for gateway, servers in started:
        for s in servers:
            s.close()
            await s.wait_closed()
        await gateway.aclose()


@pytest.fixture
async def server(make_server) -> Running:
    return await make_server()


async def read_line(reader: asyncio.StreamReader, timeout: float = 10) -> bytes:
    return await asyncio.wait_for(reader.readline(), timeout)


async def expect_closed(reader: asyncio.StreamReader, timeout: float = 10) -> bytes:
    """Read until EOF; returns what came (should be nothing more)."""
    return await asyncio.wait_for(reader.read(-1), timeout)


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    """Wait until `proc` listens on 127.0.0.1:`port`; fail if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")
