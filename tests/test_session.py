"""docs/protocol.md on the wire: raw byte transcripts against a real pop2gate listener (the session)."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from helpers import PASSWORD, expect_closed, read_line, until_idle

GREETING = b"+ POP2 test.invalid pop2gate server ready\r\n"
HELO = f"HELO alice {PASSWORD}\r\n".encode()

MSG1 = b"From: a@test\nSubject: one\n\nbody one\n"
MSG2 = b"From: b@test\nSubject: two\n\n.\n..dots\n"
MSG3 = b"Subject: three\n\nno final newline"


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


@pytest.fixture
def three(env):
    return [env.deliver("alice", m) for m in (MSG1, MSG2, MSG3)]


async def session(server, *lines: bytes):
    """Open, check the greeting, log in; returns (reader, writer)."""
    reader, writer = await server.open()
    assert await read_line(reader) == GREETING
    for line in lines:
        writer.write(line)
    await writer.drain()
    return reader, writer


async def test_greeting(server):
    reply = await server.talk(b"QUIT\r\n")
    assert reply == GREETING + b"+ OK\r\n"


async def test_greeting_with_version(make_server):
    from pop2gate import __version__

    srv = await make_server(server={"show_version": True})
    reply = await srv.talk(b"QUIT\r\n")
    assert reply.startswith(f"+ POP2 test.invalid pop2gate {__version__} server ready\r\n".encode())


async def test_normal_scenario(server, env, three):
    reply = await server.talk(HELO + b"READ\r\nRETR\r\nACKS\r\nRETR\r\nACKS\r\nRETR\r\nACKS\r\nQUIT\r\n")
    m3 = crlf(MSG3) + b"\r\n"
    assert reply == (
        GREETING
        + b"#3 messages in INBOX\r\n"
        + f"={len(crlf(MSG1))} characters in message 1\r\n".encode()
        + crlf(MSG1)
        + f"={len(crlf(MSG2))} characters in message 2\r\n".encode()
        + crlf(MSG2)
        + f"={len(m3)} characters in message 3\r\n".encode()
        + m3
        + b"=0 no message 4\r\n"
        + b"+ OK\r\n"
    )
    assert env.files("alice") == sorted(three)


async def test_read_n_sets_current(server, three):
    reply = await server.talk(HELO + b"READ 2\r\nRETR\r\nACKS\r\nQUIT\r\n")
    assert f"={len(crlf(MSG2))} characters in message 2\r\n".encode() + crlf(MSG2) in reply
    assert f"={len(crlf(MSG3)) + 2} characters in message 3\r\n".encode() in reply


async def test_nack_does_not_advance(server, three):
    reply = await server.talk(HELO + b"READ 1\r\nRETR\r\nNACK\r\nRETR\r\nNACK\r\nQUIT\r\n")
    n1 = f"={len(crlf(MSG1))} characters in message 1\r\n".encode()
    assert reply == GREETING + b"#3 messages in INBOX\r\n" + (n1 + crlf(MSG1)) * 2 + n1 + b"+ OK\r\n"


@pytest.mark.parametrize("n", [b"4", b"0", b"99999999999999999999999"])
async def test_read_past_the_end_gives_zero(server, three, n):
    reply = await server.talk(HELO + b"READ " + n + b"\r\nQUIT\r\n")
    assert reply.endswith(b"=0 no message " + str(int(n)).encode() + b"\r\n+ OK\r\n")


async def test_retr_after_zero_closes(server, three):
    reply = await server.talk(HELO + b"READ 9\r\nRETR\r\nQUIT\r\n")
    assert reply.endswith(b"=0 no message 9\r\n- No message\r\n")


async def test_retr_of_zero_length_message_closes(server, env):
    env.deliver("alice", b"")
    reply = await server.talk(HELO + b"READ\r\nRETR\r\n")
    assert reply == GREETING + b"#1 message in INBOX\r\n=0 no message 1\r\n- No message\r\n"
    assert len(env.files("alice")) == 1


async def test_empty_mailbox_read(server):
    reply = await server.talk(HELO + b"READ\r\nQUIT\r\n")
    assert reply == GREETING + b"#0 messages in INBOX\r\n=0 no message 1\r\n+ OK\r\n"


async def test_ackd_then_quit_deletes_exactly_those(server, env, three):
    reply = await server.talk(HELO + b"READ 1\r\nRETR\r\nACKD\r\nRETR\r\nACKS\r\nRETR\r\nACKD\r\nQUIT\r\n")
    assert reply.endswith(b"=0 no message 4\r\n+ OK\r\n")
    assert env.files("alice") == [three[1]]


async def test_ackd_message_reads_zero_and_numbering_stays(server, env, three):
    reply = await server.talk(HELO + b"READ 1\r\nRETR\r\nACKD\r\nREAD 1\r\nREAD 2\r\nQUIT\r\n")
    assert b"=0 no message 1\r\n" + f"={len(crlf(MSG2))} characters in message 2\r\n".encode() in reply
    assert env.files("alice") == sorted(three[1:])


async def test_ackd_then_drop_deletes_nothing(server, env, three):
    reader, writer = await session(server, HELO, b"READ\r\nRETR\r\nACKD\r\n")
    await read_line(reader)
    first = f"={len(crlf(MSG1))} characters in message 1\r\n"
    await asyncio.wait_for(reader.readexactly(len(crlf(MSG1)) + len(first)), 5)
    assert (await read_line(reader)).startswith(b"=")
    writer.transport.abort()
    await asyncio.sleep(0.3)
    assert env.files("alice") == sorted(three)


async def test_ackd_then_protocol_error_deletes_nothing(server, env, three):
    reply = await server.talk(HELO + b"READ\r\nRETR\r\nACKD\r\nBOGUS\r\n")
    assert reply.endswith(b"- Unknown command\r\n")
    assert env.files("alice") == sorted(three)


async def test_ackd_then_timeout_deletes_nothing(make_server, env, three):
    srv = await make_server(limits={"idle_timeout": 0.5})
    reply = await srv.talk(HELO + b"READ\r\nRETR\r\nACKD\r\n")
    assert reply.endswith(b"- Autologout; idle for too long\r\n")
    assert env.files("alice") == sorted(three)


async def test_fold_releases_pending_deletions(server, env, three):
    archived = env.deliver("alice", MSG1, folder="Archive")
    reader, writer = await session(server, HELO, b"READ\r\nRETR\r\nACKD\r\nFOLD Archive\r\nREAD\r\nRETR\r\nACKD\r\n")
    data = b""
    while not data.endswith(b"=0 no message 2\r\n"):
        data += await asyncio.wait_for(reader.read(4096), 5)
    assert b"#1 message in Archive\r\n" in data
    # INBOX's deletion was applied at FOLD; Archive's is pending when the connection drops
    writer.transport.abort()
    await asyncio.sleep(0.3)
    assert env.files("alice") == sorted(three[1:])
    assert env.files("alice", "Archive") == [archived]


async def test_fold_missing_folder_is_zero(server):
    reply = await server.talk(HELO + b"FOLD Nope\r\nREAD\r\nQUIT\r\n")
    assert reply == GREETING + b"#0 messages in INBOX\r\n#0 messages in Nope\r\n=0 no message 1\r\n+ OK\r\n"


async def test_fold_nested_and_utf8(server, env):
    env.deliver("alice", MSG1, folder="Archive/2024")
    env.folder("alice", "Entw&APw-rfe")  # Maildir++ stores levels in modified UTF-7
    env.deliver("alice", MSG2, folder="Entw&APw-rfe")
    reply = await server.talk(HELO + b"FOLD Archive/2024\r\nFOLD Entw\xc3\xbcrfe\r\nQUIT\r\n")
    assert b"#1 message in Archive/2024\r\n" in reply
    assert "#1 message in Entwürfe\r\n".encode() in reply


async def test_fold_inbox_case_insensitive(server, env, three):
    reply = await server.talk(HELO + b"FOLD inbox\r\nQUIT\r\n")
    assert b"#3 messages in inbox\r\n" in reply


@pytest.mark.parametrize(
    "name",
    [b"/etc", b"/etc/passwd", b"../bob", b"..", b".", b"a/../b", b"a//b", b"a/", b"{imap.test}INBOX", b"a/./b"],
)
async def test_fold_traversal_refused(server, env, name):
    env.add_user("bob")
    env.deliver("bob", MSG1)
    reply = await server.talk(HELO + b"FOLD " + name + b"\r\nQUIT\r\n")
    assert reply.endswith(b"#0 messages in INBOX\r\n- Invalid folder name\r\n")


async def test_fold_symlink_escape_is_empty(server, env, tmp_path):
    outside = tmp_path / "outside"
    (outside / "new").mkdir(parents=True)
    (outside / "cur").mkdir()
    (outside / "new" / "1.secret").write_bytes(b"secret")
    (env.mail / "alice" / ".Escape").symlink_to(outside)
    reply = await server.talk(HELO + b"FOLD Escape\r\nQUIT\r\n")
    assert reply.endswith(b"#0 messages in Escape\r\n+ OK\r\n")


async def test_fold_dotted_level_cannot_reach_other_folders(server, env):
    env.deliver("alice", MSG1, folder="a/b")
    reply = await server.talk(HELO + b"FOLD a.b\r\nQUIT\r\n")
    assert b"#0 messages in a.b\r\n" in reply


async def test_symlinked_message_file_is_not_served(server, env, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:x:0:0\n")
    (env.mail / "alice" / "new" / "1700000000.link").symlink_to(secret)
    reply = await server.talk(HELO + b"QUIT\r\n")
    assert b"#0 messages in INBOX" in reply


async def test_trashed_messages_are_not_listed(server, env):
    env.deliver("alice", MSG1, flags="T")
    keep = env.deliver("alice", MSG2)
    reply = await server.talk(HELO + b"READ\r\nRETR\r\nQUIT\r\n")
    assert b"#1 message in INBOX" in reply and crlf(MSG2) in reply
    assert keep in env.files("alice")


async def test_acks_marks_seen(server, env, three):
    await server.talk(HELO + b"READ\r\nRETR\r\nACKS\r\nQUIT\r\n")
    cur = list((env.mail / "alice" / "cur").iterdir())
    assert [p.name for p in cur] == [f"{three[0]}:2,S"]


async def test_acks_counts_when_the_client_goes_without_quit(server, env, three):
    """The flag is applied however the session ends (deletions only on a clean end)."""
    reader, writer = await session(server, HELO, b"READ\r\nRETR\r\nACKS\r\nRETR\r\nACKD\r\n")
    assert await read_line(reader) == b"#3 messages in INBOX\r\n"
    for msg in (MSG1, MSG2):
        assert (await read_line(reader)).startswith(b"=")
        await asyncio.wait_for(reader.readexactly(len(crlf(msg))), 5)
    assert await read_line(reader) == b"=%d characters in message 3\r\n" % len(crlf(MSG3) + b"\r\n")
    writer.close()  # gone without QUIT
    await until_idle(server.gateway)
    cur = list((env.mail / "alice" / "cur").iterdir())
    assert [p.name for p in cur] == [f"{three[0]}:2,S"]
    assert env.files("alice") == sorted(three)  # the ACKD'd message is kept


# -- message data ---------------------------------------------------------------


@pytest.mark.parametrize(
    "stored,wire",
    [
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\r\nb\nc", b"a\r\nb\r\nc\r\n"),
        (b".\n..\n. x\n", b".\r\n..\r\n. x\r\n"),
        ("Grüße ☃\n".encode(), "Grüße ☃\r\n".encode()),
        (b"\xff\xfe\x80 raw 8-bit\n", b"\xff\xfe\x80 raw 8-bit\r\n"),
        (b"x" * 5000 + b"\n", b"x" * 5000 + b"\r\n"),
        (b"no end", b"no end\r\n"),
        (b"\n", b"\r\n"),
    ],
)
async def test_message_data_exact(server, env, stored, wire):
    env.deliver("alice", stored)
    reply = await server.talk(HELO + b"READ\r\nRETR\r\nACKS\r\nQUIT\r\n")
    head = GREETING + b"#1 message in INBOX\r\n" + f"={len(wire)} characters in message 1\r\n".encode()
    assert reply == head + wire + b"=0 no message 2\r\n+ OK\r\n"


async def test_large_message_with_cr_at_chunk_boundary(make_server, env):
    # CRLF split across the store's read chunks must not become CR CR LF
    chunk = 1024
    srv = await make_server(limits={"retr_chunk_size": chunk})
    body = (b"y" * (chunk - 1) + b"\r\n") * 50 + b"z\n" * 1000
    env.deliver("alice", body)
    wire = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    reply = await srv.talk(HELO + b"READ\r\nRETR\r\nQUIT\r\n")
    assert f"={len(wire)} characters".encode() in reply
    assert reply.endswith(wire + b"+ OK\r\n") is False  # no ack: QUIT comes in NEXT state
    assert wire in reply


async def test_message_changed_after_read_never_sends_wrong_count(make_server, env):
    """A message past one RETR chunk is read again at RETR: exactly the announced octets go
    out, then the connection closes."""
    server = await make_server({"retr_chunk_size": 1024})
    uid = env.deliver("alice", b"x" * 2000 + b"\n")
    reader, writer = await session(server, HELO, b"READ\r\n")
    assert await read_line(reader) == b"#1 message in INBOX\r\n"
    assert await read_line(reader) == b"=2002 characters in message 1\r\n"
    (env.mail / "alice" / "new" / uid).write_bytes(b"y" * 3000 + b"\n")
    writer.write(b"RETR\r\n")
    rest = await expect_closed(reader)
    assert rest == b"y" * 2002  # exactly the announced octets, then the connection closes
    assert env.files("alice") == [uid]


async def test_a_small_message_is_sent_as_it_was_counted(server, env):
    """One within a RETR chunk was read whole when counted: RETR sends those octets, whatever
    happened to the file since, and the session goes on."""
    uid = env.deliver("alice", b"short\n")
    reader, writer = await session(server, HELO, b"READ\r\n")
    assert await read_line(reader) == b"#1 message in INBOX\r\n"
    assert await read_line(reader) == b"=7 characters in message 1\r\n"
    (env.mail / "alice" / "new" / uid).write_bytes(b"much longer now\n")
    writer.write(b"RETR\r\n")
    assert await asyncio.wait_for(reader.readexactly(7), 5) == b"short\r\n"
    writer.write(b"NACK\r\n")  # announced again: read again, as it is now
    assert await read_line(reader) == b"=17 characters in message 1\r\n"
    writer.write(b"QUIT\r\n")
    assert await expect_closed(reader) == b"+ OK\r\n"
    assert env.files("alice") == [uid]


# -- malformed input -------------------------------------------------------------


async def test_513_octet_line(server):
    line = b"HELO alice " + b"p" * (512 - len(b"HELO alice ") - 1) + b"\r\n"
    assert len(line) == 513
    assert await server.talk(line) == GREETING + b"- Command line too long\r\n"


async def test_one_megabyte_line(server):
    reader, writer = await server.open()
    assert await read_line(reader) == GREETING
    writer.write(b"A" * (1 << 20))
    try:
        await writer.drain()
    except ConnectionError:
        pass
    assert await expect_closed(reader) == b"- Command line too long\r\n"


async def test_nul_in_command(server):
    assert await server.talk(b"HELO al\x00ice x\r\n") == GREETING + b"- Invalid character in command\r\n"


async def test_lowercase_session(server, three):
    reply = await server.talk(f"helo alice {PASSWORD}\r\nread\r\nretr\r\nacks\r\nquit\r\n".encode())
    assert reply.startswith(GREETING + b"#3 messages in INBOX\r\n=")
    assert reply.endswith(b"+ OK\r\n")


async def test_bare_lf_session(server, three):
    reply = await server.talk(f"HELO alice {PASSWORD}\nREAD 3\nQUIT\n".encode())
    assert reply.endswith(b"characters in message 3\r\n+ OK\r\n")


@pytest.mark.parametrize(
    "lines,reply",
    [
        (b"HELO alice\r\n", b"- Missing argument\r\n"),
        (b"HELO\r\n", b"- Missing argument\r\n"),
        (HELO + b"FOLD\r\n", b"- Missing argument\r\n"),
        (HELO + b"READ 1 2\r\n", b"- Too many arguments\r\n"),
        (HELO + b"READ one\r\n", b"- Message number must be a number\r\n"),
        (HELO + b"READ\r\nRETR now\r\n", b"- Too many arguments\r\n"),
        (b"QUIT please\r\n", b"- Too many arguments\r\n"),
        (b"USER alice\r\n", b"- Unknown command\r\n"),
    ],
)
async def test_bad_arguments_close(server, three, lines, reply):
    got = await server.talk(lines)
    assert got.endswith(reply)


# every command in every state where it is not allowed, on the wire
TO_STATE = {
    "AUTH": b"",
    "MBOX": HELO,
    "ITEM": HELO + b"READ\r\n",
    "NEXT": HELO + b"READ\r\nRETR\r\n",
}
ALLOWED = {
    "AUTH": {"HELO", "QUIT"},
    "MBOX": {"FOLD", "READ", "QUIT"},
    "ITEM": {"FOLD", "READ", "RETR", "QUIT"},
    "NEXT": {"ACKS", "ACKD", "NACK"},
}
WRONG = [
    (state, cmd)
    for state in TO_STATE
    for cmd in ("HELO", "FOLD", "READ", "RETR", "ACKS", "ACKD", "NACK", "QUIT")
    if cmd not in ALLOWED[state]
]
ARGS = {"HELO": b" bob pw", "FOLD": b" Archive", "READ": b" 1"}


@pytest.mark.parametrize("state,cmd", WRONG, ids=[f"{s}-{c}" for s, c in WRONG])
async def test_command_in_wrong_state(server, env, three, state, cmd):
    line = cmd.encode() + ARGS.get(cmd, b"") + b"\r\n"
    reply = await server.talk(TO_STATE[state] + line)
    assert reply.endswith(f"- {cmd} not allowed now\r\n".encode())
    assert env.files("alice") == sorted(three)


# -- login ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"HELO alice wrong\r\n",
        b"HELO mallory " + PASSWORD.encode() + b"\r\n",
        b"HELO ../alice " + PASSWORD.encode() + b"\r\n",
        b"HELO otherhost:alice " + PASSWORD.encode() + b"\r\n",
        b"HELO alice " + PASSWORD.encode() + b"x\r\n",
    ],
)
async def test_bad_login(server, line):
    assert await server.talk(line) == GREETING + b"- Bad login\r\n"


async def test_configured_alias_login(server, three):
    reply = await server.talk(b"HELO local:alice " + PASSWORD.encode() + b"\r\nQUIT\r\n")
    assert reply == GREETING + b"#3 messages in INBOX\r\n+ OK\r\n"


async def test_bad_login_is_delayed(make_server):
    srv = await make_server(limits={"bad_login_delay": 0.6})
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert (await srv.talk(b"HELO alice nope\r\n")).endswith(b"- Bad login\r\n")
    assert loop.time() - start >= 0.6


async def test_login_timeout(make_server):
    srv = await make_server(limits={"login_timeout": 0.3})
    assert await srv.talk(b"") == GREETING + b"- Autologout; idle for too long\r\n"


async def test_idle_timeout_after_login(make_server, three):
    srv = await make_server(limits={"idle_timeout": 0.3})
    reply = await srv.talk(HELO)
    assert reply == GREETING + b"#3 messages in INBOX\r\n- Autologout; idle for too long\r\n"


async def trickle(writer, data: bytes, every: float, reader) -> bytes:
    """Send `data` one octet at a time, `every` seconds apart, until the server answers;
    returns what it sent until it closed."""
    for octet in data:
        writer.write(bytes([octet]))
        await writer.drain()
        try:
            first = await asyncio.wait_for(reader.read(4096), every)
        except TimeoutError:
            continue
        return first + await expect_closed(reader)
    return await expect_closed(reader)


async def test_a_trickle_cannot_stretch_the_login(make_server):
    srv = await make_server(limits={"login_timeout": 1.0, "command_timeout": 30})
    reader, writer = await srv.open()
    assert await read_line(reader) == GREETING
    loop = asyncio.get_running_loop()
    start = loop.time()
    rest = await trickle(writer, b"HELO alice " + b"x" * 40, 0.1, reader)  # 5 s of trickle
    assert rest == b"- Autologout; idle for too long\r\n"
    assert loop.time() - start < 2.5  # the login deadline, not a timer restarted at each octet


async def test_a_trickle_cannot_stretch_a_command_line(make_server, three):
    srv = await make_server(limits={"command_timeout": 0.6, "idle_timeout": 30})
    reader, writer = await session(srv, HELO)
    assert await read_line(reader) == b"#3 messages in INBOX\r\n"
    loop = asyncio.get_running_loop()
    start = loop.time()
    rest = await trickle(writer, b"READ 1" + b" " * 50, 0.1, reader)
    assert rest == b"- Autologout; idle for too long\r\n"
    assert loop.time() - start < 2.0


async def test_a_client_that_takes_no_data_is_cut(make_server, env):
    env.deliver("alice", b"x" * (8 << 20))  # more than the socket buffers hold
    srv = await make_server(limits={"send_timeout": 0.5, "idle_timeout": 60})
    reader, writer = await session(srv, HELO, b"READ\r\nRETR\r\n")
    assert await read_line(reader) == b"#1 message in INBOX\r\n"
    assert (await read_line(reader)).startswith(b"=")
    await asyncio.sleep(2.5)  # read nothing more: the server gives up after send_timeout
    assert srv.gateway.active == 0
    writer.close()


async def test_max_connections_refuses_when_every_slot_is_logged_in(make_server):
    srv = await make_server(limits={"max_connections": 1})
    reader, writer = await srv.open()
    assert await read_line(reader) == GREETING
    writer.write(HELO)
    assert await read_line(reader) == b"#0 messages in INBOX\r\n"
    assert await srv.talk(b"") == b"- Too many connections, try again later\r\n"
    writer.write(b"QUIT\r\n")
    assert await expect_closed(reader) == b"+ OK\r\n"
    writer.close()
    await asyncio.sleep(0.2)
    assert await srv.talk(b"QUIT\r\n") == GREETING + b"+ OK\r\n"


async def test_when_full_the_oldest_session_not_logged_in_gives_way(make_server):
    srv = await make_server(limits={"max_connections": 2})
    old_r, old_w = await srv.open()  # connected first, never logs in
    assert await read_line(old_r) == GREETING
    in_r, in_w = await srv.open()  # logged in: never gives way
    assert await read_line(in_r) == GREETING
    in_w.write(HELO)
    assert await read_line(in_r) == b"#0 messages in INBOX\r\n"
    new_r, new_w = await srv.open()
    assert await read_line(new_r) == GREETING  # the newcomer is served...
    assert await expect_closed(old_r) == b"- Too many connections, try again later\r\n"  # ...the idle one went
    for w, r in ((in_w, in_r), (new_w, new_r)):
        w.write(b"QUIT\r\n")
        assert (await expect_closed(r)).endswith(b"+ OK\r\n")
        w.close()


async def test_prelogin_sessions_have_their_own_cap(make_server):
    srv = await make_server(limits={"max_connections": 10, "max_prelogin_connections": 2})
    first = await srv.open()
    second = await srv.open()
    for r, _ in (first, second):
        assert await read_line(r) == GREETING
    third = await srv.open()
    assert await read_line(third[0]) == GREETING
    assert await expect_closed(first[0]) == b"- Too many connections, try again later\r\n"
    for r, w in (second, third):
        w.write(b"QUIT\r\n")
        assert await expect_closed(r) == b"+ OK\r\n"
        w.close()


async def test_max_sessions_per_user(make_server):
    srv = await make_server(limits={"max_sessions_per_user": 1})
    reader, writer = await srv.open()
    assert await read_line(reader) == GREETING
    writer.write(HELO)
    assert await read_line(reader) == b"#0 messages in INBOX\r\n"
    assert await srv.talk(HELO) == GREETING + b"- Too many sessions for this user, try again later\r\n"
    writer.write(b"QUIT\r\n")
    assert await expect_closed(reader) == b"+ OK\r\n"
    writer.close()
    await asyncio.sleep(0.2)
    assert await srv.talk(HELO + b"QUIT\r\n") == GREETING + b"#0 messages in INBOX\r\n+ OK\r\n"


# -- UW compatibility ------------------------------------------------------------


@pytest.mark.parametrize(
    "stored,flags,wire",
    [
        (b"Subject: x\n\nbody\n", None, b"Subject: x\r\nStatus:  O\r\n\r\nbody\r\n\r\n"),
        (b"Subject: x\n\nbody\n", "S", b"Subject: x\r\nStatus: RO\r\n\r\nbody\r\n\r\n"),
        (b"Subject: only a header\n", None, b"Subject: only a header\r\nStatus:  O\r\n\r\n"),
        (b"Subject: x\n\n\n\nmore\n", None, b"Subject: x\r\nStatus:  O\r\n\r\n\r\n\r\nmore\r\n\r\n"),
    ],
)
async def test_uw_compat_status_and_trailer(make_server, env, stored, flags, wire):
    srv = await make_server(server={"uw_compat": True})
    env.deliver("alice", stored, flags=flags)
    reply = await srv.talk(HELO + b"READ\r\nRETR\r\nACKS\r\nQUIT\r\n")
    head = GREETING + b"#1 message in INBOX\r\n" + f"={len(wire)} characters in message 1\r\n".encode()
    assert reply == head + wire + b"=0 no message 2\r\n+ OK\r\n"


async def test_uw_compat_off_by_default(server, env):
    env.deliver("alice", b"Subject: x\n\nbody\n")
    reply = await server.talk(HELO + b"READ\r\nRETR\r\nACKS\r\nQUIT\r\n")
    assert b"Status:" not in reply



async def test_burst_of_connections_all_greeted(make_server):
    """300 clients connecting at once are all queued and greeted (listen_backlog)."""
    srv = await make_server(limits={"max_connections": 1000, "max_connections_per_address": 1000})

    async def one():
        reader, writer = await asyncio.wait_for(srv.open(), 30)
        line = await read_line(reader, 30)
        writer.close()
        return line

    lines = await asyncio.gather(*(one() for _ in range(300)))
    assert all(line == GREETING for line in lines)


# -- known clients (docs/protocol.md "Known clients"), as transcripts -------------


async def test_fetchmail_style_session(server, env, three):
    """HELO with a raw password (spaces), FOLD, READ n / RETR / ACKD each, QUIT."""
    env.deliver("alice", MSG1, folder="Work")
    reader, writer = await session(server, f"HELO alice {PASSWORD}\r\n".encode())
    assert await read_line(reader) == b"#3 messages in INBOX\r\n"
    writer.write(b"FOLD Work\r\n")
    assert await read_line(reader) == b"#1 message in Work\r\n"
    writer.write(b"READ 1\r\n")
    line = await read_line(reader)
    count = int(line[1:].split()[0])
    writer.write(b"RETR\r\n")
    assert await asyncio.wait_for(reader.readexactly(count), 5) == crlf(MSG1)
    writer.write(b"ACKD\r\nQUIT\r\n")
    assert await expect_closed(reader) == b"=0 no message 2\r\n+ OK\r\n"
    assert env.files("alice", "Work") == []
    assert env.files("alice") == sorted(three)


async def test_jnos_style_loop_until_zero(server, env, three):
    """The greeting starts with '+ POP2 '; READ without argument, RETR, ACKD until =0."""
    reader, writer = await session(server, HELO)
    assert (await read_line(reader)).startswith(b"#3 ")
    writer.write(b"READ\r\n")
    line = await read_line(reader)
    got = 0
    while not line.startswith(b"=0"):
        count = int(line[1:].split()[0])
        writer.write(b"RETR\r\n")
        await asyncio.wait_for(reader.readexactly(count), 5)
        writer.write(b"ACKD\r\n")
        line = await read_line(reader)
        got += 1
    writer.write(b"QUIT\r\n")
    assert await expect_closed(reader) == b"+ OK\r\n"
    assert got == 3 and env.files("alice") == []


def test_default_hostname_is_the_machines_name():
    import socket

    from pop2gate.config import ServerSettings

    assert ServerSettings().hostname == socket.gethostname()


async def test_no_password_in_any_log_line(make_server, env, three, caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="pop2gate")
    srv = await make_server()
    await srv.talk(b"HELO alice hunter2-wrong\r\n")
    await srv.talk(HELO + b"READ\r\nRETR\r\nACKD\r\nQUIT\r\n")
    await srv.talk(b"HELO alice " + PASSWORD.encode() + b"\x00\r\n")
    text = caplog.text
    assert "bad login" in text and "login peer=" in text and "protocol error" in text
    assert "hunter2" not in text and PASSWORD not in text


async def test_ipv6_loopback_listener(env, three):
    from pop2gate.config import parse_config
    from pop2gate.gateway.listeners import Gateway

    gateway = Gateway(parse_config(env.config_dict(listen="[::1]:0")))
    servers = await gateway.start()
    try:
        port = servers[0].sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("::1", port)
        writer.write(HELO + b"QUIT\r\n")
        assert await expect_closed(reader) == GREETING + b"#3 messages in INBOX\r\n+ OK\r\n"
        writer.close()
    finally:
        for s in servers:
            s.close()
        await gateway.aclose()


async def test_message_removed_by_another_client_reads_zero(server, env, three):
    reader, writer = await session(server, HELO)
    assert await read_line(reader) == b"#3 messages in INBOX\r\n"
    (env.mail / "alice" / "new" / three[1]).unlink()  # another client took message 2
    writer.write(b"READ 2\r\nRETR\r\n")
    assert await read_line(reader) == b"=0 no message 2\r\n"
    assert await expect_closed(reader) == b"- No message\r\n"
    assert env.files("alice") == [three[0], three[2]]


async def test_input_is_read_no_further_than_one_command_line(server, monkeypatch):
    """The session asks the socket for no more than the rest of one command line."""
    import asyncio as aio

    asked: list[int] = []
    real_read = aio.StreamReader.read

    async def read(self, n=-1):
        asked.append(n)
        return await real_read(self, n)

    monkeypatch.setattr(aio.StreamReader, "read", read)
    reader, writer = await session(server)
    writer.write(b"HELO ali")
    await writer.drain()
    await aio.sleep(0.2)
    writer.write(b"ce wrong\r\n")
    await writer.drain()
    assert await expect_closed(reader) == b"- Bad login\r\n"
    # the session's two command reads: a whole line's room, then room for the rest of the line only
    assert asked[:2] == [512, 512 - len(b"HELO ali")]


# -- the Maildir store never leaves the user's Maildir, whatever is symlinked inside it ----


def outside_dir(tmp_path, name: str = "outside") -> tuple:
    """A directory outside the store with one file in it, as cur/ and new/ name files."""
    outside = tmp_path / name
    outside.mkdir()
    secret = outside / "1600000000.M1P1.secret"
    secret.write_bytes(b"Subject: secret\n\nthe users file, say\n")
    return outside, secret


def swap_for_link(path, target) -> None:
    """Replace the directory `path` by a symlink to `target`."""
    for child in path.iterdir():
        child.unlink()
    path.rmdir()
    path.symlink_to(target)


@pytest.mark.parametrize("sub", ["new", "cur"])
async def test_symlinked_inbox_subdirectory_is_not_read_or_deleted(server, env, tmp_path, sub):
    outside, secret = outside_dir(tmp_path)
    swap_for_link(env.mail / "alice" / sub, outside)
    reply = await server.talk(HELO + b"READ\r\nQUIT\r\n")
    assert reply == GREETING + b"#0 messages in INBOX\r\n=0 no message 1\r\n+ OK\r\n"
    assert secret.read_bytes().startswith(b"Subject: secret")


async def test_ackd_cannot_delete_through_a_symlinked_subdirectory(server, env, tmp_path):
    """The message is listed from a real new/, then new/ becomes a symlink before QUIT."""
    uid = env.deliver("alice", b"Subject: real\n\nbody\n")
    outside, secret = outside_dir(tmp_path)
    twin = outside / uid  # the same name outside, where the link will point
    twin.write_bytes(b"not yours\n")
    reader, writer = await session(server, HELO, b"READ\r\nRETR\r\nACKD\r\n")
    assert await read_line(reader) == b"#1 message in INBOX\r\n"
    await read_line(reader)
    await asyncio.wait_for(reader.readexactly(len(b"Subject: real\r\n\r\nbody\r\n")), 5)
    assert await read_line(reader) == b"=0 no message 2\r\n"
    real = env.mail / "alice" / "new"
    (real / uid).rename(tmp_path / "kept")
    swap_for_link(real, outside)
    writer.write(b"QUIT\r\n")
    assert await expect_closed(reader) == b"+ OK\r\n"
    assert twin.exists() and secret.exists()  # nothing outside was unlinked


async def test_acks_never_moves_a_message_out_through_a_symlinked_cur(server, env, tmp_path):
    uid = env.deliver("alice", b"Subject: real\n\nbody\n")
    outside, _ = outside_dir(tmp_path)
    swap_for_link(env.mail / "alice" / "cur", outside)
    reply = await server.talk(HELO + b"READ\r\nRETR\r\nACKS\r\nQUIT\r\n")
    assert reply.endswith(b"- Mail server error, try again later\r\n")  # cannot flag: said, not hidden
    assert os.listdir(env.mail / "alice" / "new") == [uid]
    assert sorted(p.name for p in outside.iterdir()) == ["1600000000.M1P1.secret"]


async def test_quit_deletes_nothing_when_an_acks_flag_cannot_be_applied(server, env, tmp_path):
    """The ACKS flags a store still holds go first at QUIT; when one fails, QUIT says so and
    deletes nothing: the ACKD'd message is fetched again, never lost unseen."""
    uids = [env.deliver("alice", b"Subject: %d\n\nbody\n" % n) for n in range(2)]
    outside, _ = outside_dir(tmp_path)
    swap_for_link(env.mail / "alice" / "cur", outside)
    reply = await server.talk(HELO + b"READ\r\nRETR\r\nACKD\r\nRETR\r\nACKS\r\nQUIT\r\n")
    assert reply.endswith(b"=0 no message 3\r\n- Mail server error, try again later\r\n")
    assert sorted(os.listdir(env.mail / "alice" / "new")) == sorted(uids)


