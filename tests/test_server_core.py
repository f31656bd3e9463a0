"""The sans-I/O state machine, cell by cell: every command in every state."""

from __future__ import annotations

import pytest

from pop2gate.pop2.server import NEED_DATA, TABLE, Answer, ProtocolViolation, ServerProtocol, State
from pop2gate.pop2.wire import (
    MAX_LINE,
    Ackd,
    Acks,
    Fold,
    Helo,
    LocalProtocolError,
    Nack,
    Quit,
    Read,
    Reason,
    Retr,
    unquote,
)
from pop2gate.pop2.wire import (
    Word as Command,
)

LIVE_STATES = [State.AUTH, State.MBOX, State.ITEM, State.NEXT]
COMMAND_LINES = {
    Command.HELO: b"HELO user pass\r\n",
    Command.FOLD: b"FOLD Archive\r\n",
    Command.READ: b"READ 1\r\n",
    Command.RETR: b"RETR\r\n",
    Command.ACKS: b"ACKS\r\n",
    Command.ACKD: b"ACKD\r\n",
    Command.NACK: b"NACK\r\n",
    Command.QUIT: b"QUIT\r\n",
}
EXPECTED = {
    # the table of docs/protocol.md "States", written out independently of TABLE
    (State.AUTH, Command.HELO): State.MBOX,
    (State.AUTH, Command.QUIT): State.DONE,
    (State.MBOX, Command.FOLD): State.MBOX,
    (State.MBOX, Command.READ): State.ITEM,
    (State.MBOX, Command.QUIT): State.DONE,
    (State.ITEM, Command.FOLD): State.MBOX,
    (State.ITEM, Command.READ): State.ITEM,
    (State.ITEM, Command.RETR): State.NEXT,
    (State.ITEM, Command.QUIT): State.DONE,
    (State.NEXT, Command.ACKS): State.ITEM,
    (State.NEXT, Command.ACKD): State.ITEM,
    (State.NEXT, Command.NACK): State.ITEM,
}
ANSWERS = {  # docs/protocol.md "Commands": the reply each success sends
    Command.HELO: Answer.COUNT, Command.FOLD: Answer.COUNT, Command.READ: Answer.LENGTH,
    Command.RETR: Answer.DATA, Command.ACKS: Answer.LENGTH, Command.ACKD: Answer.LENGTH,
    Command.NACK: Answer.LENGTH, Command.QUIT: Answer.BYE,
}
LENGTH = 10  # the =c the helpers announce


def in_state(state: State) -> ServerProtocol:
    """A machine driven into `state` the way a session drives it."""
    p = ServerProtocol()
    path = {State.AUTH: [], State.MBOX: [b"HELO u p\r\n"], State.ITEM: [b"HELO u p\r\n", b"READ 1\r\n"],
            State.NEXT: [b"HELO u p\r\n", b"READ 1\r\n", b"RETR\r\n"], State.DONE: [b"QUIT\r\n"]}[state]
    for line in path:
        feed(p, line)
        succeed(p, p.pending)
    assert p.state is state
    return p


def feed(p: ServerProtocol, data: bytes):
    p.receive_data(data)
    return p.next_event()


def succeed(p: ServerProtocol, command: Command) -> bytes:
    """Send the success reply a session would send for `command`."""
    if command in (Command.HELO, Command.FOLD):
        return p.send_count(3, "INBOX")
    if command in (Command.READ, Command.ACKS, Command.ACKD, Command.NACK):
        return p.send_length(LENGTH, 1)
    if command is Command.RETR:
        data = p.send_data(b"x" * p.announced)
        p.end_data()
        return data
    return p.send_bye()


def test_table_matches_spec():
    assert TABLE == {key: (ANSWERS[key[1]], after) for key, after in EXPECTED.items()}


def test_state_is_read_only():
    with pytest.raises(AttributeError):
        ServerProtocol().state = State.ITEM  # type: ignore[misc]


@pytest.mark.parametrize("state", LIVE_STATES, ids=lambda s: s.value)
@pytest.mark.parametrize("command", list(Command), ids=lambda c: c.value)
def test_every_command_in_every_state(state: State, command: Command):
    p = in_state(state)
    event = feed(p, COMMAND_LINES[command])
    if (state, command) in EXPECTED:
        assert not isinstance(event, ProtocolViolation)
        assert p.pending is command
        succeed(p, command)
        assert p.state is EXPECTED[(state, command)]
        assert p.pending is None
    else:
        assert isinstance(event, ProtocolViolation)
        assert event.reason is Reason.WRONG_STATE
        assert event.reply == f"- {command.value} not allowed now\r\n".encode()
        assert p.state is State.DONE


@pytest.mark.parametrize("state", LIVE_STATES, ids=lambda s: s.value)
def test_failure_reply_always_ends(state: State):
    p = in_state(state)
    assert p.send_error(Reason.BAD_LOGIN) == b"- Bad login\r\n"
    assert p.state is State.DONE
    with pytest.raises(LocalProtocolError):
        p.next_event()


