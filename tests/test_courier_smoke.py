"""The private Courier-IMAP harness (tests/courier.py) works: login, APPEND/FETCH, `INBOX.` folders."""

from __future__ import annotations

import imaplib
import socket
import ssl
import subprocess

import pytest

from courier import HOST, USERS, Courier


def test_login_with_each_user_and_refuse_a_wrong_password(courier):
    for user in USERS:  # bob's password has a quote, a backslash and a space
        c = courier.imap(user)
        assert "IMAP4REV1" in c.capabilities
        c.logout()
    c = imaplib.IMAP4(HOST, courier.port, timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        c.login("alice", "not-" + USERS["alice"])
    c.shutdown()


def test_auth_plain_is_offered_only_after_starttls(courier):
    """As Debian sets Courier up (docs/imap.md): STARTTLS with the test CA's certificate, then AUTH=PLAIN."""
    c = imaplib.IMAP4(HOST, courier.port, timeout=10)
    try:
        assert "STARTTLS" in c.capabilities and "AUTH=PLAIN" not in c.capabilities
        c.starttls(ssl.create_default_context(cafile=str(courier.ca_file)))
        assert "AUTH=PLAIN" in c.capabilities
        c.authenticate("PLAIN", lambda _: f"\0alice\0{USERS['alice']}".encode())
        assert c.select("INBOX")[0] == "OK"
    finally:
        c.logout()


def test_append_then_uid_fetch_gives_the_bytes_back(courier):
    data = b"From: a@b\r\nSubject: s\r\n\r\nline one\r\n\xe9t\xe9 8-bit\r\n.\r\nend\r\n"
    uid = courier.append("carol", data)
    assert courier.bodies("carol")[uid] == data
    other = courier.append("carol", b"Subject: two\r\n\r\nx\r\n")
    assert other > uid
    courier.expunge("carol", uid)
    assert set(courier.uids("carol")) == {other}


def test_folders_live_under_the_inbox_dot_namespace(courier):
    c = courier.imap("alice")
    try:
        typ, dat = c.namespace()
        assert typ == "OK" and dat[0].startswith(b'(("INBOX." "."))'), dat
        assert c.create("INBOX.Smoke")[0] == "OK"
        typ, dat = c.list()
        assert typ == "OK"
        assert any(line.endswith(b'"." "INBOX.Smoke"') for line in dat), dat
        assert c.create("Smoke2")[0] == "NO"  # outside the only personal namespace
    finally:
        c.logout()
    uid = courier.append("alice", b"Subject: filed\r\n\r\nx\r\n", folder="INBOX.Smoke")
    assert courier.bodies("alice", "INBOX.Smoke") == {uid: b"Subject: filed\r\n\r\nx\r\n"}


def test_stop_ends_every_process_of_the_instance():
    server = Courier().start()
    pgid = server.proc.pid
    server.stop()
    assert _live_members(pgid) == [], "processes of the instance survived stop()"
    with pytest.raises(OSError), socket.create_connection((HOST, server.port), timeout=2):
        pass
    assert not server.root.exists()


def _live_members(pgid: int) -> list[str]:
    """The processes of group `pgid` that are not zombies (those wait for init to reap them)."""
    out = subprocess.run(["ps", "-eo", "pgid=,stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[0] == str(pgid) and not line.split()[1].startswith("Z")]
