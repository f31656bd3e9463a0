"""Property tests: arbitrary bytes never crash the protocol cores or grow their buffers past
one line, and the stored-to-wire conversion does not depend on how the input is split.
The config loader and the IMAP response parser turn any input into a value or their own
error. `make fuzz` runs them far longer (tests/fuzzing.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import fuzz
from pop2gate.config import Config, ConfigError, Limits, Routing, ServerSettings, load_config, parse_config
from pop2gate.config_show import toml_string, toml_value
from pop2gate.pop2 import client
from pop2gate.pop2.server import NEED_DATA, ProtocolViolation, ServerProtocol, State
from pop2gate.pop2.wire import MAX_LINE, MAX_REPLY_LINE, Word
from pop2gate.stores.imap.wire import (
    ParseError,
    fetch_by_uid,
    list_delimiter,
    personal_namespace,
    quotable,
    quote,
    uid_set,
)
from pop2gate.stores.registry import BACKENDS
from pop2gate.stores.wireform import CrlfEncoder

COMMANDS = [b"HELO a b", b"FOLD x", b"READ", b"READ 1", b"RETR", b"ACKS", b"ACKD", b"NACK", b"QUIT"]
pieces = st.lists(st.one_of(st.binary(max_size=700), st.sampled_from(COMMANDS).map(lambda c: c + b"\r\n")),
                  max_size=20)
LENGTH = 5


def answer(p: ServerProtocol) -> None:
    """Reply as a session would, so the machine keeps moving through its states."""
    cmd = p.pending
    if cmd in (Word.HELO, Word.FOLD):
        p.send_count(2, "INBOX")
    elif cmd in (Word.READ, Word.ACKS, Word.ACKD, Word.NACK):
        p.send_length(LENGTH, 1)
    elif cmd is Word.RETR:
        p.send_data(b"x" * LENGTH)
        p.end_data()
    else:
        p.send_bye()


@fuzz(400)
@given(pieces)
def test_server_protocol_survives_any_input(chunks):
    p = ServerProtocol()
    for chunk in chunks:
        if p.state is State.DONE:
            break
        p.receive_data(chunk)
        while p.state is not State.DONE:
            event = p.next_event()
            if event is NEED_DATA:
                assert len(p._buffer) < MAX_LINE  # never more than one unfinished line held
                break
            if isinstance(event, ProtocolViolation):
                assert p.state is State.DONE
                assert event.reply.startswith(b"- ") and event.reply.endswith(b"\r\n")
                assert event.reply.count(b"\r\n") == 1
                assert len(p._buffer) == 0
                break
            answer(p)
            assert p.pending is None


def client_in(state: client.State) -> client.ClientProtocol:
    """A client core driven into `state` by a well-behaved server."""
    p = client.ClientProtocol()
    steps = {
        client.State.CALL: [],
        client.State.NMBR: [b"+ POP2 h ready\r\n", p.helo, b"#2\r\n"],
        client.State.SIZE: [b"+ POP2 h ready\r\n", p.helo, b"#2\r\n", p.read, b"=4\r\n"],
        client.State.XFER: [b"+ POP2 h ready\r\n", p.helo, b"#2\r\n", p.read, b"=4\r\n", p.retr],
        client.State.EXIT: [b"+ POP2 h ready\r\n", p.quit],
        client.State.ERROR: [b"?\r\n"],
    }[state]
    for step in steps:
        if isinstance(step, bytes):
            p.receive_data(step)
            try:
                while not isinstance(p.next_event(), client.NeedData):
                    pass
            except client.RemoteProtocolError:
                pass
        elif step == p.helo:
            p.helo("u", "p")
        else:
            step()
    assert p.state is state
    return p


@fuzz(400)
@given(st.lists(st.one_of(st.binary(max_size=1500), st.sampled_from([b"#1\r\n", b"=3\r\n", b"+ OK\r\n", b"abc"])),
                max_size=12), st.sampled_from(list(client.State)))
def test_client_protocol_survives_any_reply(chunks, state):
    p = client_in(state)
    try:
        for chunk in chunks:
            p.receive_data(chunk)
            while (event := p.next_event()) is not client.NEED_DATA:
                if isinstance(event, client.Closed):
                    return
            # waiting for more: never more than one reply line's worth held
            assert len(p._buf) <= MAX_REPLY_LINE
    except (client.RemoteProtocolError, client.LocalProtocolError):
        return


@fuzz(300)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=40))
def test_crlf_encoder_is_split_invariant(data, cuts):
    def run(sizes):
        enc, out, i = CrlfEncoder(), b"", 0
        for size in sizes:
            out += enc.feed(data[i : i + size])
            i += size
        return out + enc.feed(data[i:]) + enc.finish()

    whole = run([len(data)])
    assert run(cuts) == whole
    assert b"\n" not in whole.replace(b"\r\n", b"")  # every LF is part of a CRLF
    assert whole == b"" or whole.endswith(b"\r\n")


# --- the config loader: a Config or a ConfigError, nothing else ---------------------------

SECTIONS = {"server": ServerSettings, "limits": Limits, "routing": Routing}
KEYS = sorted({*SECTIONS, "backend", *Config.model_fields, *(k for m in SECTIONS.values() for k in m.model_fields),
               *(k for t in BACKENDS.values() for k in t.model.model_fields)})
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)  # TOML can hold any but surrogates
keys = st.one_of(st.sampled_from(KEYS), texts)
scalars = st.one_of(
    st.booleans(), st.integers(), st.floats(allow_nan=False), texts,
    st.sampled_from(["127.0.0.1:0", "[::1]:109", "0.0.0.0:99999", "imap://127.0.0.1", "imaps://h:993",
                     "imap://u@h/x?y", "maildir", "imap", "none", "starttls", "implicit", "local", "mail",
                     "nobody", "root", "/tmp", "/nonexistent", "10.0.0.0/8", ""]),
)
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=4),
                      max_leaves=12)


def valid_config() -> dict:
    return {
        "server": {"hostname": "h", "listen": ["127.0.0.1:1109"]},
        "limits": {"login_timeout": 10},
        "backend": [{"name": "local", "type": "maildir", "path": "/tmp/m", "users_file": "/tmp/u"},
                    {"name": "mail", "type": "imap", "url": "imaps://imap.example.org"}],
        "routing": {"default": "local", "users": {"bob": "mail"}},
    }


@st.composite
def mutated_configs(draw) -> dict:
    """A valid config with a few keys replaced, removed or added, anywhere in it."""
    data = valid_config()
    for _ in range(draw(st.integers(0, 4))):
        node: dict | list = data
        while True:
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            child = node[key]
            if isinstance(child, (dict, list)) and child and draw(st.booleans()):
                node = child
                continue
            break
        op = draw(st.sampled_from(["set", "delete", "add"]))
        if op == "delete":
            del node[key]
        elif op == "set":
            node[key] = draw(values)
        elif isinstance(node, dict):
            node[draw(keys)] = draw(values)
        else:
            node.append(draw(values))
        if not node:
            break
    return data


def to_toml(data: dict) -> str:
    """A TOML document that tomllib reads back as `data`: scalars first, then one table per dict."""
    lines = [f"{toml_string(k)} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"[{toml_string(k)}]")
            lines += [f"{toml_string(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def outcome(load):
    """What a loader gave: the Config, or the ConfigError's class. Any other exception escapes."""
    try:
        return load()
    except ConfigError as err:
        assert str(err)  # it names what is wrong
        return ConfigError
    except RecursionError:  # pytest would take minutes to print its thousand frames
        raise AssertionError("RecursionError escaped") from None


