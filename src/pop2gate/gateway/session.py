"""One POP2 client session: drives the protocol against a user's Mailbox.

Deletion happens only in `_release`, which runs only on QUIT or FOLD. Every
other way out (a dropped client, a timeout, a protocol error, a backend
failure, a crash) ends in `close` without deleting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import time
from collections.abc import Awaitable
from typing import NoReturn, TypeVar

from prometheus_client import Counter, Histogram

from .. import __version__, logs
from ..config import Config
from ..metrics import Metrics
from ..pop2.server import NEED_DATA, ProtocolViolation, ServerProtocol, State
from ..pop2.wire import MAX_LINE, Ackd, Acks, Command, Fold, Helo, LocalProtocolError, Nack, Quit, Read, Reason, Retr
from ..routing import Router
from ..stores.base import Mailbox, MessageRef, Peer, StoreError
from .admission import Admission, Stage
from .throttle import Throttle

log = logging.getLogger("pop2gate.session")

T = TypeVar("T")


class _Close(Exception):
    """End the session after sending `reply` (may be empty); `error` is its kind in the metrics."""

    def __init__(self, reply: bytes = b"", why: str = "", error: str = "") -> None:
        self.reply = reply
        self.why = why
        self.error = error


class _Deadline:
    """The deadline of the read in progress, kept by one loop timer per session. The timer moves
    only when a deadline comes nearer than it; one further away (the next idle deadline, after
    every command) is left to the timer, which looks again when it fires. So a command costs
    two assignments here, not a timer scheduled and cancelled."""

    def __init__(self, task: asyncio.Task[None] | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._when: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    def set(self, when: float) -> None:
        """A read begins that must end by `when` (loop time)."""
        self._when = when
        if self._timer is None or when < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(when, self._check)

    def clear(self) -> None:
        """The read is over."""
        self._when = None

    def expired(self) -> bool:
        """Whether the CancelledError being handled is this deadline's (and only its)."""
        if not self._expired or self._task is None:
            return False
        self._expired = False
        return self._task.uncancel() == 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._when is None or self._task is None:
            return  # no read under way: the next one sets the timer again
        if self._loop.time() < self._when:
            self._timer = self._loop.call_at(self._when, self._check)
            return
        self._expired = True
        self._task.cancel()