def test_events_and_arguments():
    assert feed(in_state(State.AUTH), b"HELO alice secret\r\n") == Helo("alice", "secret")
    assert feed(in_state(State.MBOX), b"FOLD Archive/2024\r\n") == Fold("Archive/2024")
    assert feed(in_state(State.MBOX), b"READ\r\n") == Read(None)
    assert feed(in_state(State.MBOX), b"READ 42\r\n") == Read(42)
    assert feed(in_state(State.ITEM), b"RETR\r\n") == Retr()
    assert feed(in_state(State.NEXT), b"ACKS\r\n") == Acks()
    assert feed(in_state(State.NEXT), b"ACKD\r\n") == Ackd()
    assert feed(in_state(State.NEXT), b"NACK\r\n") == Nack()
    assert feed(in_state(State.ITEM), b"QUIT\r\n") == Quit()


@pytest.mark.parametrize("line", [b"helo a b\r\n", b"Helo a b\r\n", b"hElO a b\r\n"])
def test_commands_case_insensitive(line):
    assert feed(in_state(State.AUTH), line) == Helo("a", "b")


def test_bare_lf_accepted():
    assert feed(in_state(State.AUTH), b"HELO a b\n") == Helo("a", "b")


def test_password_is_rest_of_line_with_quoting():
    assert feed(in_state(State.AUTH), b"HELO bob pass word  x\r\n") == Helo("bob", "pass word  x")
    assert feed(in_state(State.AUTH), b"HELO b\\ ob p\\\\w\\ d\r\n") == Helo("b ob", "p\\w d")
    assert feed(in_state(State.AUTH), b"HELO bob  lead\r\n") == Helo("bob", " lead")


def test_folder_is_rest_of_line_with_quoting():
    assert feed(in_state(State.MBOX), b"FOLD My Folder\r\n") == Fold("My Folder")
    assert feed(in_state(State.MBOX), b"FOLD My\\ F\\\\x\r\n") == Fold("My F\\x")


def test_unquote():
    assert unquote(r"a\ b") == "a b"
    assert unquote(r"a\\b") == "a\\b"
    assert unquote("a\\") == "a\\"
    assert unquote(r"\x") == "x"


def test_utf8_arguments():
    assert feed(in_state(State.MBOX), "FOLD Entwürfe\r\n".encode()) == Fold("Entwürfe")


@pytest.mark.parametrize(
    "state,line,key",
    [
        (State.AUTH, b"HELO\r\n", "missing_arg"),
        (State.AUTH, b"HELO alice\r\n", "missing_arg"),
        (State.AUTH, b"HELO alice \r\n", "missing_arg"),
        (State.MBOX, b"FOLD\r\n", "missing_arg"),
        (State.MBOX, b"FOLD \r\n", "missing_arg"),
        (State.MBOX, b"READ 1 2\r\n", "extra_arg"),
        (State.MBOX, b"READ x\r\n", "not_number"),
        (State.MBOX, b"READ -1\r\n", "not_number"),
        (State.MBOX, b"READ \xd9\xa3\r\n", "not_number"),  # an Arabic-Indic digit is not a number here
        (State.ITEM, b"RETR 1\r\n", "extra_arg"),
        (State.NEXT, b"ACKS now\r\n", "extra_arg"),
        (State.NEXT, b"ACKD 1\r\n", "extra_arg"),
        (State.NEXT, b"NACK x\r\n", "extra_arg"),
        (State.MBOX, b"QUIT now\r\n", "extra_arg"),
        (State.AUTH, b"USER alice\r\n", "unknown"),
        (State.AUTH, b"\r\n", "unknown"),
        (State.AUTH, b"HELO a\x00b c\r\n", "bad_char"),
        (State.AUTH, b"HELO a\rb c\r\n", "bad_char"),
        (State.AUTH, b"HELO a\tb c\r\n", "bad_char"),
        (State.AUTH, b"HELO a b\x7f\r\n", "bad_char"),
    ],
)
def test_malformed(state, line, key):
    p = in_state(state)
    event = feed(p, line)
    assert isinstance(event, ProtocolViolation), event
    assert event.reason is Reason[key.upper()]
    assert event.reply.startswith(b"- ") and event.reply.endswith(b"\r\n")
    assert p.state is State.DONE


def test_trailing_spaces_tolerated_on_bare_commands():
    assert feed(in_state(State.MBOX), b"READ 3 \r\n") == Read(3)
    assert feed(in_state(State.MBOX), b"QUIT  \r\n") == Quit()


def test_line_of_exactly_512_octets_is_accepted():
    line = b"HELO alice " + b"p" * (MAX_LINE - len(b"HELO alice ") - 2) + b"\r\n"
    assert len(line) == MAX_LINE
    event = feed(in_state(State.AUTH), line)
    assert isinstance(event, Helo)


def test_line_of_513_octets_is_too_long():
    line = b"HELO alice " + b"p" * (MAX_LINE - len(b"HELO alice ") - 1) + b"\r\n"
    assert len(line) == MAX_LINE + 1
    p = in_state(State.AUTH)
    event = feed(p, line)
    assert isinstance(event, ProtocolViolation) and event.reason is Reason.TOO_LONG
    assert event.reply == b"- Command line too long\r\n"


