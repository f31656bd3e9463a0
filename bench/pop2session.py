"""The POP2 load generator's session: the project's client core
(`pop2gate.pop2.client.ClientProtocol`, sans-I/O) on a blocking socket, with I/O as lean as a
careful client's, so that the wall time measures the server rather than the client.

Against the project's blocking `Client`, which is built for a person's use (a timeout per call,
a context manager per call to drop a broken connection): no `poll()` before each `send` and
`recv` (the socket blocks, and the kernel's SO_RCVTIMEO / SO_SNDTIMEO bound each wait
instead); like it, reads sized to the message data still due (`ClientProtocol.data_left`,
at most 1 MiB) and one `sendall` per command. Every reply and every octet goes through the
protocol core, which checks them as `Client` does.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from collections.abc import Callable
from typing import TypeVar

from pop2gate.pop2.client import (
    NEED_DATA,
    ClientProtocol,
    Count,
    Data,
    DataEnd,
    Error,
    Event,
    Greeting,
    Length,
    Ok,
    Pop2Error,
    RemoteProtocolError,
)

E = TypeVar("E", Greeting, Count, Length, Ok, Data)
CHUNK = 1 << 16  # a read while a reply line is due
MAX_READ = 1 << 20  # the most one read asks for during message data


class Pop2Session:
    """One POP2 session: connect and read the greeting; `helo`, `read`, `retr_digest`, `acks`,
    `quit` each send one command and wait for its whole reply, as a real client does."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Client: each command at once
        limit = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        self.protocol = ClientProtocol()
        self.greeting = self._expect(self._event(), Greeting).text

    def helo(self, user: str, password: str) -> int:
        return self._call(self.protocol.helo(user, password), Count).n

    def read(self, n: int) -> int:
        return self._call(self.protocol.read(n), Length).c

    def acks(self) -> int:
        return self._call(self.protocol.acks(), Length).c

    def quit(self) -> None:
        self._call(self.protocol.quit(), Ok)

    def retr_digest(self, form: Callable[[bytes], bytes] | None = None) -> str:
        """RETR: the sha256 of the message's octets, or of `form` of them (the whole message)."""
        self.sock.sendall(self.protocol.retr())
        h = hashlib.sha256()
        parts = []
        while not isinstance(event := self._event(), DataEnd):
            data = self._expect(event, Data).data
            if form:
                parts.append(data)
            else:
                h.update(data)
        if form:
            h.update(form(b"".join(parts)))
        return h.hexdigest()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Pop2Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, line: bytes, kind: type[E]) -> E:
        self.sock.sendall(line)
        return self._expect(self._event(), kind)

    def _event(self) -> Event:
        protocol, recv = self.protocol, self.sock.recv
        while (event := protocol.next_event()) is NEED_DATA:
            protocol.receive_data(recv(min(max(CHUNK, protocol.data_left), MAX_READ)))
        return event  # type: ignore[return-value]

    @staticmethod
    def _expect(event: Event, kind: type[E]) -> E:
        if isinstance(event, kind):
            return event
        if isinstance(event, Error):
            raise Pop2Error(event.text)
        raise RemoteProtocolError(f"expected {kind.__name__}, got {event!r}")
