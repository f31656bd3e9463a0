"""The IMAP response reader (pop2gate.stores.imap.parser): events from octets in any pieces,
literals held or streamed, bounds, errors as types."""

from __future__ import annotations

import pytest

from pop2gate.stores.imap.parser import (
    MAX_LINE,
    Continuation,
    LineTooLong,
    LiteralPiece,
    LiteralTooLarge,
    ResponseError,
    ResponseReader,
    Tagged,
    Untagged,
)
from pop2gate.stores.imap.wire import Literal, ParseError

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n"


def test_status_tagged_continuation_and_data():
    events = ResponseReader(100).feed(
        GREETING + b"* 3 EXISTS\r\n* CAPABILITY IMAP4rev1 ID\r\n+ \r\n+ eyJzdGF0dXMiOiI0MDEifQ==\r\n"
        b"A1 NO [UNAVAILABLE] try later\r\nA2 ok done\r\n* BYE [ALERT] going\r\n")
    assert events == [
        Untagged("OK", None, (b"[CAPABILITY IMAP4rev1 SASL-IR] ready",), b"CAPABILITY IMAP4rev1 SASL-IR", b"ready"),
        Untagged("EXISTS", 3, (b"",)),
        Untagged("CAPABILITY", None, (b"IMAP4rev1 ID",)),
        Continuation(b""),
        Continuation(b"eyJzdGF0dXMiOiI0MDEifQ=="),
        Tagged(b"A1", "NO", b"UNAVAILABLE", b"try later"),
        Tagged(b"A2", "OK", b"", b"done"),
        Untagged("BYE", None, (b"[ALERT] going",), b"ALERT", b"going"),
    ]


def test_every_split_gives_the_same_events():
    data = (b"* 1 FETCH (UID 5 BODY[] {13}\r\nline\r\n{3}\r\nxy UID 5)\r\n"
            b"* 2 EXPUNGE\r\nP1 OK [EXPUNGEISSUED] some gone\r\n")
    whole = ResponseReader(100).feed(data)
    assert whole[0] == Untagged("FETCH", 1, (b"(UID 5 BODY[] ", Literal(b"line\r\n{3}\r\nxy"), b" UID 5)"))
    assert whole[1:] == [Untagged("EXPUNGE", 2, (b"",)), Tagged(b"P1", "OK", b"EXPUNGEISSUED", b"some gone")]
    for cut in range(1, len(data)):
        reader = ResponseReader(100)
        assert reader.feed(data[:cut]) + reader.feed(data[cut:]) == whole
    reader = ResponseReader(100)
    assert [e for i in range(len(data)) for e in reader.feed(data[i : i + 1])] == whole
    assert reader.pending == 0


def test_a_literal_over_the_limit_is_refused_before_it_is_read():
    reader = ResponseReader(10)
    with pytest.raises(LiteralTooLarge):
        reader.feed(b"* 1 FETCH (UID 5 BODY[] {11}\r\n")
    assert ResponseReader(11).feed(b"* 1 FETCH (BODY[] {11}\r\n0123456789A)\r\n")[0].parts[1] == Literal(b"0123456789A")
    with pytest.raises(LiteralTooLarge):  # two literals of one response count together
        ResponseReader(10).feed(b"* 1 FETCH (A {6}\r\n012345 B {6}\r\n")


def test_a_streamed_literal_comes_in_pieces_as_fed_and_is_never_held():
    reader = ResponseReader(10, stream_over=4)
    head = b"* 7 FETCH (UID 9 BODY[]<0> {1000}\r\n"
    events = reader.feed(head + b"x" * 300)
    assert events == [LiteralPiece(b"* 7 FETCH (UID 9 BODY[]<0> ", 1000, 0, b"x" * 300)]
    assert reader.pending < 100  # the octets were handed on, not kept
    events = reader.feed(b"y" * 700 + b")\r\nP3 OK done\r\n")
    assert events[0] == LiteralPiece(b"* 7 FETCH (UID 9 BODY[]<0> ", 1000, 300, b"y" * 700)
    assert events[1] == Untagged("FETCH", 7, (b"(UID 9 BODY[]<0> ", Literal(b"", streamed=True), b")"))
    assert events[2] == Tagged(b"P3", "OK", b"", b"done")
    assert reader.feed(b"* 8 FETCH (BODY[] {4}\r\nabcd)\r\n")[0].parts[1] == Literal(b"abcd")  # short: held


def test_line_length_is_bounded_with_or_without_its_end():
    with pytest.raises(LineTooLong):
        ResponseReader(10).feed(b"* OK " + b"x" * MAX_LINE)
    reader = ResponseReader(10)
    reader.feed(b"* OK " + b"x" * (MAX_LINE - 100))  # not too long yet: kept
    with pytest.raises(LineTooLong):
        reader.feed(b"x" * 200 + b"\r\n")
    with pytest.raises(LineTooLong):  # the text of one response counts across its literals
        ResponseReader(10).feed((b"* 1 FETCH (A " + b"x" * 40000 + b" {1}\r\nz") * 2)


@pytest.mark.parametrize("line", [
    b"\r\n", b"*\r\n", b"* \r\n", b"A1\r\n", b"A1 MAYBE text\r\n", b"* 12345678901 EXISTS\r\n",
    b"* 1 (FETCH)\r\n", b"A1 OK {3}\r\nabc\r\n", b"* OK {1}\r\nx\r\n", b"+ {1}\r\nx\r\n", b"* \xff\r\n",
])
def test_garbage_is_a_response_error(line):
    with pytest.raises(ResponseError) as err:
        ResponseReader(10).feed(line)
    assert isinstance(err.value, ParseError)  # one type for everything the server got wrong


def test_status_text_is_never_tokenized():
    """Free text may hold anything a list or string would choke on."""
    [event] = ResponseReader(10).feed(b'* OK [ALERT] it\'s "(unbalanced\r\n')
    assert isinstance(event, Untagged) and event.code == b"ALERT" and event.text == b'it\'s "(unbalanced'