def test_long_line_detected_without_waiting_for_its_end():
    p = in_state(State.AUTH)
    p.receive_data(b"A" * 300)
    assert p.next_event() is NEED_DATA
    p.receive_data(b"A" * 300)
    event = p.next_event()
    assert isinstance(event, ProtocolViolation) and event.reason is Reason.TOO_LONG


def test_split_and_pipelined_input():
    p = in_state(State.AUTH)
    for byte in b"HELO a b":
        p.receive_data(bytes([byte]))
        assert p.next_event() is NEED_DATA
    p.receive_data(b"\r\nREAD\r\nRETR\r\n")
    assert p.next_event() == Helo("a", "b")
    p.send_count(1, "INBOX")
    assert p.next_event() == Read(None)
    p.send_length(5, 1)
    assert p.next_event() == Retr()


def test_must_reply_before_next_command():
    p = in_state(State.AUTH)
    p.receive_data(b"HELO a b\r\nQUIT\r\n")
    p.next_event()
    with pytest.raises(LocalProtocolError):
        p.next_event()


def test_reply_of_wrong_kind_is_refused():
    p = in_state(State.AUTH)
    feed(p, b"HELO a b\r\n")
    with pytest.raises(LocalProtocolError):
        p.send_length(1, 1)


def test_reply_formats():
    p = in_state(State.AUTH)
    assert p.greeting("mail.test") == b"+ POP2 mail.test pop2gate server ready\r\n"
    assert p.greeting("mail.test", "1.2") == b"+ POP2 mail.test pop2gate 1.2 server ready\r\n"
    feed(p, b"HELO a b\r\n")
    assert p.send_count(2, "INBOX") == b"#2 messages in INBOX\r\n"
    feed(p, b"FOLD x\r\n")
    assert p.send_count(1, "x") == b"#1 message in x\r\n"
    feed(p, b"READ\r\n")
    assert p.send_length(537, 1) == b"=537 characters in message 1\r\n"
    feed(p, b"READ 9\r\n")
    assert p.send_length(0, 9) == b"=0 no message 9\r\n"
    feed(p, b"QUIT\r\n")
    assert p.send_bye() == b"+ OK\r\n"
    assert p.state is State.DONE


def test_every_reply_text_is_in_the_catalogue():
    # all '-' reasons of the protocol come from Reason; none is empty, each is one line
    assert all(r.value for r in Reason)
    assert all(r.reply(Command.READ).line().count(b"\r\n") == 1 for r in Reason)
    assert Reason.TOO_LONG.value == "Command line too long"
    assert Reason.AUTOLOGOUT.value == "Autologout; idle for too long"


def test_helo_repr_hides_password():
    assert "hunter2" not in repr(Helo("a", "hunter2"))


# -- the data phase, counted in the core ------------------------------------------------


def test_retr_sends_exactly_the_announced_octets():
    p = in_state(State.ITEM)
    assert feed(p, b"RETR\r\n") == Retr()
    assert p.data_left == LENGTH
    assert p.send_data(b"x" * 4) == b"x" * 4
    assert p.data_left == LENGTH - 4
    with pytest.raises(LocalProtocolError):
        p.send_data(b"y" * (LENGTH - 3))  # one octet too many is refused, nothing counted
    assert p.data_left == LENGTH - 4
    with pytest.raises(LocalProtocolError):
        p.end_data()  # six octets short
    assert p.state is State.ITEM
    p.send_data(b"x" * (LENGTH - 4))
    p.end_data()
    assert p.state is State.NEXT and p.data_left == 0


def test_no_data_without_retr():
    p = in_state(State.ITEM)
    with pytest.raises(LocalProtocolError):
        p.send_data(b"x")
    with pytest.raises(LocalProtocolError):
        p.end_data()


def test_no_command_is_read_during_the_data_phase():
    p = in_state(State.ITEM)
    p.receive_data(b"RETR\r\nACKS\r\n")
    assert p.next_event() == Retr()
    with pytest.raises(LocalProtocolError):
        p.next_event()


@pytest.mark.parametrize("setup", [[b"HELO u p\r\n", b"READ 9\r\n"], [b"HELO u p\r\n", b"READ 1\r\n"]])
def test_retr_after_zero_is_no_message(setup):
    p = ServerProtocol()
    feed(p, setup[0])
    p.send_count(1, "INBOX")
    feed(p, setup[1])
    p.send_length(0, 9)
    event = feed(p, b"RETR\r\n")
    assert isinstance(event, ProtocolViolation) and event.reason is Reason.NO_MESSAGE
    assert event.reply == b"- No message\r\n"
    assert p.state is State.DONE


@pytest.mark.parametrize("name", ["/etc/passwd", "{imap.example}INBOX", "a/../b", "a//b", "./x", "x\x01"])
def test_invalid_folder_name_is_refused_by_the_core(name):
    p = in_state(State.MBOX)
    event = feed(p, b"FOLD " + name.encode() + b"\r\n")
    assert isinstance(event, ProtocolViolation)
    assert event.reason in (Reason.BAD_FOLDER, Reason.BAD_CHAR)
    assert p.state is State.DONE