@fuzz(150)
@given(st.one_of(mutated_configs(), st.dictionaries(keys, values, max_size=5), values,
                 st.dictionaries(st.integers() | st.none(), values, max_size=3)))
def test_parse_config_gives_config_or_config_error(data):
    assert isinstance(outcome(lambda: parse_config(data)), Config | type)


# What tomllib or a text editor may make of a file; the large ones are the ones that slipped through.
text_damage = st.one_of(
    st.binary(max_size=8),
    st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\r", b"\n[server]\n", b"\n[[backend]]\n", b" = ", b"\"",
                     b"'''", b"[", b"{", b"#"]),
    st.integers(1, 3000).map(lambda n: b"x = " + b"[" * n + b"]" * n + b"\n"),
    st.integers(1, 3000).map(lambda n: b"x = " + b"{a = " * n + b"1" + b"}" * n + b"\n"),
    st.integers(4000, 6000).map(lambda n: b"\nx = " + b"9" * n + b"\n"),
)


@fuzz(150)
@given(st.one_of(mutated_configs(), st.dictionaries(st.sampled_from(KEYS), values, max_size=4)),
       st.lists(st.tuples(st.floats(0, 1), text_damage), max_size=3))
def test_load_config_gives_config_or_config_error(tmp_path_factory, data, damage):
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    text = to_toml(data).encode()
    for where, piece in damage:
        at = int(where * len(text))
        text = text[:at] + piece + text[at:]
    path.write_bytes(text)
    loaded = outcome(lambda: load_config(path))
    if not damage:  # the file says what the dict says
        assert loaded == outcome(lambda: parse_config(data))


# --- IMAP responses: parsed values or ParseError, nothing else -----------------------------

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


def expected_value(v):
    kind, x = v
    if kind == "num":
        return str(x)
    if kind == "list":
        return [expected_value(k) for k in x]
    return x  # atom text, None, octets


def render(value, text: bytearray, pieces: list) -> bytearray:
    """Append `value` as IMAP text; a literal closes the piece as imaplib does: (text with {n}, octets)."""
    kind, x = value
    if kind == "num":
        text += str(x).encode()
    elif kind == "atom":
        text += x.encode()
    elif kind == "nil":
        text += b"NIL"
    elif kind == "quoted":
        text += b'"' + x.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    elif kind == "literal":
        pieces.append((bytes(text) + b"{%d}" % len(x), x))
        text = bytearray()
    else:
        text += b"("
        for i, kid in enumerate(x):
            if i:
                text += b" "
            text = render(kid, text, pieces)
        text += b")"
    return text


