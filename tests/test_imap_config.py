"""IMAP backend settings, routing rules and the FETCH response reader (no network)."""

from __future__ import annotations

import pytest

from pop2gate.config import ConfigError, parse_config
from pop2gate.routing import Router
from pop2gate.stores.imap import split_master
from pop2gate.stores.imap.wire import fetch_by_uid, list_delimiter, quote, uid_set


def cfg(*backends: dict, routing: dict | None = None, limits: dict | None = None):
    return parse_config({
        "limits": limits or {},
        "backend": list(backends) or [imap()],
        "routing": routing or {"default": "a"},
    })


def imap(name: str = "a", url: str = "imaps://imap.example.com", **extra) -> dict:
    return {"name": name, "type": "imap", "url": url, **extra}


@pytest.mark.parametrize("url,tls,expected", [
    ("imaps://imap.example.com", None, ("imap.example.com", 993, "implicit")),
    ("imaps://imap.example.com:10993/", None, ("imap.example.com", 10993, "implicit")),
    ("imap://imap.example.com", None, ("imap.example.com", 143, "starttls")),
    ("imap://127.0.0.1:1143", "none", ("127.0.0.1", 1143, "none")),
    ("imap://[::1]:1143", "none", ("::1", 1143, "none")),
    ("imap://localhost", "none", ("localhost", 143, "none")),
])
def test_backend_url_and_tls(url, tls, expected):
    b = cfg(imap(url=url, **({"tls": tls} if tls else {}))).backend[0]
    _, host, port = b.address()
    assert (host, port, b.tls_mode()) == expected


@pytest.mark.parametrize("backend,message", [
    (imap(url="imaps://h.example.com", tls="starttls"), "imaps:// means"),
    (imap(url="imaps://h.example.com", tls="none"), "imaps:// means"),
    (imap(url="imap://h.example.com", tls="implicit"), "needs an imaps:// url"),
    (imap(url="imap://h.example.com", tls="none"), "allow_plaintext"),
    (imap(url="imap://10.0.0.1", tls="none"), "allow_plaintext"),
    (imap(url="http://h.example.com"), "is not imaps://"),
    (imap(url="imap://user@h.example.com"), "is not imaps://"),
    (imap(url="imap://h.example.com/INBOX"), "is not imaps://"),
    (imap(url="imap://"), "is not imaps://"),
    (imap(url="imap://h.example.com:99999"), "is not imaps://"),
    (imap(ca_file="/nonexistent/ca.pem"), "ca_file"),
    (imap(timeout=0), "timeout"),
    (imap(password="x"), "password"),
])
def test_backend_errors(backend, message):
    with pytest.raises(ConfigError, match=message):
        cfg(backend)


def test_plaintext_allowed_when_operator_says_so():
    b = cfg(imap(url="imap://h.example.com", tls="none", allow_plaintext=True)).backend[0]
    assert b.tls_mode() == "none"


def test_limits_defaults_and_checks():
    limits = cfg().limits
    assert (limits.imap_connect_timeout, limits.imap_command_timeout) == (30, 120)
    assert limits.imap_fetch_chunk == 1024 * 1024 and limits.imap_fetch_memory == 64 * 1024 * 1024
    assert limits.imap_max_workers == 64 and limits.expunge_without_uidplus is False
    with pytest.raises(ConfigError, match="imap_fetch_memory"):
        cfg(limits={"imap_fetch_chunk": 1 << 20, "imap_fetch_memory": 1 << 19})


@pytest.mark.parametrize("routing,message", [
    ({"default": "a", "users": {"alice": "x"}}, "routing.users.alice: unknown backend 'x'"),
    ({"default": "a", "domains": {"example.org": "y"}}, "routing.domains.example.org: unknown backend 'y'"),
    ({"default": "z"}, "unknown backend 'z'"),
])
def test_routing_names_unknown_backend(routing, message):
    with pytest.raises(ConfigError, match=message):
        cfg(imap("a"), imap("b"), routing=routing)


class FakeStore:
    def __init__(self, name: str):
        self.name = name


