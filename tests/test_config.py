"""The configuration (pop2gate.config): limits, routing tables, backends by type, error messages."""

from __future__ import annotations

import pytest

from pop2gate.config import ConfigError, parse_config
from pop2gate.stores.imap import ImapBackend
from pop2gate.stores.maildir import MaildirBackend


def cfg(*backends: dict, routing: dict | None = None, limits: dict | None = None):
    return parse_config({
        "limits": limits or {},
        "backend": list(backends) or [imap()],
        "routing": routing or {"default": "a"},
    })


def imap(name: str = "a", url: str = "imaps://imap.example.com", **extra) -> dict:
    return {"name": name, "type": "imap", "url": url, **extra}


def maildir(name: str = "m", **extra) -> dict:
    return {"name": name, "type": "maildir", "path": "/srv/mail", "users_file": "/srv/users", **extra}


def error(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return str(err.value)


def test_limits_defaults_and_checks():
    limits = cfg().limits
    assert (limits.imap_connect_timeout, limits.imap_command_timeout) == (30, 120)
    assert limits.imap_fetch_chunk == 1024 * 1024 and limits.imap_fetch_memory == 64 * 1024 * 1024
    assert limits.imap_max_logins == 32 and limits.expunge_without_uidplus is False
    with pytest.raises(ConfigError, match="imap_fetch_memory"):
        cfg(limits={"imap_fetch_chunk": 1 << 20, "imap_fetch_memory": 1 << 19})


@pytest.mark.parametrize("routing,message", [
    ({"default": "a", "users": {"alice": "x"}}, "routing.users.alice: unknown backend 'x'"),
    ({"default": "a", "domains": {"example.org": "y"}}, "routing.domains.example.org: unknown backend 'y'"),
    ({"default": "z"}, "routing.default: names unknown backend 'z'"),
])
def test_routing_names_unknown_backend(routing, message):
    with pytest.raises(ConfigError, match=message):
        cfg(imap("a"), imap("b"), routing=routing)


def test_backend_names_are_unique():
    assert "backend names must be unique: a" in error({"backend": [imap("a"), maildir("a")],
                                                       "routing": {"default": "a"}})


def test_each_table_becomes_its_types_model():
    config = cfg(imap("a"), maildir("m"), imap("b", url="imap://127.0.0.1", tls="none"))
    assert [type(b) for b in config.backend] == [ImapBackend, MaildirBackend, ImapBackend]



# The messages operators see (`config error: <this>`), word for word.
@pytest.mark.parametrize("backend,message", [
    ({"name": "a", "type": "nope"},
     "backend.0: Input tag 'nope' found using 'type' does not match any of the expected tags: 'maildir', 'imap'"),
    ({"name": "a"}, "backend.0: Unable to extract tag using discriminator 'type'"),
    ({"name": "a", "type": "imap"}, "backend.0.imap.url: Field required"),
    (imap(password=1), "backend.0.imap.password: Extra inputs are not permitted"),
    ({"name": "a", "type": "maildir", "path": "/x"}, "backend.0.maildir.users_file: Field required"),
    (maildir("a", z=1), "backend.0.maildir.z: Extra inputs are not permitted"),
    (imap(url="imap://h", tls="none"),
     "backend.0.imap: tls = \"none\" to non-loopback host 'h' needs allow_plaintext = true"),
    (imap(tls="bogus"), "backend.0.imap.tls: Input should be 'implicit', 'starttls' or 'none'"),
    (imap(timeout=0), "backend.0.imap.timeout: Input should be greater than 0"),
    ({"type": "imap", "url": "imaps://h"}, "backend.0.imap.name: Field required"),
    ({"name": 5, "type": "maildir", "path": 3, "users_file": "/y"},
     "backend.0.maildir.name: Input should be a valid string; "
     "backend.0.maildir.path: Input is not a valid path for <class 'pathlib.Path'>"),
])
def test_backend_error_messages(backend, message):
    assert error({"backend": [backend], "routing": {"default": "a"}}) == message


@pytest.mark.parametrize("data,message", [
    ({"backend": [], "routing": {"default": "a"}}, "backend: List should have at least 1 item after validation, not 0"),
    ({"backend": "x", "routing": {"default": "a"}}, "backend: Input should be a valid list"),
    ({"backend": ["x"], "routing": {"default": "a"}},
     "backend.0: Input should be a valid dictionary or object to extract fields from"),
    ({"backend": [imap()], "routing": {"default": "b"}}, "routing.default: names unknown backend 'b'"),
    ({"backend": [imap()]}, "routing: Field required"),
    ({"backend": [imap()], "routing": {"default": "a"}, "limits": {"imap_fetch_memory": 1}},
     "limits.imap_fetch_memory: Input should be greater than or equal to 4096"),
])
def test_config_error_messages(data, message):
    assert error(data) == message


def test_backend_named_is_gone():
    assert not hasattr(cfg(), "backend_named")
