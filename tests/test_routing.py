"""Which backend serves which user (pop2gate.routing): the operator's rules, never the client's choice."""

from __future__ import annotations

from pop2gate.config import parse_config
from pop2gate.routing import Router


class FakeStore:
    def __init__(self, name: str):
        self.name = name


def router() -> Router:
    config = parse_config({
        "backend": [{"name": n, "type": "imap", "url": "imaps://imap.example.com", "selectable": n == "c"}
                    for n in "abc"],
        "routing": {"default": "a", "domains": {"Example.ORG": "b"}, "users": {"boss@example.org": "c"}},
    })
    return Router(config, {n: FakeStore(n) for n in "abc"})


def where(login: str) -> tuple[str, str] | None:
    r = router().route(login)
    return None if r is None else (r.store.name, r.user)


def test_router_rules():
    assert where("alice") == ("a", "alice")
    assert where("alice@example.org") == ("b", "alice@example.org")
    assert where("alice@EXAMPLE.org") == ("b", "alice@EXAMPLE.org")
    assert where("boss@example.org") == ("c", "boss@example.org")  # user rule beats domain rule
    assert where("boss@example.org*admin") == ("c", "boss@example.org*admin")
    assert where("alice@example.org*admin") == ("b", "alice@example.org*admin")
    assert where("c:alice") == ("c", "alice")  # a backend the operator marked selectable
    assert where("a:alice") == ("a", "alice")  # the backend the rules give alice
    assert where("b:alice") is None  # configured, but neither alice's nor selectable
    assert where("b:bob@example.org") == ("b", "bob@example.org")
    assert where("imap.example.com:alice") is None
    assert where("c:") is None


def test_a_client_named_host_is_no_backend():
    for login in ("otherhost:alice", "127.0.0.3:alice", ":alice", "d:alice", "A:alice"):
        assert where(login) is None, login
