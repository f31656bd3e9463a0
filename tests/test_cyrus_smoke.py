"""The private Cyrus harness (tests/cyrus.py) in both layouts: start, login, APPEND/FETCH, LIST."""

from __future__ import annotations

import imaplib

import pytest

from cyrus import HOST, USERS, Cyrus

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nline one\r\n.dot line\r\n\r\n"


@pytest.fixture(params=["unix", "debian"])
def cyrus(request: pytest.FixtureRequest) -> Cyrus:
    """The session's private Cyrus in each layout (conftest); fails (never skips) without it."""
    server: Cyrus = request.getfixturevalue(f"cyrus_{request.param}")
    return server


def test_user_logs_in_on_loopback(cyrus: Cyrus) -> None:
    c = imaplib.IMAP4(HOST, cyrus.port, timeout=10)
    try:
        assert b"Cyrus" in c.welcome
        typ, _ = c.login("bob", USERS["bob"])
        assert typ == "OK"
    finally:
        c.logout()


def test_wrong_password_is_refused(cyrus: Cyrus) -> None:
    c = imaplib.IMAP4(HOST, cyrus.port, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            c.login("alice", "not-" + USERS["alice"])
    finally:
        c.shutdown()


def test_append_then_fetch_gives_the_bytes_back(cyrus: Cyrus) -> None:
    uid = cyrus.append("alice", MESSAGE)
    assert cyrus.bodies("alice")[uid] == MESSAGE


def test_list_shows_the_layout(cyrus: Cyrus) -> None:
    cyrus.create("bob", "Work")
    cyrus.create("bob", "Work/Old")
    cyrus.append("bob", MESSAGE, folder="Work/Old")
    names = dict((name, sep) for sep, name in cyrus.list("bob"))
    if cyrus.layout == "unix":
        assert set(names) == {"INBOX", "Work", "Work/Old"}
        assert set(names.values()) == {"/"}
    else:
        assert set(names) == {"INBOX", "INBOX.Work", "INBOX.Work.Old"}
        assert set(names.values()) == {"."}
    assert list(cyrus.bodies("bob", "Work/Old").values()) == [MESSAGE]


def test_bare_lf_append_is_refused(cyrus: Cyrus) -> None:
    with pytest.raises(AssertionError):
        cyrus.append("alice", b"Subject: lf\n\nbody\n")
