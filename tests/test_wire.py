"""The POP2 grammar (pop2/wire.py), and the round trip: what one role writes, the other reads."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pop2gate.pop2 import client
from pop2gate.pop2.server import ServerProtocol
from pop2gate.pop2.wire import (
    MAX_LINE,
    BadCommand,
    Fold,
    Helo,
    InvalidFolderName,
    LocalProtocolError,
    Read,
    Reason,
    RemoteProtocolError,
    Reply,
    Retr,
    Word,
    folder_levels,
    greeting,
    greeting_host,
    parse_command,
    parse_reply,
    quote,
    split_line,
    unquote,
)

# any text a user could type: no control characters (the grammar refuses them), no lone surrogates
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="".join(
    map(chr, [*range(0x20), 0x7F]))), min_size=1, max_size=120)


def server_reads(line: bytes, *, after: list[bytes] = ()) -> object:
    """What a server core in the right state makes of `line` (sent after the lines `after`)."""
    p = ServerProtocol()
    for earlier in after:
        p.receive_data(earlier)
        p.next_event()
        if p.pending is Word.HELO:
            p.send_count(1, "INBOX")
    p.receive_data(line)
    return p.next_event()


# -- the client writes, the server reads ------------------------------------------------


def greeted() -> client.ClientProtocol:
    p = client.ClientProtocol()
    p.receive_data(b"+ POP2 h pop2gate server ready\r\n")
    p.next_event()
    return p


def logged_in() -> client.ClientProtocol:
    p = greeted()
    p.helo("u", "p")
    p.receive_data(b"#1\r\n")
    p.next_event()
    return p


@settings(max_examples=300, deadline=None)
@given(text, text)
def test_helo_round_trip(user, password):
    try:
        line = greeted().helo(user, password)
    except LocalProtocolError:
        assume(False)  # longer than a command line: the client refuses to send it
    assert len(line) <= MAX_LINE
    assert server_reads(line) == Helo(user, password)


@settings(max_examples=300, deadline=None)
@given(text)
def test_fold_round_trip(name):
    try:
        line = logged_in().fold(name)
    except LocalProtocolError:
        assume(False)
    event = server_reads(line, after=[b"HELO u p\r\n"])
    try:
        folder_levels(name)
    except InvalidFolderName:
        assert event.reason is Reason.BAD_FOLDER  # sent as written, refused by the server's rule
    else:
        assert event == Fold(name)


@given(st.one_of(st.none(), st.integers(min_value=0, max_value=10**30)))
def test_read_round_trip(n):
    assert server_reads(logged_in().read(n), after=[b"HELO u p\r\n"]) == Read(n)


def test_client_methods_write_the_commands_lines():
    assert greeted().helo("a b", "c\\d") == Helo("a b", "c\\d").line() == b"HELO a\\ b c\\\\d\r\n"
    assert logged_in().fold("x y") == Fold("x y").line() == b"FOLD x\\ y\r\n"


# -- the server writes, the client reads -------------------------------------------------


def client_after(*replies: bytes, commands: tuple[str, ...] = ()) -> client.ClientProtocol:
    p = client.ClientProtocol()
    for reply, command in zip(replies, ("", *commands), strict=False):
        if command:
            getattr(p, command)(*(["u", "p"] if command == "helo" else []))
        p.receive_data(reply)
        p.next_event()
    return p


def one_event(p: client.ClientProtocol, data: bytes) -> object:
    p.receive_data(data)
    return p.next_event()


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=60),
       st.one_of(st.none(), st.from_regex(r"\A[0-9][0-9.a-z]{0,10}\Z")))
def test_greeting_round_trip(host, version):
    line = ServerProtocol().greeting(host, version)
    event = one_event(client.ClientProtocol(), line)
    assert isinstance(event, client.Greeting)
    assert event.host == host
    assert event.text == greeting(host, version).text


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10**9), text)
def test_count_round_trip(n, folder):
    s = ServerProtocol()
    s.receive_data(b"HELO u p\r\n")
    s.next_event()
    line = s.send_count(n, folder)
    p = client_after(b"+ POP2 h x\r\n")
    p.helo("u", "p")
    event = one_event(p, line)
    assert isinstance(event, client.Count) and event.n == n
    assert folder.strip() in event.text


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10**9))
def test_length_round_trip(c, n):
    s = ServerProtocol()
    for line in (b"HELO u p\r\n", b"READ\r\n"):
        s.receive_data(line)
        s.next_event()
        if s.pending is Word.HELO:
            s.send_count(1, "INBOX")
    reply = s.send_length(c, n)
    p = client_after(b"+ POP2 h x\r\n", b"#1\r\n", commands=("helo",))
    p.read()
    event = one_event(p, reply)
    assert event == client.Length(c, f"characters in message {n}" if c else f"no message {n}")
    assert p.length == c


@pytest.mark.parametrize("reason", list(Reason))
def test_every_error_reply_reads_back(reason):
    line = ServerProtocol().send_error(reason, Word.FOLD)
    event = one_event(client_after(b"+ POP2 h x\r\n"), line)
    assert event == client.Error(reason.value.format(command="FOLD"))


def test_bye_reads_back():
    s = ServerProtocol()
    s.receive_data(b"QUIT\r\n")
    s.next_event()
    p = client_after(b"+ POP2 h x\r\n")
    p.quit()
    assert one_event(p, s.send_bye()) == client.Ok("OK")


# -- the grammar's pieces ------------------------------------------------------------------


@given(text)
def test_quote_then_unquote_is_identity(arg):
    assert unquote(quote(arg, "arg").decode("utf-8", "surrogateescape")) == arg


@pytest.mark.parametrize("arg", ["", "a\rb", "a\x00", "\x7f"])
def test_quote_refuses_empty_and_controls(arg):
    with pytest.raises(LocalProtocolError):
        quote(arg, "arg")


def test_command_line_limit_is_the_same_for_both_roles():
    room = MAX_LINE - len(b"FOLD \r\n")
    assert len(Fold("x" * room).line()) == MAX_LINE
    with pytest.raises(LocalProtocolError):
        Fold("x" * (room + 1)).line()


@pytest.mark.parametrize("raw, expected", [
    (b"RETR", Retr()),
    (b"retr", Retr()),
    (b"READ 7", Read(7)),
    (b"FOLD a/b", Fold("a/b")),
])
def test_parse_command(raw, expected):
    assert parse_command(raw) == expected


@pytest.mark.parametrize("raw, reason", [
    (b"XYZZY", Reason.UNKNOWN),
    (b"READ 1 2", Reason.EXTRA_ARG),
    (b"FOLD ../x", Reason.BAD_FOLDER),
    (b"HELO a", Reason.MISSING_ARG),
    (b"HELO a\x01 b", Reason.BAD_CHAR),
])
def test_parse_command_refusals(raw, reason):
    result = parse_command(raw)
    assert isinstance(result, BadCommand) and result.reason is reason


def test_split_line():
    assert split_line(b"READ\r\nRETR", 512) == (b"READ", 6)
    assert split_line(b"READ\nRETR", 512) == (b"READ", 5)
    assert split_line(b"READ", 512) is None
    assert split_line(b"x" * 600 + b"\n", 512) is None  # the end is past the limit


@pytest.mark.parametrize("line, reply", [
    (b"+ OK", Reply("+", "OK")),
    (b"- Bad login", Reply("-", "Bad login")),
    (b"#3 messages in INBOX", Reply("#", "messages in INBOX", 3)),
    (b"# 3", Reply("#", "", 3)),
    (b"=0 no message 9", Reply("=", "no message 9", 0)),
    (b"=12", Reply("=", "", 12)),
])
def test_parse_reply(line, reply):
    assert parse_reply(line) == reply
    assert parse_reply(reply.line().rstrip(b"\r\n")) == reply


@pytest.mark.parametrize("line", [b"", b"OK", b"#", b"#x", b"=12x", b"#" + b"9" * 21])
def test_parse_reply_refusals(line):
    with pytest.raises(RemoteProtocolError):
        parse_reply(line)


def test_greeting_host():
    assert greeting_host("POP2 mail.example pop2gate server ready") == "mail.example"
    assert greeting_host("POP2") is None
    assert greeting_host("hello") is None


@pytest.mark.parametrize("name", ["", "/etc", "{x}INBOX", "a//b", "a/./b", "..", "a/..", "a\x00", "a\udc80"])
def test_folder_levels_refuses(name):
    with pytest.raises(InvalidFolderName):
        folder_levels(name)


def test_folder_levels():
    assert folder_levels("Archive/2024") == ["Archive", "2024"]
    assert folder_levels("Übersicht") == ["Übersicht"]


@pytest.mark.parametrize("reply", [
    Reply("=", "no message " + "9" * 505, 0),
    Reply("#", "messages in " + "ü" * 300, 3),
    Reply("-", "x" * 600),
])
def test_no_reply_is_longer_than_a_line(reply):
    line = reply.line()
    assert len(line) <= MAX_LINE and line.endswith(b"\r\n") and line.count(b"\r\n") == 1
    back = parse_reply(line.rstrip(b"\r\n"))
    assert back.kind == reply.kind and back.number == reply.number
    assert back.text.endswith("...") and reply.text.startswith(back.text[:-3])
