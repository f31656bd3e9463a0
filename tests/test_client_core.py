"""Tests of the POP2 client: the sans-I/O core, then the asyncio and blocking wrappers."""

from __future__ import annotations

import asyncio
import io
import socket

import pytest

from helpers import ScriptedServer, replies
from pop2gate.pop2.client import (
    NEED_DATA,
    AsyncClient,
    Client,
    ClientProtocol,
    Closed,
    ConnectionClosed,
    Count,
    Data,
    DataEnd,
    Error,
    Greeting,
    Length,
    LocalProtocolError,
    Ok,
    Pop2Error,
    ProtocolError,
    RemoteProtocolError,
    State,
)
from pop2gate.pop2.wire import MAX_LINE as MAX_COMMAND
from pop2gate.pop2.wire import MAX_REPLY_LINE as MAX_REPLY

GREETING = b"+ POP2 mail.example pop2gate server ready\r\n"
MESSAGE = b"From: a@example\r\nSubject: hi\r\n\r\n- not a reply\r\n=12 nor this\r\n.\r\n"


def events(proto: ClientProtocol) -> list:
    """Every event available now, up to NEED_DATA or Closed."""
    out = []
    while True:
        event = proto.next_event()
        if event is NEED_DATA:
            return out
        out.append(event)
        if isinstance(event, Closed):
            return out


def feed(proto: ClientProtocol, data: bytes) -> list:
    proto.receive_data(data)
    return events(proto)


# -- the core: reaching every client state -----------------------------------------------

def at(where: str) -> ClientProtocol:
    """A protocol object in the named situation."""
    p = ClientProtocol()
    if where == "pre-greeting":
        return p
    feed(p, GREETING)
    steps = {
        "call": [],
        "helo-sent": [lambda: p.helo("u", "p")],
        "nmbr": [lambda: p.helo("u", "p"), b"#3\r\n"],
        "read-sent": [lambda: p.helo("u", "p"), b"#3\r\n", lambda: p.read(1)],
        "size": [lambda: p.helo("u", "p"), b"#3\r\n", lambda: p.read(1), b"=4\r\n"],
        "size0": [lambda: p.helo("u", "p"), b"#3\r\n", lambda: p.read(9), b"=0\r\n"],
        "xfer": [lambda: p.helo("u", "p"), b"#3\r\n", lambda: p.read(1), b"=4\r\n",
                 lambda: p.retr(), b"ab"],
        "xfer-done": [lambda: p.helo("u", "p"), b"#3\r\n", lambda: p.read(1), b"=4\r\n",
                      lambda: p.retr(), b"abcd"],
        "ack-sent": [lambda: p.helo("u", "p"), b"#3\r\n", lambda: p.read(1), b"=4\r\n",
                     lambda: p.retr(), b"abcd", lambda: p.acks()],
        "quit-sent": [lambda: p.quit()],
        "exit": [lambda: p.quit(), b"+ OK\r\n"],
        "error-reply": [b"- Autologout; idle for too long\r\n"],
        "closed": [b""],
        "broken": [lambda: p.helo("u", "p"), b"?\r\n"],
    }[where]
    for step in steps:
        if isinstance(step, bytes):
            try:
                feed(p, step)
            except RemoteProtocolError:
                pass
        else:
            step()
    return p


SITUATIONS = {  # situation: (state, waiting)
    "pre-greeting": (State.CALL, True), "call": (State.CALL, False),
    "helo-sent": (State.NMBR, True), "nmbr": (State.NMBR, False),
    "read-sent": (State.SIZE, True), "size": (State.SIZE, False),
    "size0": (State.SIZE, False), "xfer": (State.XFER, True),
    "xfer-done": (State.XFER, False), "ack-sent": (State.SIZE, True),
    "quit-sent": (State.EXIT, True), "exit": (State.EXIT, False),
    "error-reply": (State.EXIT, False), "closed": (State.EXIT, False),
    "broken": (State.ERROR, False),
}

