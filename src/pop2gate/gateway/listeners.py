"""Listeners: asyncio TCP (one task per connection) and inetd/stdio mode."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

from ..config import Config
from ..pop2.wire import MAX_LINE, Reason
from ..routing import Router
from ..stores import open_stores
from ..stores.base import MailStore, Peer
from .privileges import drop_privileges
from .session import Session
from .throttle import Throttle

log = logging.getLogger("pop2gate.server")


class Gateway:
    """Everything sessions share: settings, stores, router, the connection count."""

    def __init__(self, config: Config):
        self.config = config
        self.stores: dict[str, MailStore] = open_stores(config)
        self.router = Router(config, self.stores)
        self.throttle = Throttle(config.limits)
        self.sessions: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        """Sessions being served now."""
        return len(self.sessions)

    async def _refuse(self, writer: asyncio.StreamWriter, peer: Peer, why: str) -> None:
        log.warning("refused peer=%s:%s: %s", peer.host, peer.port, why)
        writer.write(Reason.TOO_MANY.reply().line())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), 5)
        writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        limits = self.config.limits
        if self.active >= limits.max_connections:
            return await self._refuse(writer, peer, f"max_connections={limits.max_connections} reached")
        if not self.throttle.admit(peer.host):
            return await self._refuse(
                writer, peer, f"max_connections_per_address={limits.max_connections_per_address} reached"
            )
        task = asyncio.current_task()
        assert task is not None  # handle always runs as a task of its own
        self.sessions.add(task)
        try:
            await Session(reader, writer, peer, self.config, self.router, self.throttle).run()
        except asyncio.CancelledError:
            log.info("session ended by shutdown peer=%s:%s", peer.host, peer.port)
        finally:
            self.throttle.release(peer.host)
            self.sessions.discard(task)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("unknown", 0)
        await self.handle(reader, writer, Peer(str(peername[0]), int(peername[1])))

    async def start(self) -> list[asyncio.Server]:
        servers = []
        for host, port in self.config.server.addresses():
            server = await asyncio.start_server(
                self._on_connect, host, port, limit=MAX_LINE, reuse_address=True,
                backlog=self.config.limits.listen_backlog,
            )
            for sock in server.sockets:
                log.info("listening on %s", sock.getsockname()[:2])
            servers.append(server)
        return servers

    async def aclose(self) -> None:
        """End open sessions (without deleting anything), then the stores."""
        for task in list(self.sessions):
            task.cancel()
        if self.sessions:
            await asyncio.wait(list(self.sessions), timeout=10)
        for store in self.stores.values():
            await store.aclose()


async def serve_forever(config: Config, ready: Callable[[list[asyncio.Server]], None] | None = None) -> None:
    """Run the TCP listeners until SIGINT or SIGTERM."""
    gateway = Gateway(config)
    servers = await gateway.start()
    drop_privileges(config.server.user, config.server.group)
    if ready is not None:
        ready(servers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
        await gateway.aclose()


def _stdio_peer() -> Peer:
    """The client's address when stdin is a socket (inetd, socat), else 'stdio'."""
    try:
        sock = socket.socket(fileno=os.dup(0))
    except OSError:
        return Peer("stdio", 0)
    try:
        name = sock.getpeername()
        return Peer(str(name[0]), int(name[1])) if isinstance(name, tuple) else Peer("local", 0)
    except OSError:
        return Peer("stdio", 0)
    finally:
        sock.close()


async def serve_stdio(config: Config) -> None:
    """One session on stdin/stdout, the way inetd, xinetd or socat start it."""
    drop_privileges(config.server.user, config.server.group)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop), sys.stdout.buffer
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    gateway = Gateway(config)
    try:
        await gateway.handle(reader, writer, _stdio_peer())
    finally:
        await gateway.aclose()
