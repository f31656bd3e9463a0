"""Helpers shared by the test modules: a Maildir store on disk, ports, and a scripted TCP server."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pop2gate.config import Config, parse_config
from pop2gate.stores.maildir import make_maildir
from pop2gate.stores.maildir.users import set_password

PASSWORD = "secret pass"  # a space inside: passwords are the rest of the line
BIN = Path(sys.executable).parent  # the venv running the tests, with its pop2gate


def toml_value(v: object) -> str:
    """A TOML value for a str, bool, number or list of them."""
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v)


@dataclass
class MailEnv:
    """A Maildir backend in a temporary directory."""

    root: Path
    limits: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
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

    def config_dict(self, listen: str = "127.0.0.1:0", backends: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The config: this Maildir backend, or `backends` instead (the first one the default)."""
        limits = {"bad_login_delay": 0.05, **self.limits}
        # Served as the files' owner: `pop2gate serve` as root would become nobody. None drops a key.
        server = {"hostname": "test.invalid", "listen": [listen], "user": pwd.getpwuid(os.geteuid()).pw_name,
                  **self.server}
        return {
            "server": {k: v for k, v in server.items() if v is not None},
            "limits": limits,
            "backend": backends or [
                {"name": "local", "type": "maildir", "path": str(self.mail), "users_file": str(self.users_file)}
            ],
            "routing": {"default": backends[0]["name"] if backends else "local"},
        }

    def config(self) -> Config:
        return parse_config(self.config_dict())

    def write_config(self, listen: str = "127.0.0.1:0", backends: list[dict[str, Any]] | None = None) -> Path:
        data = self.config_dict(listen, backends)
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


async def until_idle(gateway: Any, within: float = 10) -> None:
    """Wait until every session of an in-process Gateway has ended (and logged out of its backend)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    # The gateway has no event for "no sessions left"; its count is all a test can watch.
    while gateway.active and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert gateway.active == 0


async def pop2_client(host: str, port: int, source: str | None = None) -> Any:
    """A POP2 client (`AsyncClient`) connected to host:port; `source` picks a loopback source
    address (IMAP servers delay failed logins per address)."""
    from pop2gate.pop2.client import AsyncClient

    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    return await AsyncClient.from_streams(reader, writer, timeout=30)


async def read_line(reader: asyncio.StreamReader, timeout: float = 10) -> bytes:
    return await asyncio.wait_for(reader.readline(), timeout)


async def expect_closed(reader: asyncio.StreamReader, timeout: float = 10) -> bytes:
    """Read until EOF; returns what came (should be nothing more)."""
    return await asyncio.wait_for(reader.read(-1), timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 15) -> None:
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


def start_serve(mail: MailEnv, extra: str = "", /, *args: str, backends: list[dict[str, Any]] | None = None,
                **popen: Any) -> tuple[subprocess.Popen[str], int]:
    """`pop2gate serve` as a process on a free port, `extra` TOML appended to the MailEnv's
    config (stderr piped unless `popen` says otherwise); returns it and its port once it listens."""
    port = free_port()
    cfg = mail.write_config(f"127.0.0.1:{port}", backends)
    cfg.write_text(cfg.read_text() + extra)
    proc = subprocess.Popen([str(BIN / "pop2gate"), "serve", "-c", str(cfg), *args], text=True,
                            **{"stderr": subprocess.PIPE, **popen})
    wait_port(port, proc)
    return proc, port


def need_program(name: str) -> str:
    """The path of a system program the test needs; fails (never skips) when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert path, f"{name} is not installed: run scripts/install-test-deps.sh"
    return path


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> int:
    """Send `sig`, wait for the exit (SIGKILL after 10 s); returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


def log_with(path: Path, text: str, timeout: float = 15, count: int = 1) -> str:
    """The log file once `text` is in it `count` times (the process writing it may still be busy)."""
    deadline = time.monotonic() + timeout
    while (log := path.read_text()).count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


class Gateways:
    """In-process pop2gate gateways on loopback, stopped together by `aclose`."""

    def __init__(self) -> None:
        self._started: list[tuple[Any, list[asyncio.Server]]] = []

    async def start(self, config: Config) -> tuple[str, int, Any]:
        """Start a Gateway for `config`; returns (host, port, gateway) of its first listener."""
        from pop2gate.gateway.listeners import Gateway

        gateway = Gateway(config)
        servers = await gateway.start()
        self._started.append((gateway, servers))
        host, port = servers[0].sockets[0].getsockname()[:2]
        return str(host), int(port), gateway

    async def aclose(self) -> None:
        for gateway, servers in self._started:
            for s in servers:
                s.close()
                await s.wait_closed()
            await gateway.aclose()


# --- one scripted TCP server for every test that needs a fake peer ---------------------


class ScriptConn:
    """One accepted connection, as a script sees it. Lines read are recorded on the server."""

    def __init__(self, sock: socket.socket, server: ScriptedServer):
        self.sock = sock
        self.server = server
        self._file = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        """One line (b"" at end of stream), recorded in `server.received`."""
        try:
            line = self._file.readline()
        except OSError:
            return b""
        if line:
            with self.server.lock:
                self.server.received.append(line)
        return line

    def read(self, n: int) -> bytes:
        """Exactly `n` octets, or fewer at end of stream (not recorded)."""
        return self._file.read(n)

    def drain(self) -> None:
        """Record lines until the client closes."""
        while self.readline():
            pass

    def close(self) -> None:
        for closer in (self._file.close, self.sock.close):
            try:
                closer()
            except OSError:
                pass


class ScriptedServer:
    """A TCP server on a loopback address, in its own threads: each connection runs `script(conn)`.

    It counts connections (`connections`, `active`, `max_active`) and records every line
    a script reads (`received`). Leaving `with` closes the listener and every connection.
    """

    def __init__(self, script: Callable[[ScriptConn], None], host: str = "127.0.0.1", port: int = 0,
                 timeout: float = 10):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.script = script
        self.timeout = timeout
        self.received: list[bytes] = []
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self._conns: list[ScriptConn] = []
        self._threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            sock.settimeout(self.timeout)
            conn = ScriptConn(sock, self)
            with self.lock:
                self.connections += 1
                self._conns.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: ScriptConn) -> None:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.script(conn)
        except OSError:
            pass  # the client went away: that is the client's business
        finally:
            conn.close()
            with self.lock:
                self.active -= 1

    def wait_done(self, timeout: float = 5) -> None:
        """Block until at least one connection came and every script has finished."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.connections and not self.active:
                    return
            if time.monotonic() > deadline:
                raise AssertionError("the scripted server's sessions did not finish")
            time.sleep(0.01)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def replies(answers: list[bytes], greeting: bytes | None = None, drain: bool = False) -> Callable[[ScriptConn], None]:
    """A script: send `greeting`, then answer each line read with the next of `answers`.

    When the answers are used up it closes, or with drain=True first reads until the client closes.
    """

    def script(conn: ScriptConn) -> None:
        if greeting is not None:
            conn.send(greeting)
        for answer in answers:
            if not conn.readline():
                return
            conn.send(answer)
        if drain:
            conn.drain()

    return script


