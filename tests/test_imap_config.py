"""`[[backend]] type = "imap"` settings (pop2gate.stores.imap.config), through the whole config."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from pop2gate.config import ConfigError, parse_config
from pop2gate.stores.imap import ImapBackend


def cfg(*backends: dict):
    return parse_config({"backend": list(backends) or [imap()], "routing": {"default": "a"}})


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
    assert isinstance(b, ImapBackend)
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
    assert isinstance(b, ImapBackend) and b.tls_mode() == "none"


def test_the_model_checks_on_its_own():
    """The settings model is the backend's own: built directly, it checks the same."""
    b = ImapBackend(name="a", type="imap", url="imap://127.0.0.1:1143", tls="none")
    assert b.address() == ("imap", "127.0.0.1", 1143)
    with pytest.raises(ValueError, match="allow_plaintext"):
        ImapBackend(name="a", type="imap", url="imap://h.example.com", tls="none")


def test_docs_examples_parse():
    """The TOML examples in docs/imap.md are valid configurations."""
    text = (Path(__file__).parent.parent / "docs" / "imap.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks
    example = tomllib.loads(blocks[0])
    config = parse_config(example)
    backend = config.backend[0]
    assert isinstance(backend, ImapBackend)
    assert backend.tls_mode() == "implicit" and backend.address()[2] == 993
    routing = tomllib.loads(blocks[1])["routing"]
    names = {"mail", "org-mail", "exec-mail"}
    parse_config({"backend": [imap(n) for n in sorted(names)], "routing": routing})


def test_a_config_that_sets_the_removed_worker_pool_is_refused_naming_its_successor():
    base = {"backend": [imap()], "routing": {"default": "a"}}
    assert parse_config({**base, "limits": {"imap_max_logins": 3}}).limits.imap_max_logins == 3
    with pytest.raises(ConfigError, match=r"imap_max_workers.*imap_max_logins"):
        parse_config({**base, "limits": {"imap_max_workers": 64}})