COMMANDS = {
    "helo": lambda p: p.helo("u", "p"), "fold": lambda p: p.fold("Box"),
    "read": lambda p: p.read(), "read 2": lambda p: p.read(2), "retr": lambda p: p.retr(),
    "acks": lambda p: p.acks(), "ackd": lambda p: p.ackd(), "nack": lambda p: p.nack(),
    "quit": lambda p: p.quit(),
}
WIRE = {
    "helo": b"HELO u p\r\n", "fold": b"FOLD Box\r\n", "read": b"READ\r\n",
    "read 2": b"READ 2\r\n", "retr": b"RETR\r\n", "acks": b"ACKS\r\n", "ackd": b"ACKD\r\n",
    "nack": b"NACK\r\n", "quit": b"QUIT\r\n",
}
ALLOWED = {  # (situation, command): state afterwards; every other pair is refused
    ("call", "helo"): State.NMBR, ("call", "quit"): State.EXIT,
    ("nmbr", "fold"): State.NMBR, ("nmbr", "read"): State.SIZE,
    ("nmbr", "read 2"): State.SIZE, ("nmbr", "quit"): State.EXIT,
    ("size", "fold"): State.NMBR, ("size", "read"): State.SIZE,
    ("size", "read 2"): State.SIZE, ("size", "retr"): State.XFER, ("size", "quit"): State.EXIT,
    ("size0", "fold"): State.NMBR, ("size0", "read"): State.SIZE,
    ("size0", "read 2"): State.SIZE, ("size0", "quit"): State.EXIT,
    ("xfer-done", "acks"): State.SIZE, ("xfer-done", "ackd"): State.SIZE,
    ("xfer-done", "nack"): State.SIZE,
}


@pytest.mark.parametrize("where", SITUATIONS)
def test_situations_reach_expected_state(where):
    p = at(where)
    assert (p.state, p.waiting) == SITUATIONS[where]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", SITUATIONS)
def test_command_in_every_state(where, command):
    p = at(where)
    if (where, command) in ALLOWED:
        assert COMMANDS[command](p) == WIRE[command]
        assert p.state is ALLOWED[(where, command)]
        assert p.waiting
    else:
        before = (p.state, p.waiting)
        with pytest.raises(LocalProtocolError):
            COMMANDS[command](p)
        assert (p.state, p.waiting) == before  # a refused command changes nothing


def test_local_protocol_error_is_a_client_error():
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(Pop2Error, ProtocolError)
    assert issubclass(ConnectionClosed, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)


# -- the core: building commands ---------------------------------------------------------

@pytest.mark.parametrize("user, password, wire", [
    ("joe", "secret", b"HELO joe secret\r\n"),
    ("joe smith", "two words", b"HELO joe\\ smith two\\ words\r\n"),
    ("dom\\joe", "a\\ b", b"HELO dom\\\\joe a\\\\\\ b\r\n"),
    ("j\u00f6", "p\u00e4ss", "HELO j\u00f6 p\u00e4ss\r\n".encode()),
    (b"raw", b"\xff\xfe", b"HELO raw \xff\xfe\r\n"),
    ("  ", "\\", b"HELO \\ \\  \\\\\r\n"),
])
def test_helo_quoting(user, password, wire):
    assert at("call").helo(user, password) == wire


@pytest.mark.parametrize("name, wire", [
    ("INBOX", b"FOLD INBOX\r\n"),
    ("My Mail/2024 Q1", b"FOLD My\\ Mail/2024\\ Q1\r\n"),
    ("back\\slash", b"FOLD back\\\\slash\r\n"),
    ("Entw\u00fcrfe", "FOLD Entw\u00fcrfe\r\n".encode()),
])
def test_fold_quoting(name, wire):
    assert at("nmbr").fold(name) == wire


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\x00b", "a\tb", "a\x1bb", "a\x7fb", "\r\n"])
@pytest.mark.parametrize("command", ["user", "password", "fold"])
def test_control_characters_refused(command, bad):
    p = at("nmbr" if command == "fold" else "call")
    with pytest.raises(LocalProtocolError):
        if command == "user":
            p.helo(bad, "pw")
        elif command == "password":
            p.helo("user", bad)
        else:
            p.fold(bad)
    assert not p.waiting