async def test_symlinked_tmp_gets_nothing_written(server, env, tmp_path):
    outside, secret = outside_dir(tmp_path)
    swap_for_link(env.mail / "alice" / "tmp", outside)
    env.deliver("alice", b"Subject: real\n\nbody\n")
    reply = await server.talk(HELO + b"QUIT\r\n")
    assert reply == GREETING + b"#1 message in INBOX\r\n+ OK\r\n"
    assert [p.name for p in outside.iterdir()] == [secret.name]


async def test_symlinked_user_directory_is_refused(server, env, tmp_path):
    outside = tmp_path / "elsewhere"
    for sub in ("cur", "new", "tmp"):
        (outside / sub).mkdir(parents=True)
    (outside / "new" / "1600000000.M1P1.other").write_bytes(b"Subject: other\n\nx\n")
    shutil.rmtree(env.mail / "alice")
    (env.mail / "alice").symlink_to(outside)
    reply = await server.talk(HELO + b"READ\r\nRETR\r\nACKD\r\nQUIT\r\n")
    assert reply == GREETING + b"- Mail server error, try again later\r\n"
    assert (outside / "new" / "1600000000.M1P1.other").exists()


async def test_symlinked_subdirectory_of_a_folder_is_not_read(server, env, tmp_path):
    env.deliver("alice", b"Subject: archived\n\nx\n", folder="Archive")
    outside, secret = outside_dir(tmp_path)
    swap_for_link(env.mail / "alice" / ".Archive" / "new", outside)
    reply = await server.talk(HELO + b"FOLD Archive\r\nREAD\r\nQUIT\r\n")
    assert reply == GREETING + b"#0 messages in INBOX\r\n#0 messages in Archive\r\n=0 no message 1\r\n+ OK\r\n"
    assert secret.exists()


