"""One POP2 client session: drives the protocol against a user's Mailbox.

Deletion happens only in `_release`, which runs only on QUIT or FOLD. Every
other way out (a dropped client, a timeout, a protocol error, a backend
failure, a crash) ends in `close` without deleting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .. import __version__, uwcompat
from ..config import Config
from ..stores.folders import InvalidFolderName, check_folder_name
from ..pop2.server import (
    NEED_DATA,
    Command,
    Fold,
    Helo,
    ProtocolViolation,
    Read,
    ServerProtocol,
    Simple,
    State,
)
from ..routing import Router
from ..stores.base import Mailbox, MessageRef, Peer, StoreError
from .throttle import Throttle

log = logging.getLogger("pop2gate.session")

READ_CHUNK = 512  # never read more than one command line's worth at a time


class _Close(Exception):
    """End the session after sending `reply` (may be empty)."""

    def __init__(self, reply: bytes = b"", why: str = ""):
        self.reply = reply
        self.why = why


class Session:
    """Serve one connection until QUIT, an error, a timeout or a disconnect."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
        config: Config,
        router: Router,
        throttle: Throttle,
    ):
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.settings = config.server
        self.limits = config.limits
        self.router = router
        self.throttle = throttle
        self.proto = ServerProtocol()
        self.mailbox: Mailbox | None = None
        self.user = ""
        self.folder = ""
        self.messages: list[MessageRef] = []
        self.current = 1
        self.announced = 0
        self.acked: set[int] = set()

    @property
    def tag(self) -> str:
        return f"peer={self.peer.host}:{self.peer.port}" + (f" user={self.user!r}" if self.user else "")

    async def run(self) -> None:
        log.info("connect %s", self.tag)
        try:
            version = __version__ if self.settings.show_version else None
            await self._write(self.proto.greeting(self.settings.hostname, version))
            while self.proto.state is not State.DONE:
                await self._step()
        except _Close as close:
            if close.why:
                log.info("close %s: %s", self.tag, close.why)
            if close.reply:
                await self._write_quietly(close.reply)
        except (ConnectionError, asyncio.IncompleteReadError) as err:
            log.info("disconnect %s: %s", self.tag, err.__class__.__name__)
        except Exception:
            log.exception("internal error %s", self.tag)
            await self._write_quietly(self.proto.reply_error("server_error"))
        finally:
            await self._end()

    async def _end(self) -> None:
        if self.mailbox is not None:
            pending = len(self.acked)
            if pending:
                log.info("end %s: %d ACKD message(s) kept, session did not end cleanly", self.tag, pending)
            try:
                await self.mailbox.close()
            except Exception:
                log.exception("mailbox close failed %s", self.tag)
            self.mailbox = None
        await self._lingering_close()
        log.info("closed %s", self.tag)

    async def _lingering_close(self) -> None:
        """Send FIN, then discard input briefly, so unread client data cannot
        turn the close into a reset that destroys our last reply in transit."""
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.limits.close_linger
                while (left := deadline - loop.time()) > 0:
                    if not await asyncio.wait_for(self.reader.read(65536), left):
                        break
        except Exception:
            pass
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except Exception:
            pass

    # -- I/O -----------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            await asyncio.wait_for(self.writer.drain(), self.limits.idle_timeout)
        except asyncio.TimeoutError:
            raise _Close(why="client stopped reading") from None

    async def _write_quietly(self, data: bytes) -> None:
        try:
            await self._write(data)
        except Exception:
            pass

    async def _next_event(self):
        timeout = self.limits.login_timeout if self.proto.state is State.AUTH else self.limits.idle_timeout
        while True:
            event = self.proto.next_event()
            if event is not NEED_DATA:
                return event
            try:
                data = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
            except asyncio.TimeoutError:
                raise _Close(self.proto.reply_error("autologout"), f"timeout after {timeout:g}s") from None
            if not data:
                raise _Close(why="client closed the connection")
            self.proto.receive_data(data)

    # -- commands --------------------------------------------------------------

    async def _step(self) -> None:
        event = await self._next_event()
        if isinstance(event, ProtocolViolation):
            log.warning("protocol error %s: %s", self.tag, event.detail)
            raise _Close(event.reply)
        if isinstance(event, Helo):
            await self._helo(event)
        elif isinstance(event, Fold):
            await self._fold(event.folder)
        elif isinstance(event, Read):
            if event.number is not None:
                self.current = event.number
            await self._answer_length()
        elif isinstance(event, Simple):
            await self._simple(event.command)

    async def _simple(self, command: Command) -> None:
        if command is Command.RETR:
            await self._retr()
        elif command is Command.ACKS:
            await self._store_call(self.mailbox.mark_seen(self.messages[self.current - 1]))
            self.current += 1
            await self._answer_length()
        elif command is Command.ACKD:
            self.acked.add(self.current)
            self.current += 1
            await self._answer_length()
        elif command is Command.NACK:
            await self._answer_length()
        elif command is Command.QUIT:
            if self.mailbox is not None:
                await self._release()
            await self._write(self.proto.reply_bye())
            log.info("quit %s", self.tag)

    async def _helo(self, event: Helo) -> None:
        self.user = event.user
        route = self.router.route(event.user)
        mailbox = None
        if route is not None:
            mailbox = await self._store_call(route.store.login(route.user, event.password, self.peer))
        if mailbox is None:
            delay = self.throttle.failure_delay(self.peer.host)
            log.warning("bad login %s delay=%gs", self.tag, delay)
            await asyncio.sleep(delay)
            raise _Close(self.proto.reply_error("bad_login"))
        self.throttle.succeeded(self.peer.host)
        self.mailbox = mailbox
        log.info("login %s backend=%s", self.tag, route.store.name)
        await self._select("INBOX")

    async def _fold(self, name: str) -> None:
        try:
            check_folder_name(name)
        except InvalidFolderName:
            log.warning("invalid folder name %s folder=%r", self.tag, name)
            raise _Close(self.proto.reply_error("bad_folder")) from None
        await self._release()
        await self._select(name)

    async def _select(self, folder: str) -> None:
        self.messages = await self._store_call(self.mailbox.select(folder))
        self.folder = folder
        self.current = 1
        self.announced = 0
        self.acked = set()
        log.info("select %s folder=%r messages=%d", self.tag, folder, len(self.messages))
        await self._write(self.proto.reply_count(len(self.messages), folder))

    async def _release(self) -> None:
        """Apply this folder's ACKD deletions: the only place mail is removed."""
        if not self.acked:
            return
        refs = [self.messages[n - 1] for n in sorted(self.acked)]
        await self._store_call(self.mailbox.release(refs))
        log.info("deleted %s folder=%r count=%d", self.tag, self.folder, len(refs))
        self.acked = set()

    async def _answer_length(self) -> None:
        n = self.current
        size = 0
        if 1 <= n <= len(self.messages) and n not in self.acked:
            ref = self.messages[n - 1]
            size = await self._store_call(self.mailbox.wire_size(ref))
            if size and self.settings.uw_compat:
                size += uwcompat.extra_octets(ref.seen)
        self.announced = size
        await self._write(self.proto.reply_length(size, n))

    async def _retr(self) -> None:
        if self.announced == 0:
            raise _Close(self.proto.reply_error("no_message"), "RETR of an empty or missing message")
        self.proto.start_data()
        ref = self.messages[self.current - 1]
        expected, sent = self.announced, 0
        chunks = self.mailbox.fetch(ref)
        if self.settings.uw_compat:
            chunks = uwcompat.add_status(chunks, ref.seen)
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if sent + len(chunk) > expected:
                        await self._write(chunk[: expected - sent])
                        self._transfer_failed(ref, f"longer than the announced {expected} octets")
                    await self._write(chunk)
                    sent += len(chunk)
        except StoreError as err:
            self._transfer_failed(ref, f"backend failed after {sent} of {expected} octets: {err}")
        if sent != expected:
            self._transfer_failed(ref, f"gave {sent} octets, announced {expected}")
        log.info("retr %s n=%d octets=%d", self.tag, self.current, sent)

    def _transfer_failed(self, ref: MessageRef, why: str) -> None:
        """End the session mid-RETR: no reply can follow message data, nothing is deleted."""
        log.warning("retr failed %s message=%s: %s; closing", self.tag, ref.id, why)
        raise _Close()

    async def _store_call(self, awaitable):
        try:
            return await awaitable
        except StoreError as err:
            log.warning("backend error %s: %s", self.tag, err)
            raise _Close(self.proto.reply_error("backend_error")) from None