@pytest.mark.parametrize("call", [
    lambda p: p.helo("", "pw"), lambda p: p.helo("user", ""), lambda p: p.helo(b"", b"x"),
])
def test_empty_arguments_refused(call):
    with pytest.raises(LocalProtocolError):
        call(at("call"))


def test_empty_mailbox_refused():
    with pytest.raises(LocalProtocolError):
        at("nmbr").fold("")


@pytest.mark.parametrize("call", [lambda p: p.helo(1, "x"), lambda p: p.helo("x", None)])
def test_argument_type_checked(call):
    with pytest.raises(TypeError):
        call(at("call"))


def test_read_numbers():
    assert at("nmbr").read(0) == b"READ 0\r\n"
    assert at("nmbr").read(12345) == b"READ 12345\r\n"
    with pytest.raises(LocalProtocolError):
        at("nmbr").read(-1)
    for bad in ("1", 1.0, True):
        with pytest.raises(TypeError):
            at("nmbr").read(bad)


def test_command_line_limit_counts_crlf():
    room = MAX_COMMAND - len(b"FOLD \r\n")
    assert len(at("nmbr").fold("x" * room)) == MAX_COMMAND
    with pytest.raises(LocalProtocolError):
        at("nmbr").fold("x" * (room + 1))


def test_command_line_limit_counts_quoting():
    room = MAX_COMMAND - len(b"FOLD \r\n")
    with pytest.raises(LocalProtocolError):
        at("nmbr").fold(" " * (room // 2 + 1))  # each space is sent as two octets
    assert len(at("nmbr").fold(" " * (room // 2))) <= MAX_COMMAND


def test_helo_line_limit():
    room = MAX_COMMAND - len(b"HELO u \r\n")
    p = at("call")
    with pytest.raises(LocalProtocolError):
        p.helo("u", "p" * (room + 1))
    assert p.state is State.CALL and not p.waiting
    assert len(p.helo("u", "p" * room)) == MAX_COMMAND


def test_retr_needs_a_nonzero_count():
    p = at("size0")
    with pytest.raises(LocalProtocolError, match="zero"):
        p.retr()


def test_ack_refused_until_all_data_consumed():
    p = at("size")
    p.retr()
    assert feed(p, b"abc") == [Data(b"abc")]
    with pytest.raises(LocalProtocolError):
        p.acks()
    assert feed(p, b"d") == [Data(b"d"), DataEnd()]
    assert p.ackd() == b"ACKD\r\n"


# -- the core: replies ------------------------------------------------------------------

def session(p: ClientProtocol, split) -> list:
    """Play a whole session, handing the server's bytes over in the given pieces."""
    script = [
        (None, b"+ POP2 mail.example pop2gate server ready\r\n"),
        (lambda: p.helo("u", "p"), b"#2 messages in INBOX\r\n"),
        (lambda: p.read(1), b"=%d characters in message 1\r\n" % len(MESSAGE)),
        (p.retr, MESSAGE),
        (p.acks, b"=3 characters in message 2\r\n"),
        (p.retr, b"xyz"),
        (p.nack, b"=3 characters in message 2\r\n"),
        (p.retr, b"xyz"),
        (p.ackd, b"=0 no more messages\r\n"),
        (lambda: p.fold("Other Box"), b"#0 messages in Other Box\r\n"),
        (p.quit, b"+ OK\r\n"),
        (None, b""),
    ]
    out = []
    for command, reply in script:
        if command is not None:
            command()
        if reply:
            for piece in split(reply):
                out += feed(p, piece)
        else:
            out += feed(p, b"")
    return out


def merge_data(evs: list) -> list:
    """Join adjacent Data events, since their split depends on how input arrived."""
    out = []
    for e in evs:
        if isinstance(e, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + e.data)
        else:
            out.append(e)
    return out


EXPECTED_SESSION = [
    Greeting("POP2 mail.example pop2gate server ready", "mail.example"),
    Count(2, "messages in INBOX"),
    Length(len(MESSAGE), "characters in message 1"),
    Data(MESSAGE), DataEnd(),
    Length(3, "characters in message 2"),
    Data(b"xyz"), DataEnd(),
    Length(3, "characters in message 2"),
    Data(b"xyz"), DataEnd(),
    Length(0, "no more messages"),
    Count(0, "messages in Other Box"),
    Ok("OK"),
    Closed(),
]


def test_session_whole_replies():
    p = ClientProtocol()
    assert session(p, lambda r: [r]) == EXPECTED_SESSION
    assert p.state is State.EXIT


def test_session_one_byte_at_a_time():
    p = ClientProtocol()
    evs = session(p, lambda r: [r[i:i + 1] for i in range(len(r))])
    assert merge_data(evs) == EXPECTED_SESSION


@pytest.mark.parametrize("cut", range(1, len(b"=12 characters\r\n")))
def test_reply_split_at_every_byte(cut):
    p = at("read-sent")
    line = b"=12 characters\r\n"
    assert feed(p, line[:cut]) == []
    assert feed(p, line[cut:]) == [Length(12, "characters")]


@pytest.mark.parametrize("cut", range(1, len(GREETING)))
def test_greeting_split_at_every_byte(cut):
    p = ClientProtocol()
    assert feed(p, GREETING[:cut]) == []
    assert feed(p, GREETING[cut:]) == [Greeting("POP2 mail.example pop2gate server ready",
                                                "mail.example")]


def test_data_and_next_reply_in_one_chunk():
    p = at("size")  # =4 announced
    p.retr()
    assert feed(p, b"abcd=7 characters\r\n") == [Data(b"abcd"), DataEnd()]
    assert events(p) == []  # the reply stays buffered until a command asks for it
    p.acks()
    assert events(p) == [Length(7, "characters")]


WIRE_DATA_REPLY = b"abcd=7 x\r\n"


@pytest.mark.parametrize("cut", range(1, len(WIRE_DATA_REPLY)))
def test_data_plus_reply_split_anywhere(cut):
    wire = WIRE_DATA_REPLY
    p = at("size")
    p.retr()
    evs = feed(p, wire[:cut]) + feed(p, wire[cut:])
    p.ackd()
    evs += events(p)
    assert merge_data(evs) == [Data(b"abcd"), DataEnd(), Length(7, "x")]


def test_message_data_never_parsed_as_replies():
    body = b"- x\r\n+ OK\r\n#1\r\n=2\r\n\r\n"
    p = at("read-sent")
    feed(p, b"=%d\r\n" % len(body))
    p.retr()
    assert feed(p, body) == [Data(body), DataEnd()]


def test_message_data_without_line_end_or_longer_than_reply_limit():
    body = b"x" * (MAX_REPLY * 3)
    p = at("read-sent")
    feed(p, b"=%d\r\n" % len(body))
    p.retr()
    assert merge_data(feed(p, body)) == [Data(body), DataEnd()]


def test_bare_lf_replies():
    p = ClientProtocol()
    assert feed(p, b"+ POP2 h\n") == [Greeting("POP2 h", "h")]
    p.helo("u", "p")
    assert feed(p, b"#1\n") == [Count(1, "")]
    p.read()
    assert feed(p, b"=5 chars\n") == [Length(5, "chars")]
    p.quit()
    assert feed(p, b"+ bye\n") == [Ok("bye")]


@pytest.mark.parametrize("wire, expected", [
    (b"#7\r\n", Count(7, "")),
    (b"# 7 msgs\r\n", Count(7, "msgs")),
    (b"#0007 x\r\n", Count(7, "x")),
    (b"#7\tx\r\n", Count(7, "x")),
    (b"- Bad login\r\n", Error("Bad login")),
    (b"-\r\n", Error("")),
    (b"-no space\r\n", Error("no space")),
])
def test_reply_forms(wire, expected):
    assert feed(at("helo-sent"), wire) == [expected]


@pytest.mark.parametrize("greeting, host", [
    (b"+ POP2 mail.example ready\r\n", "mail.example"),
    (b"+ POP2 h\r\n", "h"),
    (b"+ POP2\r\n", None),
    (b"+ hello there\r\n", None),
    (b"+\r\n", None),
])
def test_greeting_host(greeting, host):
    (event,) = feed(ClientProtocol(), greeting)
    assert isinstance(event, Greeting) and event.host == host


def test_error_greeting():
    p = ClientProtocol()
    assert feed(p, b"- Too many connections\r\n") == [Error("Too many connections")]
    assert p.state is State.EXIT


def test_reply_text_not_utf8_is_replaced():
    (event,) = feed(at("helo-sent"), b"#1 caf\xe9\r\n")
    assert event == Count(1, "caf\ufffd")


@pytest.mark.parametrize("where, wire", [
    ("helo-sent", b"\r\n"),
    ("helo-sent", b"* OK\r\n"),
    ("helo-sent", b"OK\r\n"),
    ("helo-sent", b"#\r\n"),
    ("helo-sent", b"#x\r\n"),
    ("helo-sent", b"#5x\r\n"),
    ("helo-sent", b"#-5\r\n"),
    ("helo-sent", b"#" + b"9" * 21 + b"\r\n"),
    ("helo-sent", b"+ OK\r\n"),
    ("helo-sent", b"=5\r\n"),
    ("read-sent", b"#5\r\n"),
    ("read-sent", b"+ OK\r\n"),
    ("read-sent", b"=\r\n"),
    ("ack-sent", b"#1\r\n"),
    ("pre-greeting", b"#1\r\n"),
    ("pre-greeting", b"=1\r\n"),
    ("pre-greeting", b"POP2 ready\r\n"),
    ("quit-sent", b"#1\r\n"),
])
def test_bad_replies(where, wire):
    p = at(where)
    with pytest.raises(RemoteProtocolError):
        feed(p, wire)
    assert p.state is State.ERROR
    with pytest.raises(RemoteProtocolError):
        p.next_event()  # stays broken
    with pytest.raises(LocalProtocolError):
        p.quit()


def test_reply_line_limit():
    ok = b"#1 " + b"x" * (MAX_REPLY - 5) + b"\r\n"
    assert len(ok) == MAX_REPLY
    assert feed(at("helo-sent"), ok) == [Count(1, "x" * (MAX_REPLY - 5))]
    with pytest.raises(RemoteProtocolError):
        feed(at("helo-sent"), b"#1 " + b"x" * (MAX_REPLY - 4) + b"\r\n")


def test_reply_line_limit_without_line_end():
    p = at("helo-sent")
    assert feed(p, b"#1 " + b"x" * (MAX_REPLY - 4)) == []
    with pytest.raises(RemoteProtocolError):
        feed(p, b"x")


def test_unsolicited_error_is_delivered():
    p = at("nmbr")
    assert feed(p, b"- Autologout; idle for too long\r\n") == [
        Error("Autologout; idle for too long")]
    assert p.state is State.EXIT
    with pytest.raises(LocalProtocolError):
        p.read()


def test_unsolicited_reply_waits_for_a_command():
    p = at("nmbr")
    assert feed(p, b"=9\r\n") == []
    p.read()
    assert events(p) == [Length(9, "")]


def test_close_in_the_middle_of_data():
    p = at("size")
    p.retr()
    assert feed(p, b"ab") == [Data(b"ab")]
    assert feed(p, b"") == [Closed()]
    assert p.state is State.EXIT
    assert p.next_event() == Closed()


def test_close_in_the_middle_of_a_reply():
    p = at("helo-sent")
    assert feed(p, b"#1") == []
    assert feed(p, b"") == [Closed()]


def test_close_while_waiting_for_greeting():
    assert feed(ClientProtocol(), b"") == [Closed()]


def test_data_after_end_of_stream_refused():
    p = at("nmbr")
    p.receive_data(b"")
    p.receive_data(b"")  # repeated end of stream is harmless
    with pytest.raises(LocalProtocolError):
        p.receive_data(b"x")


def test_need_data_repr():
    assert repr(NEED_DATA) == "NEED_DATA"
    assert ClientProtocol().next_event() is NEED_DATA


# -- the wrappers against a scripted in-test server --------------------------------------

def scripted(answers: list[bytes], greeting: bytes = GREETING, drain: bool = False) -> ScriptedServer:
    """A scripted POP2 server on 127.0.0.1 that records each line the client sends.

    After the greeting, each line received is answered with the next reply of the script.
    When the script is used up the server closes, or with drain=True first reads until
    the client closes.
    """
    return ScriptedServer(replies(answers, greeting, drain))


@pytest.fixture
async def serve():
    servers = []

    async def start(server: ScriptedServer) -> int:
        servers.append(server)
        return server.port

    yield start
    for server in servers:
        await asyncio.to_thread(server.wait_done, 5)
        server.close()


async def finished(server: ScriptedServer) -> None:
    await asyncio.to_thread(server.wait_done, 5)


FULL_REPLIES = [
    b"#2 messages in INBOX\r\n",
    b"#2 messages in My Mail\r\n",
    b"=%d characters in message 1\r\n" % len(MESSAGE),
    MESSAGE,
    b"=3 characters in message 2\r\n",
    b"=3 characters in message 2\r\n",
    b"xyz",
    b"=3 characters in message 2\r\n",
    b"abc",
    b"=0 no more messages\r\n",
    b"+ OK\r\n",
]
FULL_SENT = [
    b"HELO joe\\ q pass\\ word\\\\x\r\n",
    b"FOLD My\\ Mail\r\n",
    b"READ 1\r\n",
    b"RETR\r\n",
    b"ACKD\r\n",
    b"READ\r\n",
    b"RETR\r\n",
    b"NACK\r\n",
    b"RETR\r\n",
    b"ACKS\r\n",
    b"QUIT\r\n",
]


async def test_async_full_session(serve):
    script = scripted(FULL_REPLIES)
    port = await serve(script)
    client = await AsyncClient.connect("127.0.0.1", port, timeout=5)
    assert client.greeting == Greeting("POP2 mail.example pop2gate server ready",
                                       "mail.example")
    assert await client.helo("joe q", "pass word\\x") == 2
    assert await client.fold("My Mail") == 2
    assert await client.read(1) == len(MESSAGE)
    assert await client.retr() == MESSAGE
    assert await client.ackd() == 3
    assert await client.read() == 3
    assert await client.retr() == b"xyz"
    assert await client.nack() == 3
    out = io.BytesIO()
    assert await client.retr_to(out) == 3
    assert out.getvalue() == b"abc"
    assert await client.acks() == 0
    assert await client.quit() == "OK"
    await finished(script)
    assert script.received == FULL_SENT


async def test_async_from_streams(serve):
    script = scripted([b"#0\r\n", b"+ OK\r\n"])
    port = await serve(script)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    async with await AsyncClient.from_streams(reader, writer, timeout=5) as client:
        assert client.greeting.host == "mail.example"
        assert await client.helo("u", "p") == 0
        assert await client.quit() == "OK"
    await finished(script)
    assert script.received == [b"HELO u p\r\n", b"QUIT\r\n"]


async def test_async_error_reply(serve):
    script = scripted([b"- Bad login\r\n"])
    port = await serve(script)
    client = await AsyncClient.connect("127.0.0.1", port, timeout=5)
    with pytest.raises(Pop2Error) as info:
        await client.helo("u", "wrong")
    assert info.value.text == "Bad login"
    assert client.protocol.state is State.EXIT
    with pytest.raises(LocalProtocolError):
        await client.quit()
    await client.close()


async def test_async_error_greeting(serve):
    port = await serve(scripted([], greeting=b"- Server busy\r\n"))
    with pytest.raises(Pop2Error, match="Server busy"):
        await AsyncClient.connect("127.0.0.1", port, timeout=5)


async def test_async_close_before_greeting(serve):
    port = await serve(scripted([], greeting=b""))
    with pytest.raises(ConnectionClosed):
        await AsyncClient.connect("127.0.0.1", port, timeout=5)


async def test_async_close_during_data(serve):
    port = await serve(scripted([b"#1\r\n", b"=100\r\n", b"only part"]))
    client = await AsyncClient.connect("127.0.0.1", port, timeout=5)
    await client.helo("u", "p")
    assert await client.read() == 100
    with pytest.raises(ConnectionClosed):
        await client.retr()
    await client.close()


async def test_async_close_instead_of_reply(serve):
    port = await serve(scripted([b"#1\r\n"]))
    client = await AsyncClient.connect("127.0.0.1", port, timeout=5)
    await client.helo("u", "p")
    with pytest.raises(ConnectionClosed):
        await client.read()


async def test_async_idle_logout_surfaces_on_next_command(serve):
    script = scripted([b"#1\r\n- Autologout; idle for too long\r\n"], drain=True)
    port = await serve(script)
    client = await AsyncClient.connect("127.0.0.1", port, timeout=5)
    assert await client.helo("u", "p") == 1
    with pytest.raises(Pop2Error, match="Autologout"):
        await client.read()
    await finished(script)


async def test_async_reply_after_data_in_same_chunk(serve):
    script = scripted([b"#1\r\n", b"=3\r\n", b"abc=0 done\r\n", b"", b"+ OK\r\n"])
    port = await serve(script)
    client = await AsyncClient.connect("127.0.0.1", port, timeout=5)
    await client.helo("u", "p")
    await client.read()
    assert await client.retr() == b"abc"
    assert await client.ackd() == 0
    assert await client.quit() == "OK"
    await finished(script)
    assert script.received[-2:] == [b"ACKD\r\n", b"QUIT\r\n"]


async def test_async_retr_to_streams_in_chunks(serve):
    body = bytes(range(256)) * 8192  # 2 MiB
    port = await serve(scripted([b"#1\r\n", b"=%d\r\n" % len(body), body, b"+ OK\r\n"]))
    writes = []

    class Sink:
        def write(self, chunk):
            writes.append(chunk)

    client = await AsyncClient.connect("127.0.0.1", port, timeout=5)
    await client.helo("u", "p")
    await client.read(1)
    assert await client.retr_to(Sink()) == len(body)
    assert b"".join(writes) == body
    assert len(writes) > 1 and max(map(len, writes)) <= 65536
    await client.close()


async def test_async_timeout(serve):
    port = await serve(scripted([b""], drain=True))  # HELO gets no answer
    client = await AsyncClient.connect("127.0.0.1", port, timeout=0.2)
    with pytest.raises(TimeoutError):
        await client.helo("u", "p")
    await client.close()


async def test_async_local_error_sends_nothing(serve):
    script = scripted([b"#1\r\n"], drain=True)
    port = await serve(script)
    async with await AsyncClient.connect("127.0.0.1", port, timeout=5) as client:
        with pytest.raises(LocalProtocolError):
            await client.retr()
        with pytest.raises(LocalProtocolError):
            await client.helo("u", "bad\r\nQUIT")
        assert await client.helo("u", "p") == 1
    # leaving the block closes the connection without QUIT
    await finished(script)
    assert script.received == [b"HELO u p\r\n"]


# -- the blocking client -----------------------------------------------------------------

def thread_server(answers: list[bytes], greeting: bytes = GREETING) -> tuple[int, ScriptedServer]:
    """A scripted server for the blocking client; returns (port, server)."""
    server = scripted(answers, greeting)
    return server.port, server


def test_blocking_full_session():
    port, server = thread_server(FULL_REPLIES)
    with Client.connect("127.0.0.1", port, timeout=5) as client:
        assert client.greeting.host == "mail.example"
        assert client.helo("joe q", "pass word\\x") == 2
        assert client.fold("My Mail") == 2
        assert client.read(1) == len(MESSAGE)
        assert client.retr() == MESSAGE
        assert client.ackd() == 3
        assert client.read() == 3
        assert client.retr() == b"xyz"
        assert client.nack() == 3
        out = io.BytesIO()
        assert client.retr_to(out) == 3 and out.getvalue() == b"abc"
        assert client.acks() == 0
        assert client.quit() == "OK"
    server.wait_done(5)
    server.close()
    assert server.received == FULL_SENT


def test_blocking_error_and_early_close():
    port, server = thread_server([b"#1\r\n", b"=10\r\n", b"short"])
    client = Client.connect("127.0.0.1", port, timeout=5)
    client.helo("u", "p")
    client.read()
    with pytest.raises(ConnectionClosed):
        client.retr()
    server.wait_done(5)
    server.close()

    port, server = thread_server([b"- Bad login\r\n"])
    with Client.connect("127.0.0.1", port, timeout=5) as client:
        with pytest.raises(Pop2Error, match="Bad login"):
            client.helo("u", "p")
    server.wait_done(5)
    server.close()


def test_blocking_timeout_over_socketpair():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with pytest.raises(TimeoutError):
            Client.from_socket(ours, timeout=0.2)  # no greeting ever comes


def test_blocking_over_socketpair():
    ours, theirs = socket.socketpair()
    with theirs:
        theirs.sendall(b"+ POP2 pair\r\n")
        client = Client.from_socket(ours, timeout=5)
        assert client.greeting == Greeting("POP2 pair", "pair")
        theirs.sendall(b"#4\r\n")  # the reply may arrive before the command is sent
        assert client.helo("a", "b c") == 4
        assert theirs.recv(100) == b"HELO a b\\ c\r\n"
        client.close()


def test_input_while_no_reply_is_due_is_bounded():
    p = at("nmbr")  # the server owes nothing now
    assert feed(p, b"=3\r\n") == []  # kept for later, as before
    p.receive_data(b"x" * MAX_REPLY)
    with pytest.raises(RemoteProtocolError):
        p.next_event()
    assert p.state is State.ERROR


@pytest.mark.parametrize("data,extra", [(b"abc", False), (b"abcd", True), (b"abc=0 early\r\n", True)])
def test_unsolicited_octets_after_retr(data, extra):
    """`Client.unsolicited()`: after RETR, anything beyond the announced octets (a message longer
    than announced, a reply before the ack) is seen without blocking, and the ack is still possible."""
    with scripted([b"#1\r\n", b"=3\r\n", data, b"=0 done\r\n"], drain=True) as srv:
        with Client.connect("127.0.0.1", srv.port, timeout=5) as client:
            client.helo("u", "p")
            client.read()
            assert client.retr() == b"abc"  # the extra octets come in the same send as the data
            assert client.unsolicited() is extra


def test_blocking_client_sends_each_command_at_once():
    """TCP_NODELAY: a command line never waits in the kernel for the ACK of the one before."""
    port, server = thread_server([b"=0\r\n"])
    with Client.connect("127.0.0.1", port, timeout=5) as client:
        assert client._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    server.close()


def test_message_data_is_handed_over_as_received():
    """Octets that are all message data come out as the very object received (no copy); only
    what follows the message in the same read is kept for the reply."""
    p = at("nmbr")
    p.read(1)
    assert feed(p, b"=8000\r\n") == [Length(8000, "")]
    p.retr()
    first, second = b"a" * 5000, b"b" * 3000 + b"=0 done\r\n"
    p.receive_data(first)
    assert p.next_event().data is first
    assert p.buffered == 0
    p.receive_data(second)
    assert p.next_event() == Data(b"b" * 3000) and p.next_event() == DataEnd()
    assert p.buffered == len(b"=0 done\r\n")
    p.acks()
    assert p.next_event() == Length(0, "done")


class _Wire:
    """A socket stand-in for the blocking client: hands out `data`, records each recv size."""

    def __init__(self, data: bytes) -> None:
        self.data, self.asked, self.sent = data, [], b""

    def settimeout(self, timeout: float) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        out, self.data = self.data[:size], self.data[size:]
        return out


def test_blocking_client_reads_message_data_in_large_pieces():
    """RETR of a large message asks the socket for what is due (up to 1 MiB a read), not 64 KiB
    at a time: fewer system calls and events per message."""
    message = b"m" * 3_000_000
    wire = _Wire(b"+ POP2 x\r\n#1\r\n=3000000\r\n" + message + b"=0 done\r\n")
    client = Client.from_socket(wire, timeout=5)  # type: ignore[arg-type]
    client.helo("u", "p")
    client.read()
    assert client.protocol.data_left == 0
    assert client.retr() == message
    assert max(wire.asked) == 1 << 20 and len(wire.asked) <= 6
    assert client.acks() == 0