# -- credentials are octets -------------------------------------------------------------


async def test_non_utf8_password_is_a_bad_login_with_the_delay(make_server, caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="pop2gate")
    srv = await make_server(limits={"bad_login_delay": 0.3})
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply = await srv.talk(b"HELO alice x\xff\xfe\r\n")
    assert reply == GREETING + b"- Bad login\r\n"
    assert loop.time() - start >= 0.3
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


async def test_password_of_any_octets_logs_in(server, env):
    from pop2gate.stores.maildir.users import set_password

    set_password(env.users_file, "bob", b"p\xe4ss w\xf6rd".decode("utf-8", "surrogateescape"))
    env.add_user("carol", "grüße")
    assert (await server.talk(b"HELO bob p\xe4ss w\xf6rd\r\nQUIT\r\n")).endswith(b"#0 messages in INBOX\r\n+ OK\r\n")
    assert (await server.talk("HELO carol grüße\r\nQUIT\r\n".encode())).endswith(b"#0 messages in INBOX\r\n+ OK\r\n")
    assert (await server.talk(b"HELO bob p\xe4ss w\xf6rD\r\n")).endswith(b"- Bad login\r\n")


async def test_a_line_that_is_no_command_is_not_logged(server, caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="pop2gate")
    assert await server.talk(b"Zq7-SECRET-pw-47\r\n") == GREETING + b"- Unknown command\r\n"
    assert "SECRET" not in caplog.text
    assert "unknown command of 16 octets" in caplog.text