def imaplib_pieces(resps) -> list:
    pieces: list = []
    for seq, items in resps:
        text = bytearray(b"%d (" % seq)
        for i, (name, value) in enumerate(items):
            text += (b" " if i else b"") + name.encode() + b" "
            text = render(value, text, pieces)
        pieces.append(bytes(text + b")"))
    return pieces


def item_key(name: str) -> str:
    name = name.upper()
    return name[: name.index("<")] if name.startswith("BODY[") and "<" in name else name


@fuzz(150)
@given(responses)
def test_fetch_responses_read_back(resps):
    """What a server sends (as imaplib hands it over) is read back item by item, keyed by UID."""
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
    assert parsed_or_parse_error(fetch_by_uid, imaplib_pieces(resps)) == want


def parsed_or_parse_error(fn, *args):
    try:
        return fn(*args)
    except ParseError:
        return ParseError
    except RecursionError:  # pytest would take minutes to print its thousand frames
        raise AssertionError("RecursionError escaped") from None


damage = st.one_of(
    st.binary(min_size=1, max_size=6),
    st.sampled_from([b"(", b")", b'"', b"\\", b"{", b"[", b"]", b"<", b" ", b"NIL", b"\xff", b"\x00"]),
    st.integers(1, 3000).map(lambda n: b"(" * n),
    st.integers(4000, 6000).map(lambda n: b"9" * n),
)


@fuzz(200)
@given(responses, st.lists(st.tuples(st.integers(0, 50), st.floats(0, 1), damage), max_size=4),
       st.lists(st.integers(0, 50), max_size=2))
def test_damaged_fetch_responses_parse_or_raise_parse_error(resps, edits, drops):
    pieces = imaplib_pieces(resps)
    for which, where, piece in edits:
        if not pieces:
            break
        i = which % len(pieces)
        text = pieces[i][0] if isinstance(pieces[i], tuple) else pieces[i]
        at = int(where * len(text))
        text = text[:at] + piece + text[at:]
        pieces[i] = (text, pieces[i][1]) if isinstance(pieces[i], tuple) else text
    for which in drops:
        if pieces:
            del pieces[which % len(pieces)]
    got = parsed_or_parse_error(fetch_by_uid, pieces)
    assert got is ParseError or isinstance(got, dict)


@fuzz(200)
@given(st.lists(st.one_of(st.binary(max_size=200), st.tuples(st.binary(max_size=40), st.binary(max_size=40)),
                          st.none(), damage), max_size=5))
def test_any_fetch_pieces_parse_or_raise_parse_error(pieces):
    got = parsed_or_parse_error(fetch_by_uid, pieces)
    assert got is ParseError or isinstance(got, dict)


@fuzz(200)
@given(st.one_of(st.binary(max_size=200), damage,
                 st.tuples(st.sampled_from([b"()", b"(\\Noselect)", b"(\\HasChildren \\X)"]),
                           st.one_of(st.binary(max_size=3).map(lambda b: b'"' + b + b'"'), st.just(b"NIL")),
                           st.binary(max_size=10)).map(b" ".join)))
def test_list_lines_parse_or_raise_parse_error(line):
    got = parsed_or_parse_error(list_delimiter, line)
    assert got is ParseError or got is None or (isinstance(got, str) and len(got) == 1)


_ns_string = st.one_of(st.binary(max_size=4).map(lambda b: b'"' + b + b'"'), st.just(b"NIL"))
_ns_one = st.tuples(_ns_string, _ns_string).map(lambda t: b"(" + b" ".join(t) + b")")
_ns_list = st.one_of(st.just(b"NIL"),
                     st.lists(_ns_one, min_size=1, max_size=2).map(lambda x: b"(" + b"".join(x) + b")"))


@fuzz(200)
@given(st.one_of(st.binary(max_size=200), damage, st.lists(_ns_list, min_size=2, max_size=4).map(b" ".join)))
def test_namespace_lines_parse_or_raise_parse_error(line):
    got = parsed_or_parse_error(personal_namespace, line)
    assert got is ParseError or got is None or (
        isinstance(got, tuple) and isinstance(got[0], str) and (got[1] is None or len(got[1]) == 1))


@fuzz(200)
@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
       st.lists(st.integers(1, 2**32 - 1), max_size=30))
def test_quoted_strings_and_uid_sets_read_back(text, uids):
    assert quotable(text)
    got = fetch_by_uid([b"1 (UID 7 X " + quote(text).encode("ascii") + b")"])
    assert got == {7: {"UID": "7", "X": text.encode("ascii")}}
    spans = [part.split(":") for part in uid_set(uids).split(",") if part]
    assert {n for span in spans for n in range(int(span[0]), int(span[-1]) + 1)} == set(uids)