def test_router_rules():
    config = cfg(imap("a"), imap("b"), imap("c"),
                 routing={"default": "a", "domains": {"Example.ORG": "b"}, "users": {"boss@example.org": "c"}})
    router = Router(config, {n: FakeStore(n) for n in "abc"})

    def where(login):
        r = router.route(login)
        return None if r is None else (r.store.name, r.user)

    assert where("alice") == ("a", "alice")
    assert where("alice@example.org") == ("b", "alice@example.org")
    assert where("alice@EXAMPLE.org") == ("b", "alice@EXAMPLE.org")
    assert where("boss@example.org") == ("c", "boss@example.org")  # user rule beats domain rule
    assert where("boss@example.org*admin") == ("c", "boss@example.org*admin")
    assert where("alice@example.org*admin") == ("b", "alice@example.org*admin")
    assert where("c:alice") == ("c", "alice")  # a configured backend name
    assert where("imap.example.com:alice") is None
    assert where("c:") is None


def test_split_master():
    assert split_master("alice") == ("", "alice")
    assert split_master("alice*admin") == ("alice", "admin")
    assert split_master("*admin") is None
    assert split_master("alice*") is None


def test_quote_and_uid_set():
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(ValueError):
        quote("a\r\nb")
    with pytest.raises(ValueError):
        quote("\u00e9")
    assert uid_set([9, 1, 2, 3, 7, 10, 2]) == "1:3,7,9:10"


def test_fetch_responses_matched_by_uid():
    items = [
        b"7 (FLAGS (\\Seen))",                           # unsolicited, no UID: ignored
        (b"1 (BODY[]<0> {6}", b'he")\r\n'), b" UID 5)",  # the UID after the literal
        b"2 (UID 6 RFC822.SIZE 10 FLAGS (\\Seen \\Deleted))",
        (b"3 (UID 9 BODY[] {0}", b""), b")",
        b"4 (UID 10 BODY[] NIL)",
        b'5 (UID 11 BODY[] "a\\"b")',
    ]
    got = fetch_by_uid(items)
    assert got[5]["BODY[]"] == b'he")\r\n'
    assert got[6]["FLAGS"] == ["\\Seen", "\\Deleted"] and got[6]["RFC822.SIZE"] == "10"
    assert got[9]["BODY[]"] == b"" and got[10]["BODY[]"] is None and got[11]["BODY[]"] == b'a"b'
    assert set(got) == {5, 6, 9, 10, 11}


def test_list_delimiter():
    assert list_delimiter(b'(\\Noselect) "." ""') == "."
    assert list_delimiter(b'(\\Noselect) "/" ""') == "/"
    assert list_delimiter(b'(\\Noselect) NIL ""') is None


def test_docs_examples_parse():
    """The TOML examples in docs/imap.md are valid configurations."""
    import re
    import tomllib
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "imap.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks
    example = tomllib.loads(blocks[0])
    config = parse_config(example)
    assert config.backend[0].tls_mode() == "implicit" and config.backend[0].address()[2] == 993
    routing = tomllib.loads(blocks[1])["routing"]
    names = {"mail", "org-mail", "exec-mail"}
    parse_config({"backend": [imap(n) for n in sorted(names)], "routing": routing})


def test_fetch_reader_refuses_garbage():
    from pop2gate.stores.imap.wire import ParseError

    with pytest.raises(ParseError):
        fetch_by_uid([b'1 (UID 5 BODY[] "unterminated)'])
    with pytest.raises(ParseError):
        fetch_by_uid([b"1 (UID 5 RFC822.SIZE)"])  # an item without a value
    got = fetch_by_uid([b'1 (UID 5 BODY[HEADER.FIELDS (FROM TO)]<0> "x")'])
    assert got[5]["BODY[HEADER.FIELDS (FROM TO)]"] == b"x"


def test_imap_backends_share_one_memory_budget():
    from pop2gate.stores import open_stores

    config = parse_config({
        "backend": [
            {"name": "a", "type": "imap", "url": "imaps://127.0.0.1"},
            {"name": "b", "type": "imap", "url": "imaps://127.0.0.1:1993"},
            {"name": "m", "type": "maildir", "path": "/nonexistent", "users_file": "/nonexistent/users"},
        ],
        "routing": {"default": "a"},
        "limits": {"imap_fetch_memory": 5 << 20},
    })
    stores = open_stores(config)
    assert stores["a"].budget is stores["b"].budget
    assert stores["a"].budget.limit == 5 << 20