async def test_replies_that_echo_arguments_stay_within_512_octets(server):
    reader, writer = await session(server, HELO)
    assert await read_line(reader) == b"#0 messages in INBOX\r\n"
    for line in (b"READ " + b"9" * 505 + b"\r\n", b"FOLD " + "ü".encode() * 252 + b"\r\n"):
        assert len(line) <= 512
        writer.write(line)
        reply = await read_line(reader)
        assert len(reply) <= 512 and reply[:1] in b"=#", reply[:40]
    writer.write(b"QUIT\r\n")
    assert await expect_closed(reader) == b"+ OK\r\n"


async def test_retr_data_goes_out_in_as_few_writes_as_the_chunk_size_allows(make_server, env, monkeypatch):
    """Each write is a send() that wakes the client: the last line's CRLF a store adds goes
    with the octets before it, not in a write of its own."""
    server = await make_server({"retr_chunk_size": 1024})
    env.deliver("alice", b"x" * 2999)  # no line end: the store adds one
    writes: list[int] = []
    real = asyncio.StreamWriter.write

    def write(self, data):
        if self.get_extra_info("sockname")[1] == server.port:
            writes.append(len(data))
        return real(self, data)

    monkeypatch.setattr(asyncio.StreamWriter, "write", write)
    reader, writer = await session(server, HELO, b"READ\r\n")
    assert await read_line(reader) == b"#1 message in INBOX\r\n"
    assert await read_line(reader) == b"=3001 characters in message 1\r\n"
    writes.clear()
    writer.write(b"RETR\r\n")
    assert await asyncio.wait_for(reader.readexactly(3001), 5) == b"x" * 2999 + b"\r\n"
    assert writes == [1024, 1024, 953]
    writer.close()


async def test_a_command_arms_no_timer_of_its_own(server, three, monkeypatch):
    """The deadlines of a session's reads are kept by one loop timer, moved only when a deadline
    comes nearer: a drain does not schedule (and cancel) a timer per command."""
    reader, writer = await session(server, HELO)
    assert await read_line(reader) == b"#3 messages in INBOX\r\n"
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    real = loop.call_at
    monkeypatch.setattr(loop, "call_at", lambda when, *args, **kw: timers.append(when) or real(when, *args, **kw))
    for _ in range(20):
        writer.write(b"READ 1\r\n")
        assert (await reader.readline()).startswith(b"=")  # no wait_for here: it would arm a timer
    assert len(timers) <= 1
    writer.write(b"QUIT\r\n")
    assert await expect_closed(reader) == b"+ OK\r\n"