class _Pieces:
    """RETR's octets gathered into writes of up to `size` octets (a larger piece goes alone)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._held: list[bytes] = []
        self._len = 0

    def add(self, piece: bytes) -> list[bytes]:
        """Hold `piece`; return what is ready to write, in order."""
        ready = []
        if self._len + len(piece) > self.size and self._held:
            ready.append(self._join())
        if len(piece) >= self.size:
            ready.append(piece)
        elif piece:
            self._held.append(piece)
            self._len += len(piece)
        return ready

    def take(self) -> bytes | None:
        """What is held, as one write (None: nothing)."""
        return self._join() if self._held else None

    def _join(self) -> bytes:
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held, self._len = [], 0
        return data


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
        admission: Admission,
        metrics: Metrics,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.settings = config.server
        self.limits = config.limits
        self.router = router
        self.throttle = throttle
        self.admission = admission
        self.metrics = metrics
        self.proto = ServerProtocol()
        self.mailbox: Mailbox | None = None
        self.user = ""
        self.folder = ""
        self.messages: list[MessageRef] = []
        self.current = 1
        self.acked: set[int] = set()
        self.backend = ""  # the backend's name once the login is routed
        self._task = asyncio.current_task()  # the connection's own task
        loop = asyncio.get_running_loop()
        self._login_deadline = loop.time() + self.limits.login_timeout
        self._line_deadline: float | None = None  # set while a command line is incomplete
        self._deadline = _Deadline(self._task)
        self._timers: dict[tuple[str, str], Histogram] = {}  # backend_seconds by (backend, call)
        self._sent: tuple[Counter, Counter] | None = None  # messages and octets for this backend

    @property
    def tag(self) -> str:
        return f"peer={self.peer.host}:{self.peer.port}" + (f" user={self.user!r}" if self.user else "")

    def _event(self, name: str, **fields: object) -> dict[str, object]:
        """`extra=` for one of this session's event lines (JSON shows the fields as keys)."""
        who = {"peer": f"{self.peer.host}:{self.peer.port}", "user": self.user or None,
               "backend": self.backend or None}
        return logs.event(name, **{k: v for k, v in who.items() if v is not None}, **fields)

    def heard_from_client(self) -> bool:
        """Whether a session waiting for HELO has heard from its client: a HELO being checked or
        waiting its turn, or octets in the protocol's buffer, the stream's or the kernel's."""
        if self.user or self.proto.room < MAX_LINE:
            return True
        if getattr(self.reader, "_buffer", b""):  # a StreamReader shows its buffer no other way
            return True
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return False
        poll = select.poll()
        poll.register(sock.fileno(), select.POLLIN)
        return bool(poll.poll(0))

    async def run(self) -> None:
        log.info("connect %s", self.tag, extra=self._event("connect"))
        self.metrics.sessions.inc()
        try:
            version = __version__ if self.settings.show_version else None
            await self._write(self.proto.greeting(self.settings.hostname, version))
            while self.proto.state is not State.DONE:
                await self._step()
        except _Close as close:
            if close.error:
                self.metrics.errors.labels(close.error).inc()
            if close.why:
                log.info("close %s: %s", self.tag, close.why, extra=self._event("close", why=close.why))
            if close.reply:
                await self._write_quietly(close.reply)
        except (ConnectionError, asyncio.IncompleteReadError) as err:
            why = err.__class__.__name__
            log.info("disconnect %s: %s", self.tag, why, extra=self._event("disconnect", why=why))
        except Exception:
            self.metrics.errors.labels("internal").inc()
            log.exception("internal error %s", self.tag)
            await self._write_quietly(self.proto.send_error(Reason.SERVER_ERROR))
        finally:
            await self._end()

    async def _end(self) -> None:
        self._deadline.close()
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
        log.info("closed %s", self.tag, extra=self._event("closed"))

    async def _lingering_close(self) -> None:
        """Send FIN, then discard input briefly, so unread client data cannot
        turn the close into a reset that destroys our last reply in transit."""
        if self.writer.transport.is_closing():
            return  # aborted, or the peer is gone: nothing left to deliver
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.limits.close_linger
                while (left := deadline - loop.time()) > 0:
                    if not await asyncio.wait_for(self.reader.read(65536), left):
                        break
        except (TimeoutError, OSError):
            pass  # the peer is gone or slow: closing is all that is left
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)

    # -- I/O -----------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        if not self.writer.transport.get_write_buffer_size() and not self.writer.transport.is_closing():
            return  # all of it is with the kernel already: nothing to wait for
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await self.writer.drain()
        except TimeoutError:
            self.writer.transport.abort()  # what it did not take is dropped: no graceful close
            raise _Close(why=f"client took no data for {self.limits.send_timeout:g}s", error="send_timeout") from None

    async def _write_quietly(self, data: bytes) -> None:
        with contextlib.suppress(_Close, OSError):
            await self._write(data)

    async def _next_event(self) -> Command | ProtocolViolation:
        """The next command, within deadlines: the whole login (`login_timeout` from connect),
        each command line once begun (`command_timeout`), the pause between commands
        (`idle_timeout`). A trickle of octets extends none of them."""
        loop = asyncio.get_running_loop()
        while True:
            event = self.proto.next_event()
            if event is not NEED_DATA:
                self._line_deadline = None
                return event
            now = loop.time()
            if self.proto.room < MAX_LINE and self._line_deadline is None:
                self._line_deadline = now + self.limits.command_timeout
            limits = [(self._line_deadline, "command line not complete")] if self._line_deadline else []
            if self.proto.state is State.AUTH:
                limits.append((self._login_deadline, "no login"))
            elif self._line_deadline is None:
                limits.append((now + self.limits.idle_timeout, "idle"))
            deadline, why = min(limits)
            self._deadline.set(deadline)
            try:  # never more than the rest of one command line
                data = await self.reader.read(self.proto.room)
            except asyncio.CancelledError:
                if not self._deadline.expired():
                    raise
                raise _Close(self.proto.send_error(Reason.AUTOLOGOUT), f"timeout: {why}", "timeout") from None
            finally:
                self._deadline.clear()
            if not data:
                raise _Close(why="client closed the connection")
            self.proto.receive_data(data)

    # -- commands --------------------------------------------------------------

    async def _step(self) -> None:
        event = await self._next_event()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("command %r %s", event, self.tag)  # a Helo's repr hides its password
        match event:
            case ProtocolViolation(detail=detail, reply=reply):
                log.warning("protocol error %s: %s", self.tag, detail)
                raise _Close(reply, error="protocol")
            case Helo():
                await self._helo(event)
            case Fold(folder=folder):
                await self._release()
                await self._select(folder)
            case Read(number=number):
                if number is not None:
                    self.current = number
                await self._answer_length()
            case Retr():
                await self._retr()
            case Acks():
                await self._store_call(self._mailbox().mark_seen(self.messages[self.current - 1]))
                self.current += 1
                await self._answer_length()
            case Ackd():
                self.acked.add(self.current)
                self.current += 1
                await self._answer_length()
            case Nack():
                await self._answer_length()
            case Quit():
                if self.mailbox is not None:
                    await self._release()
                await self._write(self.proto.send_bye())
                log.info("quit %s", self.tag, extra=self._event("quit"))

    def _mailbox(self) -> Mailbox:
        assert self.mailbox is not None, "the protocol allows this command only after HELO"
        return self.mailbox

    async def _helo(self, event: Helo) -> None:
        self.user = event.user
        route = self.router.route(event.user)
        mailbox: Mailbox | None = None
        if route is not None:
            self.backend = route.store.name
            async with self.admission.login_turn(self.throttle.address_key(self.peer.host)):
                self.admission.stage(self, Stage.LOGIN)
                try:
                    mailbox = await self._store_call(route.store.login(route.user, event.password, self.peer))
                except _Close:
                    raise
                except Exception as err:  # whatever a client sent, a login fails, never crashes
                    log.warning("login failed %s: %s", self.tag, type(err).__name__)
        if mailbox is None:
            delay = self.throttle.failure_delay(self.peer.host, self.user)
            self.metrics.logins.labels("failed", self.backend).inc()
            if delay > self.limits.bad_login_delay:
                self.metrics.throttled.inc()
            log.warning("bad login %s backend=%s delay=%gs", self.tag, self.backend or "(none)", delay,
                        extra=self._event("login_failed", delay=delay))
            self.admission.stage(self, Stage.DELAY)  # may give way to others meanwhile
            await asyncio.sleep(delay)
            raise _Close(self.proto.send_error(Reason.BAD_LOGIN))
        assert route is not None
        self.throttle.succeeded(self.peer.host, self.user)
        self.mailbox = mailbox
        if not self.admission.log_in(self, (route.store.name, route.user)):
            self.metrics.logins.labels("refused", self.backend).inc()
            self.metrics.refused.labels("max_sessions_per_user").inc()
            log.warning("refused %s: max_sessions_per_user=%d reached", self.tag, self.limits.max_sessions_per_user)
            raise _Close(self.proto.send_error(Reason.TOO_MANY_SESSIONS))
        self.metrics.logins.labels("ok", self.backend).inc()
        log.info("login %s backend=%s", self.tag, route.store.name, extra=self._event("login"))
        await self._select("INBOX")

    async def _select(self, folder: str) -> None:
        self.messages = await self._store_call(self._mailbox().select(folder))
        self.folder = folder
        self.current = 1
        self.acked = set()
        log.info("select %s folder=%r messages=%d", self.tag, folder, len(self.messages),
                 extra=self._event("select", folder=folder, messages=len(self.messages)))
        await self._write(self.proto.send_count(len(self.messages), folder))

    async def _release(self) -> None:
        """Apply this folder's ACKD deletions, the only place mail is removed, and (the store's
        part) the ACKS flags it still holds: QUIT and FOLD answer only once both are done."""
        refs = [self.messages[n - 1] for n in sorted(self.acked)]
        await self._store_call(self._mailbox().release(refs))
        if not refs:
            return
        self.metrics.deletions.labels(self.backend).inc(len(refs))
        log.info("deleted %s folder=%r count=%d", self.tag, self.folder, len(refs),
                 extra=self._event("deleted", folder=self.folder, count=len(refs)))
        self.acked = set()

    async def _answer_length(self) -> None:
        n = self.current
        size = 0
        if 1 <= n <= len(self.messages) and n not in self.acked:
            size = await self._store_call(self._mailbox().wire_size(self.messages[n - 1]))
        await self._write(self.proto.send_length(size, n))

    async def _retr(self) -> None:
        """Send exactly the announced octets; the protocol core counts them. The store's pieces
        go out together up to `retr_chunk_size` a write: each write is a send() that wakes the
        client, so a small piece (the CRLF a store adds at the end, say) gets none of its own."""
        ref = self.messages[self.current - 1]
        expected = self.proto.announced
        chunks = self._mailbox().fetch(ref)
        out = _Pieces(self.limits.retr_chunk_size)
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    longer = len(chunk) > self.proto.data_left
                    for ready in out.add(self.proto.send_data(chunk[: self.proto.data_left] if longer else chunk)):
                        await self._write(ready)
                    if longer:
                        await self._write_pieces(out.take())
                        self._transfer_failed(ref, f"longer than the announced {expected} octets")
        except StoreError as err:
            await self._write_pieces(out.take())
            sent = expected - self.proto.data_left
            self._transfer_failed(ref, f"backend failed after {sent} of {expected} octets: {err}")
        await self._write_pieces(out.take())
        try:
            self.proto.end_data()
        except LocalProtocolError as err:
            self._transfer_failed(ref, str(err))
        if self._sent is None:
            self._sent = self.metrics.messages.labels(self.backend), self.metrics.octets.labels(self.backend)
        self._sent[0].inc()
        self._sent[1].inc(expected)
        if log.isEnabledFor(logging.INFO):
            log.info("retr %s n=%d octets=%d", self.tag, self.current, expected,
                     extra=self._event("retr", folder=self.folder, n=self.current, octets=expected))

    async def _write_pieces(self, data: bytes | None) -> None:
        if data:
            await self._write(data)

    def _transfer_failed(self, ref: MessageRef, why: str) -> NoReturn:
        """End the session mid-RETR: no reply can follow message data, nothing is deleted."""
        log.warning("retr failed %s message=%s: %s; closing", self.tag, ref.id, why)
        raise _Close(error="retr")

    async def _store_call(self, awaitable: Awaitable[T]) -> T:
        """Await a store call, timed by backend and call name (the coroutine's) in the metrics."""
        start = time.monotonic()
        try:
            return await awaitable
        except StoreError as err:
            log.warning("backend error %s: %s", self.tag, err)
            raise _Close(self.proto.send_error(Reason.BACKEND_ERROR), error="backend") from None
        finally:
            key = (self.backend, getattr(awaitable, "__name__", "call"))
            timer = self._timers.get(key)
            if timer is None:  # each label lookup once per session, not once per command
                timer = self._timers[key] = self.metrics.backend_seconds.labels(*key)
            timer.observe(time.monotonic() - start)
