"""The IMAP client's pipelining and streaming, on the wire, against a scripted server that
answers only once the commands that may be pipelined are all in, and that holds back the rest
of a literal until the store has handed on its first octets."""

from __future__ import annotations

import threading

from helpers import ScriptConn, ScriptedServer
from pop2gate.config import Limits
from pop2gate.stores.base import Peer
from pop2gate.stores.imap import ImapBackend, ImapStore

CHUNK = 4096
BODY = b"Subject: pipelined\r\n\r\n" + b"x" * 5976 + b"\r\n"  # 6000 octets: two partial fetches


class Pipelined:
    """Each step reads every command the client may write at once before answering any: a
    client that waits for one answer before it writes the next command stalls here, and the
    server gives up after its timeout."""

    def __init__(self) -> None:
        self.first_piece_out = threading.Event()
        self.failures: list[str] = []

    def lines(self, conn: ScriptConn, *verbs: bytes) -> list[bytes]:
        got = []
        for verb in verbs:
            line = conn.readline()
            if verb not in line:
                self.failures.append(f"wanted {verb!r}, got {line!r}")
                raise OSError("script ends")
            got.append(line.split(b" ", 1)[0])
        return got

    def __call__(self, conn: ScriptConn) -> None:
        conn.send(b"* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN SASL-IR] ready\r\n")
        id_tag, auth_tag = self.lines(conn, b" ID (", b" AUTHENTICATE PLAIN ")
        conn.send(b'* ID ("name" "scripted")\r\n' + id_tag + b" OK id\r\n"
                  + auth_tag + b" OK [CAPABILITY IMAP4rev1 UIDPLUS] in\r\n")
        select, snapshot = self.lines(conn, b" SELECT ", b" UID FETCH 1:* ")
        conn.send(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n" + select + b" OK [READ-WRITE] done\r\n"
                  b"* 1 FETCH (UID 7 RFC822.SIZE %d FLAGS ())\r\n" % len(BODY) + snapshot + b" OK done\r\n")
        [tail] = self.lines(conn, b"BODY.PEEK[]<%d.2>" % (len(BODY) - 2))
        conn.send(b"* 1 FETCH (UID 7 RFC822.SIZE %d BODY[]<%d> {2}\r\n%s)\r\n" % (len(BODY), len(BODY) - 2, BODY[-2:])
                  + tail + b" OK done\r\n")
        [first] = self.lines(conn, b"BODY.PEEK[]<0.%d>" % CHUNK)
        conn.send(b"* 1 FETCH (UID 7 BODY[]<0> {%d}\r\n" % CHUNK + BODY[:1000])
        if not self.first_piece_out.wait(5):
            self.failures.append("nothing handed on before the whole literal had come")
        conn.send(BODY[1000:CHUNK] + b")\r\n")
        # The next partial fetch comes before this one is complete (its OK is held back).
        [second] = self.lines(conn, b"BODY.PEEK[]<%d.%d>" % (CHUNK, CHUNK))
        rest = BODY[CHUNK:]
        conn.send(first + b" OK done\r\n* 1 FETCH (UID 7 BODY[]<%d> {%d}\r\n%s)\r\n" % (CHUNK, len(rest), rest)
                  + second + b" OK done\r\n")
        self.lines(conn, b" LOGOUT")


async def test_commands_are_pipelined_and_a_large_message_streams():
    script = Pipelined()
    with ScriptedServer(script, timeout=3) as server:
        backend = ImapBackend(name="s", type="imap", url=f"imap://127.0.0.1:{server.port}", tls="none", timeout=5)
        store = ImapStore(backend, Limits(imap_readahead=0, imap_fetch_chunk=CHUNK, imap_fetch_memory=2 * CHUNK))
        try:
            box = await store.login("alice", "pw", Peer("127.0.0.9", 1))
            assert box is not None, script.failures
            assert box.conn.server_name == "scripted"
            [ref] = await box.select("INBOX")
            assert await box.wire_size(ref) == len(BODY)
            got = bytearray()
            async for piece in box.fetch(ref):
                got += piece
                script.first_piece_out.set()
            assert bytes(got) == BODY
            assert store.budget.used == 0
            await box.close()
            server.wait_done()
        finally:
            await store.aclose()
    assert script.failures == []
