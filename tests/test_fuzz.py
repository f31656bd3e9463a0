"""Property tests: arbitrary bytes never crash the protocol cores or grow their buffers past
one line, and the stored-to-wire conversion does not depend on how the input is split.
The config loader turns any input into a value or its own error (the IMAP response reader's
targets are in test_imap_fuzz.py). `make fuzz` runs them far longer (tests/fuzzing.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import fuzz
from pop2gate.config import Config, ConfigError, Limits, Routing, ServerSettings, load_config, parse_config
from pop2gate.config_show import toml_string, toml_value
from pop2gate.pop2 import client
from pop2gate.pop2.server import NEED_DATA, ProtocolViolation, ServerProtocol, State
from pop2gate.pop2.wire import MAX_LINE, MAX_REPLY_LINE, Word
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
