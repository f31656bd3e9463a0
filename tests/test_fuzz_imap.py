"""Property tests of the IMAP response reader (pop2gate.stores.imap.parser) and the wire text
helpers: what a server sends reads back the same however the octets are split, and any octets
become events or a ParseError (the reader's ResponseError is one), nothing else, with nothing
held past the bounds. `make fuzz` runs them far longer (tests/fuzzing.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import fuzz
from pop2gate.stores.imap.parser import MAX_LINE, LiteralPiece, ResponseReader, Untagged
from pop2gate.stores.imap.wire import (
    ParseError,
    fetch_by_uid,
    list_delimiter,
    personal_namespace,
    quotable,
    quote,
    uid_set,
)

MAX_LITERAL = 4096  # more than all the literals one generated response holds

ATOM_START = "ABCNILSUabcnils\\$.-"
atoms = st.tuples(st.sampled_from(ATOM_START), st.text(ATOM_START + "0123456789", max_size=8)).map("".join).filter(
    lambda a: a.upper() != "NIL")
quoted_octets = st.binary(max_size=20).map(lambda b: bytes(c for c in b if c not in b"\r\n" and c < 0x80))
imap_values = st.recursive(
    st.one_of(
        st.integers(0, 2**32 - 1).map(lambda n: ("num", n)),
        atoms.map(lambda a: ("atom", a)),
        st.just(("nil", None)),
        quoted_octets.map(lambda b: ("quoted", b)),
        st.binary(max_size=30).map(lambda b: ("literal", b)),
    ),
    lambda kids: st.lists(kids, max_size=4).map(lambda xs: ("list", xs)),
    max_leaves=10,
)
item_names = st.one_of(st.sampled_from(["UID", "RFC822.SIZE", "FLAGS", "BODY[]", "BODY[]<0>", "body[]<12>",
                                        "BODY[HEADER.FIELDS (FROM TO)]"]), atoms)
responses = st.lists(
    st.tuples(st.integers(0, 2**32 - 1),
              st.lists(st.one_of(st.tuples(st.just("UID"), st.integers(0, 2**32 - 1).map(lambda n: ("num", n))),
                                 st.tuples(item_names, imap_values)), max_size=5)),
    max_size=4,
)
cuts = st.lists(st.integers(0, 5000), max_size=8)


def expected_value(v):
    kind, x = v
    if kind == "num":
        return str(x)
    if kind == "list":
        return [expected_value(k) for k in x]
    return x  # atom text, None, octets


def render(value) -> bytes:
    """`value` as a server writes it: a literal is `{n}` CRLF and its octets."""
    kind, x = value
    if kind == "num":
        return str(x).encode()
    if kind == "atom":
        return x.encode()
    if kind == "nil":
        return b"NIL"
    if kind == "quoted":
        return b'"' + x.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if kind == "literal":
        return b"{%d}\r\n" % len(x) + x
    return b"(" + b" ".join(render(kid) for kid in x) + b")"


def server_octets(resps) -> bytes:
    return b"".join(b"* %d FETCH (" % seq + b" ".join(name.encode() + b" " + render(v) for name, v in items)
                    + b")\r\n" for seq, items in resps)


def item_key(name: str) -> str:
    name = name.upper()
    return name[: name.index("<")] if name.startswith("BODY[") and "<" in name else name


def split(data: bytes, at: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(a % (len(data) + 1) for a in at)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def read_fetches(pieces: list[bytes]) -> dict:
    """The reader's FETCH responses, by UID; ParseError for anything it (or the FETCH reader) refuses."""
    reader = ResponseReader(MAX_LITERAL)
    try:
        events = [e for piece in pieces for e in reader.feed(piece)]
        assert reader.pending <= MAX_LINE + 6 * MAX_LITERAL  # never more than one response's worth
        return fetch_by_uid(e.parts for e in events if isinstance(e, Untagged) and e.kind == "FETCH")
    except ParseError:
        return ParseError  # type: ignore[return-value]
    except RecursionError:  # pytest would take minutes to print its thousand frames
        raise AssertionError("RecursionError escaped") from None


