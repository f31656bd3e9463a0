"""Property tests: arbitrary bytes never crash the protocol cores or grow their buffers past
one line, and the stored-to-wire conversion does not depend on how the input is split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pop2gate.pop2 import client
from pop2gate.pop2.server import NEED_DATA, ProtocolViolation, ServerProtocol, State
from pop2gate.pop2.wire import MAX_LINE, MAX_REPLY_LINE, Word
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


@settings(max_examples=400, deadline=None)
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


@settings(max_examples=400, deadline=None)
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


@settings(max_examples=300, deadline=None)
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
