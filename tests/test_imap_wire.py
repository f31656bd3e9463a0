"""IMAP wire text (pop2gate.stores.imap.wire): quoting arguments, reading FETCH and LIST responses
(FETCH responses as the server sends them, read by pop2gate.stores.imap.parser)."""

from __future__ import annotations

import pytest

from pop2gate.stores.imap.parser import ResponseReader, Untagged
from pop2gate.stores.imap.wire import (
    ParseError,
    fetch_by_uid,
    list_delimiter,
    personal_namespace,
    quotable,
    quote,
    uid_set,
)


def test_quote_and_uid_set():
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(ValueError):
        quote("a\r\nb")
    with pytest.raises(ValueError):
        quote("\u00e9")
    assert uid_set([9, 1, 2, 3, 7, 10, 2]) == "1:3,7,9:10"
    assert quotable("x y") and not quotable("x\u00e9") and not quotable("x\x7f")


def fetched(*lines: bytes) -> dict:
    """`fetch_by_uid` of FETCH responses (without `* `) as a server sends them."""
    events = ResponseReader(1 << 20).feed(b"".join(b"* " + line + b"\r\n" for line in lines))
    assert all(isinstance(e, Untagged) and e.kind == "FETCH" for e in events)
    return fetch_by_uid(e.parts for e in events if isinstance(e, Untagged))


def test_fetch_responses_matched_by_uid():
    got = fetched(
        b"7 FETCH (FLAGS (\\Seen))",                        # unsolicited, no UID: ignored
        b'1 FETCH (BODY[]<0> {6}\r\nhe")\r\n UID 5)',       # the UID after the literal
        b"2 FETCH (UID 6 RFC822.SIZE 10 FLAGS (\\Seen \\Deleted))",
        b"3 FETCH (UID 9 BODY[] {0}\r\n)",
        b"4 FETCH (UID 10 BODY[] NIL)",
        b'5 FETCH (UID 11 BODY[] "a\\"b")',
    )
    assert got[5]["BODY[]"] == b'he")\r\n'
    assert got[6]["FLAGS"] == ["\\Seen", "\\Deleted"] and got[6]["RFC822.SIZE"] == "10"
    assert got[9]["BODY[]"] == b"" and got[10]["BODY[]"] is None and got[11]["BODY[]"] == b'a"b'
    assert set(got) == {5, 6, 9, 10, 11}


@pytest.mark.parametrize("octets", [b"(", b")", b"()"])
def test_a_string_or_literal_that_looks_like_a_parenthesis_is_a_value(octets):
    """A one-octet message `)` (or the last octets of one) is data, not the end of a list."""
    got = fetched(b"1 FETCH (UID 5 BODY[]<0> {%d}\r\n%s)" % (len(octets), octets))
    assert got[5]["BODY[]"] == octets
    quoted = b'"' + octets + b'"'
    assert fetched(b"1 FETCH (UID 6 BODY[] " + quoted + b")")[6]["BODY[]"] == octets


def test_list_delimiter():
    assert list_delimiter(b'(\\Noselect) "." ""') == "."
    assert list_delimiter(b'(\\Noselect) "/" ""') == "/"
    assert list_delimiter(b'(\\Noselect) NIL ""') is None
    with pytest.raises(ParseError):
        list_delimiter(b'"." ""')


def test_personal_namespace():
    # Courier, and Cyrus in Debian's default layout
    assert personal_namespace(b'(("INBOX." ".")) NIL (("#shared." "."))') == ("INBOX.", ".")
    # Cyrus with altnamespace, Dovecot: no prefix
    assert personal_namespace(b'(("" "/")) (("Other Users/" "/")) (("Shared Folders/" "/"))') == ("", "/")
    assert personal_namespace(b'(("" NIL)) NIL NIL') == ("", None)  # flat
    assert personal_namespace(b'(("~/Mail/" "/")("#mh/" "/")) NIL NIL') == ("~/Mail/", "/")  # the first one
    assert personal_namespace(b"NIL NIL NIL") is None
    for bad in [b'(("INBOX." ".")) NIL', b'("INBOX." ".") NIL NIL', b'(("INBOX.")) NIL NIL',
                b'(("\xc3\x9c" ".")) NIL NIL', b'(("" "..")) NIL NIL', b"((INBOX .)) NIL NIL"]:
        with pytest.raises(ParseError):
            personal_namespace(bad)


def test_fetch_reader_refuses_garbage():
    with pytest.raises(ParseError):
        fetched(b'1 FETCH (UID 5 BODY[] "unterminated)')
    with pytest.raises(ParseError):
        fetched(b"1 FETCH (UID 5 RFC822.SIZE)")  # an item without a value
    with pytest.raises(ParseError):
        fetched(b"1 FETCH (UID 5) (X)")  # more than one item list
    with pytest.raises(ParseError):
        fetched(b'1 FETCH ("UID" 5)')  # an item name that is a string
    with pytest.raises(ParseError):
        fetched(b"1 FETCH (UID x)")  # a UID that is no number
    got = fetched(b'1 FETCH (UID 5 BODY[HEADER.FIELDS (FROM TO)]<0> "x")')
    assert got[5]["BODY[HEADER.FIELDS (FROM TO)]"] == b"x"