class Relay:
    """A TCP relay on loopback to `upstream`, for cutting a session at a chosen point.

    Bytes from the server are passed on until `hold_at` (a marker) shows up; then the relay
    passes everything before the marker, sets `held` and waits: `release()` passes the rest
    on, `cut()` closes both sides at once. What the client sent is kept in `from_client`.
    """

    def __init__(self, upstream: tuple[str, int], hold_at: bytes | None = None):
        self.upstream = upstream
        self.hold_at = hold_at
        self.held = threading.Event()
        self._go = threading.Event()
        self._cut = False
        self._socks: list[socket.socket] = []
        self.from_client = bytearray()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        try:
            client, _ = self.sock.accept()
        except OSError:
            return
        server = socket.create_connection(self.upstream, timeout=30)
        self._socks += [client, server]
        for args in ((client, server, None), (server, client, self.hold_at)):
            t = threading.Thread(target=self._pump, args=args, daemon=True)
            self._threads.append(t)
            t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, marker: bytes | None) -> None:
        seen = b""
        try:
            while data := src.recv(65536):
                if src is self._socks[0]:
                    self.from_client += data
                if marker is not None and marker in seen[-len(marker):] + data:
                    at = (seen[-len(marker):] + data).index(marker) - len(seen[-len(marker):])
                    if at > 0:
                        dst.sendall(data[:at])
                    data, marker = data[max(at, 0):], None
                    self.held.set()
                    self._go.wait(30)
                    if self._cut:
                        return
                seen = (seen + data)[-4096:]
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            if self._cut:
                self.close()

    def release(self) -> None:
        self._go.set()

    def cut(self) -> None:
        self._cut = True
        self.close()
        self._go.set()

    def close(self) -> None:
        for s in [self.sock, *self._socks]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._go.set()
        self.close()
