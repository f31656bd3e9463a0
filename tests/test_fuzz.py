"""Property tests: arbitrary bytes never crash the protocol cores or grow their buffers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pop2gate.pop2 import client
from pop2gate.pop2.server import MAX_LINE, NEED_DATA, ProtocolViolation, ServerProtocol, State
from pop2gate.stores.wireform import CrlfEncoder

COMMANDS = [b"HELO a b", b"FOLD x", b"READ", b"READ 1", b"RETR", b"ACKS", b"ACKD", b"NACK", b"QUIT"]
pieces = st.lists(st.one_of(st.binary(max_size=700), st.sampled_from(COMMANDS).map(lambda c: c + b"\r\n")),
                  max_size=20)


def answer(p: ServerProtocol) -> None:
    """Reply as a session would, so the machine keeps moving through its states."""
    cmd = p.pending
    if cmd.value in ("HELO", "FOLD"):
        p.reply_count(2, "INBOX")
    elif cmd.value in ("READ", "ACKS", "ACKD", "NACK"):
        p.reply_length(5, 1)
    elif cmd.value == "RETR":
        p.start_data()
    else:
        p.reply_bye()


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
                assert len(p._buffer) < MAX_LINE
                break
            if isinstance(event, ProtocolViolation):
                assert p.state is State.DONE
                assert event.reply.startswith(b"- ") and event.reply.endswith(b"\r\n")
                assert event.reply.count(b"\r\n") == 1
                break
            answer(p)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=10), st.sampled_from(list(client.State)))
def test_client_protocol_survives_any_reply(chunks, state):
    p = client.ClientProtocol()
    p.state = state
    try:
        for chunk in chunks:
            p.receive_data(chunk)
            while (event := p.next_event()) is not client.NEED_DATA:
                if isinstance(event, client.Closed):
                    return
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

