"""Listeners: asyncio TCP (one task per connection; sockets bound or handed over by systemd),
reload on SIGHUP, and inetd/stdio mode."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import ssl
import stat
import sys
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, get_args

from ..config import Config, ConfigError, ListenKey, ServerSettings
from ..logs import begin_session, prepare_reload
from ..metrics import Exporter, Metrics
from ..pop2.server import State
from ..pop2.wire import MAX_LINE, Reason
from ..routing import Router
from ..stores import open_stores
from ..stores.base import MailStore, Peer
from .activation import ActivationError, inherited_sockets
from .admission import FAILING, IDLE, WAITING, Admission
from .privileges import check_store_access, drop_privileges
from .proxy import ProxyHeaderError, proxied_peer
from .resources import AcceptErrors, ensure_open_files
from .session import Session
from .throttle import Throttle
from .tls import TlsError, handshake, hold_input, server_context

log = logging.getLogger("pop2gate.server")


# Settings a reload cannot change (docs/operations.md): the sockets are bound and root is given
# up at start, and the login throttle's tables are sized then.
RESTART_KEYS = {
    "server": ("listen", "tls_listen", "proxy_listen", "user", "group"),
    "limits": ("listen_backlog", "login_failure_window", "max_tracked_addresses", "max_login_failures_per_second"),
    "metrics": ("listen",),
}


def _tls_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The server's TLS context when a certificate and key are configured, else None."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return server_context(settings.tls_cert, settings.tls_key)


class Gateway:
    """Everything sessions share: settings, stores, router, the connection count.

    `reload` replaces the settings, stores and TLS context for sessions that start after it;
    a session keeps those it started with, and retired stores close when their last session ends.
    """

    def __init__(self, config: Config):
        ensure_open_files(config.limits)
        self.config = config
        self.tls: ssl.SSLContext | None = None  # loaded by start
        self.stores: dict[str, MailStore] = open_stores(config)
        self.router = Router(config, self.stores)
        self.throttle = Throttle(config.limits)
        self.admission = Admission(config.limits, rank=self._rank, failing=self._failing)
        self.sessions: set[asyncio.Task[None]] = set()
        self._tasks: dict[Session, tuple[asyncio.Task[None], float]] = {}  # -> (its task, connected at)
        self._shed: set[asyncio.Task[None]] = set()  # sessions told to give way
        self._stores_of: dict[asyncio.Task[None], dict[str, MailStore]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.metrics = Metrics()
        self.metrics.sessions_active.set_function(lambda: len(self.sessions))  # read at each scrape
        self.exporter: Exporter | None = None  # `[metrics] listen`, started with the listeners

    def _failing(self, address: Hashable) -> bool:
        return self.throttle.penalized(str(address))

    def _rank(self, session: Hashable) -> int:
        """What a session waiting for HELO has at stake (admission.FAILING, IDLE, WAITING)."""
        assert isinstance(session, Session)
        if self.throttle.penalized(session.peer.host):
            return FAILING
        _, since = self._tasks[session]
        new = time.monotonic() - since < self.config.limits.greeting_grace
        return WAITING if new or session.heard_from_client() else IDLE

    @property
    def active(self) -> int:
        """Sessions being served now."""
        return len(self.sessions)

    def reload(self, config: Config) -> None:
        """Serve new sessions with `config`; raise (changing nothing) when it cannot be used."""
        ensure_open_files(config.limits)
        check_store_access(config)
        tls = _tls_context(config.server)
        new_log = prepare_reload(config.log)
        stores = open_stores(config)
        for section, keys in RESTART_KEYS.items():
            for key in keys:
                if getattr(getattr(config, section), key) != getattr(getattr(self.config, section), key):
                    log.warning("reload: %s.%s changed; it takes effect at the next restart", section, key)
        old = self.stores
        self.config, self.tls, self.stores = config, tls, stores
        self.router = Router(config, stores)
        self.throttle.limits = config.limits
        self.admission.limits = config.limits
        if new_log is not None:
            new_log()
        self._retire(old)

    def _retire(self, stores: dict[str, MailStore]) -> None:
        """Close `stores` once no session uses them and they are no longer the current ones."""
        if stores is self.stores or any(s is stores for s in self._stores_of.values()):
            return
        task = asyncio.get_running_loop().create_task(_close_stores(stores))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _refuse(self, writer: asyncio.StreamWriter, peer: Peer, why: str, reason: str) -> None:
        self.metrics.refused.labels(reason).inc()
        log.warning("refused peer=%s:%s: %s", peer.host, peer.port, why)
        writer.write(Reason.TOO_MANY.reply().line())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), 5)
        writer.close()

    def _give_way(self, victim: Session) -> None:
        """Make room: `victim`, not logged in, gets `- Too many connections` and ends. A client
        that has sent nothing is closed at once; one that has is not: ending, its session sends
        FIN and reads what the client still sends, briefly (`close_linger`), so input it never
        read cannot turn the close into a reset that destroys the reply."""
        task, _ = self._tasks[victim]
        if victim.proto.state is State.DONE or victim.writer.transport.is_closing():
            return  # already ending with its own last reply: its slot is free now
        try:
            victim.writer.write(victim.proto.send_error(Reason.TOO_MANY))
        except RuntimeError:
            return  # its close has begun (FIN sent): it ends on its own
        self.metrics.refused.labels("shed").inc()
        if not victim.heard_from_client():
            victim.writer.close()  # nothing to read: no lingering task for each idle client shed
        self._shed.add(task)
        task.cancel()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        config, router, stores = self.config, self.router, self.stores
        limits = config.limits
        if not self.throttle.admit(peer.host):
            return await self._refuse(
                writer, peer, f"max_connections_per_address={limits.max_connections_per_address} reached",
                "max_connections_per_address")
        task = asyncio.current_task()
        assert task is not None  # handle always runs as a task of its own
        self._stores_of[task] = stores
        session: Session | None = None
        try:
            session = Session(reader, writer, peer, config, router, self.throttle, self.admission, self.metrics)
            self._tasks[session] = (task, time.monotonic())
            victims = self.admission.admit(session)
            if victims is None:
                return await self._refuse(writer, peer, f"max_connections={limits.max_connections} reached "
                                          "by logged-in sessions", "max_connections")
            for victim in victims:
                assert isinstance(victim, Session)
                self._give_way(victim)
            self.sessions.add(task)
            try:
                await session.run()
            finally:
                self.admission.leave(session)
                writer.close()  # a no-op unless cancelled before the session closed it
        except asyncio.CancelledError:  # logged here: this task's lines carry its session id
            if task in self._shed and session is not None:
                log.warning("shed %s: the server is full; the oldest session not logged in gives way", session.tag)
            else:
                log.info("session ended by shutdown peer=%s:%s", peer.host, peer.port)
        finally:
            if session is not None:
                del self._tasks[session]
            self._shed.discard(task)
            self.throttle.release(peer.host)
            self.sessions.discard(task)
            del self._stores_of[task]
            self._retire(stores)

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    kind: ListenKey = "listen") -> Coroutine[Any, Any, None]:
        """Called as the listener accepts, before anything is read; returns what runs as its task."""
        tls = self.tls if kind == "tls_listen" else None
        if tls is not None:
            hold_input(writer)
        return self._accept(reader, writer, tls, kind == "proxy_listen")

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
        """Listen on the sockets systemd handed over, if any, else on the configured addresses;
        and serve the metrics where `[metrics] listen` says."""
        asyncio.get_running_loop().set_exception_handler(AcceptErrors())
        self.tls = _tls_context(self.config.server)
        inherited = inherited_sockets()
        servers = await self._serve_inherited(inherited) if inherited else await self._serve_configured()
        if (address := self.config.metrics.address()) is not None:
            self.exporter = Exporter(self.metrics, *address)
        return servers

    async def _serve_configured(self) -> list[asyncio.Server]:
        servers = []
        for key in get_args(ListenKey):
            for host, port in self.config.server.addresses(key):
                server = await asyncio.start_server(
                    functools.partial(self._on_connect, kind=key), host, port, limit=MAX_LINE,
                    reuse_address=True, backlog=self.config.limits.listen_backlog,
                )
                for sock in server.sockets:
                    log.info("listening on %s (%s)", sock.getsockname()[:2], key)
                servers.append(server)
        return servers

    async def _serve_inherited(self, inherited: list[tuple[ListenKey, socket.socket]]) -> list[asyncio.Server]:
        if any(key == "tls_listen" for key, _ in inherited) and self.tls is None:
            raise ActivationError("a socket named tls was handed over, but server.tls_cert and server.tls_key "
                                  "are not set")
        log.info("socket activation: %d socket(s) handed over; [server] listen, tls_listen and proxy_listen "
                 "are not bound", len(inherited))
        servers = []
        for key, sock in inherited:
            server = await asyncio.start_server(functools.partial(self._on_connect, kind=key), sock=sock,
                                                limit=MAX_LINE)
            log.info("listening on %s (%s, handed over)", sock.getsockname()[:2], key)
            servers.append(server)
        return servers

    async def aclose(self) -> None:
        """End open sessions (without deleting anything), then the stores."""
        for task in list(self.sessions):
            task.cancel()
        if self.sessions:
            await asyncio.wait(list(self.sessions), timeout=10)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=10)
        await _close_stores(self.stores)
        if self.exporter is not None:
            self.exporter.close()


async def _close_stores(stores: dict[str, MailStore]) -> None:
    for store in stores.values():
        await store.aclose()


async def serve_forever(config: Config, ready: Callable[[list[asyncio.Server]], None] | None = None,
                        reload: Callable[[], Config] | None = None) -> None:
    """Run the listeners until SIGINT or SIGTERM; on SIGHUP, `reload()` gives the new config."""
    gateway = Gateway(config)
    # the handlers before the first bind: a signal that comes once a port answers is never
    # the default action (SIGHUP's would end the server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload, gateway, reload)
    servers = await gateway.start()
    drop_privileges(config)
    if ready is not None:
        ready(servers)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
        await gateway.aclose()


def _reload(gateway: Gateway, load: Callable[[], Config]) -> None:
    """SIGHUP: the new configuration for new sessions, or, when it cannot be used, the old one kept."""
    log.info("reload: reading the configuration")
    try:
        gateway.reload(load())
    except (ConfigError, OSError) as err:
        log.error("reload failed, the running configuration stays: %s", err)
        return
    except Exception as err:  # whatever else a new store raises: the running server goes on
        log.error("reload failed, the running configuration stays: %s: %s", type(err).__name__, err)
        return
    log.info("reload: done; new sessions use the new configuration, open ones keep theirs")


def _stdin_socket() -> socket.socket | None:
    """stdin as a socket when it is one and stdout is the same (inetd, xinetd, socat), else None.

    The socket is moved to a new descriptor and stdin and stdout are pointed at /dev/null, so
    closing the socket ends the connection and nothing else can write into the session.
    """
    try:
        stdin, stdout = os.fstat(0), os.fstat(1)
    except OSError:
        return None
    if not stat.S_ISSOCK(stdin.st_mode) or (stdin.st_dev, stdin.st_ino) != (stdout.st_dev, stdout.st_ino):
        return None
    sock = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    return sock


def _socket_peer(sock: socket.socket) -> Peer:
    """The client's address on an inherited socket ('local' for a Unix socket)."""
    try:
        name = sock.getpeername()
    except OSError:
        return Peer("stdio", 0)
    return Peer(str(name[0]), int(name[1])) if isinstance(name, tuple) else Peer("local", 0)


async def _pipe_streams(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams on stdin and stdout when they are pipes or files (a test, a shell pipeline)."""
    reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop), sys.stdout.buffer
    )
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


async def serve_stdio(config: Config) -> None:
    """One session on stdin/stdout, the way inetd, xinetd or socat start it.

    When stdin is the accepted socket it is used as one; a write-pipe transport on a socket
    would take the client's next command for the peer going away.
    """
    drop_privileges(config)
    loop = asyncio.get_running_loop()
    sock = _stdin_socket()
    if sock is not None:
        peer = _socket_peer(sock)
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_LINE)
    else:
        peer = Peer("stdio", 0)
        reader, writer = await _pipe_streams(loop)
    gateway = Gateway(config)
    begin_session()  # as a listener's connection does (_accept)
    try:
        await gateway.handle(reader, writer, peer)
    finally:
        await gateway.aclose()