@fuzz(150)
@given(responses, cuts)
def test_fetch_responses_read_back_however_split(resps, at):
    """What a server sends is read back item by item, keyed by UID, in any pieces."""
    want: dict[int, dict] | type[ParseError] = {}
    for _, items in resps:
        data = {item_key(name): expected_value(v) for name, v in items}
        if "UID" not in data:
            continue  # another message's news: not wanted
        uid = data["UID"]
        if not (isinstance(uid, str) and uid.isdigit()):
            want = ParseError  # a UID that is no number
            break
        want.setdefault(int(uid), {}).update(data)
    assert read_fetches(split(server_octets(resps), at)) == want


damage = st.one_of(
    st.binary(min_size=1, max_size=6),
    st.sampled_from([b"(", b")", b'"', b"\\", b"{", b"{3}\r\n", b"{99999}\r\n", b"[", b"]", b"<", b" ", b"NIL",
                     b"\r\n", b"\n", b"* ", b"+ ", b"A1 OK ", b"\xff", b"\x00"]),
    st.integers(1, 3000).map(lambda n: b"(" * n),
    st.integers(4000, 6000).map(lambda n: b"9" * n),
    st.integers(MAX_LINE - 10, MAX_LINE + 10).map(lambda n: b"x" * n),
)


@fuzz(200)
@given(responses, st.lists(st.tuples(st.floats(0, 1), damage), max_size=4), cuts)
def test_damaged_responses_read_or_raise_parse_error(resps, edits, at):
    data = server_octets(resps)
    for where, piece in edits:
        i = int(where * len(data))
        data = data[:i] + piece + data[i:]
    got = read_fetches(split(data, at))
    assert got is ParseError or isinstance(got, dict)


@fuzz(200)
@given(st.lists(st.one_of(st.binary(max_size=200), damage), max_size=6), st.integers(0, 40))
def test_any_octets_become_events_or_a_response_error(pieces, stream_over):
    """Streaming or not: events or a ParseError; a streamed literal's pieces add up to it."""
    reader = ResponseReader(MAX_LITERAL, stream_over=stream_over)
    try:
        for piece in pieces:
            for event in reader.feed(piece):
                if isinstance(event, LiteralPiece):
                    assert event.size > stream_over and 0 <= event.offset < event.size
                    assert 0 < len(event.data) <= event.size - event.offset
            assert reader.pending <= MAX_LINE + MAX_LITERAL + 2
    except ParseError:
        pass


@fuzz(200)
@given(st.one_of(st.binary(max_size=200), damage,
                 st.tuples(st.sampled_from([b"()", b"(\\Noselect)", b"(\\HasChildren \\X)"]),
                           st.one_of(st.binary(max_size=3).map(lambda b: b'"' + b + b'"'), st.just(b"NIL")),
                           st.binary(max_size=10)).map(b" ".join)))
def test_list_lines_parse_or_raise_parse_error(line):
    try:
        got = list_delimiter(line)
    except ParseError:
        return
    assert got is None or (isinstance(got, str) and len(got) == 1)


_ns_string = st.one_of(st.binary(max_size=4).map(lambda b: b'"' + b + b'"'), st.just(b"NIL"))
_ns_one = st.tuples(_ns_string, _ns_string).map(lambda t: b"(" + b" ".join(t) + b")")
_ns_list = st.one_of(st.just(b"NIL"),
                     st.lists(_ns_one, min_size=1, max_size=2).map(lambda x: b"(" + b"".join(x) + b")"))


@fuzz(200)
@given(st.one_of(st.binary(max_size=200), damage, st.lists(_ns_list, min_size=2, max_size=4).map(b" ".join)))
def test_namespace_lines_parse_or_raise_parse_error(line):
    try:
        got = personal_namespace(line)
    except ParseError:
        return
    assert got is None or (isinstance(got, tuple) and isinstance(got[0], str) and (got[1] is None or len(got[1]) == 1))


@fuzz(200)
@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
       st.lists(st.integers(1, 2**32 - 1), max_size=30))
def test_quoted_strings_and_uid_sets_read_back(text, uids):
    assert quotable(text)
    got = read_fetches([b"* 1 FETCH (UID 7 X " + quote(text).encode("ascii") + b")\r\n"])
    assert got == {7: {"UID": "7", "X": text.encode("ascii")}}
    spans = [part.split(":") for part in uid_set(uids).split(",") if part]
    assert {n for span in spans for n in range(int(span[0]), int(span[-1]) + 1)} == set(uids)
