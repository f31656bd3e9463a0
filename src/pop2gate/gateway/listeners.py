"""Listeners: asyncio TCP (one task per connection) and inetd/stdio mode."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from ..config import Config, ListenKey
from ..logs import begin_session
from ..metrics import Exporter, Metrics
from ..pop2.wire import MAX_LINE, Reason
from ..routing import Router
from ..stores import open_stores
from ..stores.base import MailStore, Peer
from .admission import Admission
from .privileges import drop_privileges
from .proxy import ProxyHeaderError, proxied_peer
from .resources import AcceptErrors, ensure_open_files
from .session import Session
from .throttle import Throttle
from .tls import TlsError, handshake, hold_input, server_context

log = logging.getLogger("pop2gate.server")


class Gateway:
    """Everything sessions share: settings, stores, router, the connection count."""

    def __init__(self, config: Config):
        ensure_open_files(config.limits)
        self.config = config
        self.stores: dict[str, MailStore] = open_stores(config)
        self.router = Router(config, self.stores)
        self.throttle = Throttle(config.limits)
        self.admission = Admission(config.limits)
        self.sessions: set[asyncio.Task[None]] = set()
        self.metrics = Metrics()
        self.exporter: Exporter | None = None  # `[metrics] listen`, started with the listeners

    @property
    def active(self) -> int:
        """Sessions being served now."""
        return len(self.sessions)

    async def _refuse(self, writer: asyncio.StreamWriter, peer: Peer, why: str, reason: str) -> None:
        self.metrics.refused.labels(reason).inc()
        log.warning("refused peer=%s:%s: %s", peer.host, peer.port, why)
        writer.write(Reason.TOO_MANY.reply().line())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), 5)
        writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        limits = self.config.limits
        if not self.throttle.admit(peer.host):
            return await self._refuse(
                writer, peer, f"max_connections_per_address={limits.max_connections_per_address} reached",
                "max_connections_per_address")
        task = asyncio.current_task()
        assert task is not None  # handle always runs as a task of its own
        try:
            session = Session(reader, writer, peer, self.config, self.router, self.throttle, self.admission,
                              self.metrics)
            victims = self.admission.admit(session)
            if victims is None:
                return await self._refuse(writer, peer, f"max_connections={limits.max_connections} reached "
                                          "by logged-in sessions", "max_connections")
            for victim in victims:
                assert isinstance(victim, Session)
                victim.shed()
            self.sessions.add(task)
            try:
                await session.run()
            finally:
                self.admission.leave(session)
        except asyncio.CancelledError:
            log.info("session ended by shutdown peer=%s:%s", peer.host, peer.port)
        finally:
            self.throttle.release(peer.host)
            self.sessions.discard(task)

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    tls: ssl.SSLContext | None = None, proxy: bool = False) -> Coroutine[Any, Any, None]:
        """Called as the listener accepts, before anything is read; returns what runs as its task."""
        if tls is not None:
            hold_input(writer)
        return self._accept(reader, writer, tls, proxy)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      tls: ssl.SSLContext | None, proxy: bool) -> None:
        """Its PROXY header and TLS handshake first, where the listener has them; then the session."""
        begin_session()  # its id is on every line logged for this connection from here on
        peername = writer.get_extra_info("peername") or ("unknown", 0)
        peer = Peer(str(peername[0]), int(peername[1]))
        limits = self.config.limits
        try:
            if proxy:
                via, peer = peer, await proxied_peer(reader, peer, self.config.server.proxy_trusted,
                                                     limits.proxy_header_timeout)
                log.info("proxied peer=%s:%s via=%s:%s", peer.host, peer.port, via.host, via.port)
            if tls is not None:
                await handshake(writer, tls, limits.tls_handshake_timeout)
        except ProxyHeaderError as err:
            log.warning("closed peer=%s:%s: %s", peer.host, peer.port, err)
            writer.close()
            return
        except TlsError as err:
            log.info("closed peer=%s:%s: %s", peer.host, peer.port, err)
            return
        await self.handle(reader, writer, peer)

    async def start(self) -> list[asyncio.Server]:
        asyncio.get_running_loop().set_exception_handler(AcceptErrors())
        settings = self.config.server
        context = None
        if settings.tls_listen:
            assert settings.tls_cert is not None and settings.tls_key is not None  # the config requires them
            context = server_context(settings.tls_cert, settings.tls_key)
        kinds: list[tuple[ListenKey, ssl.SSLContext | None, bool]] = [
            ("listen", None, False), ("tls_listen", context, False), ("proxy_listen", None, True)]
        servers = []
        for key, tls, proxy in kinds:
            for host, port in settings.addresses(key):
                server = await asyncio.start_server(
                    functools.partial(self._on_connect, tls=tls, proxy=proxy), host, port, limit=MAX_LINE,
                    reuse_address=True, backlog=self.config.limits.listen_backlog,
                )
                for sock in server.sockets:
                    log.info("listening on %s (%s)", sock.getsockname()[:2], key)
                servers.append(server)
        if (address := self.config.metrics.address()) is not None:
            self.exporter = Exporter(self.metrics, *address)
        return servers

    async def aclose(self) -> None:
        """End open sessions (without deleting anything), then the stores."""
        for task in list(self.sessions):
            task.cancel()
        if self.sessions:
            await asyncio.wait(list(self.sessions), timeout=10)
        for store in self.stores.values():
            await store.aclose()
        if self.exporter is not None:
            self.exporter.close()


async def serve_forever(config: Config, ready: Callable[[list[asyncio.Server]], None] | None = None) -> None:
    """Run the TCP listeners until SIGINT or SIGTERM."""
    gateway = Gateway(config)
    servers = await gateway.start()
    drop_privileges(config)
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
    drop_privileges(config)
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
