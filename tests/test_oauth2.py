"""OAuth2 parts alone: SASL initial responses, the token file's crypto, the [backend.oauth2] table."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from helpers import BIN
from pop2gate.config import ConfigError, parse_config
from pop2gate.oauth2 import PROVIDERS, tokenfile
from pop2gate.oauth2.endpoint import EndpointError, parse_tokens
from pop2gate.oauth2.flows import FlowError, authorization_url, code_from, pkce_pair
from pop2gate.oauth2.sasl import initial_response
from pop2gate.oauth2.tokenfile import TokenFile, TokenFileError

# --- SASL ----------------------------------------------------------------------------------


def test_xoauth2_initial_response():
    # The form Google's XOAUTH2 page gives, before base64.
    got = initial_response("xoauth2", "someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
                           "imap.gmail.com", 993)
    assert got == b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"


def test_oauthbearer_initial_response_escapes_the_authzid():
    # RFC 7628 section 4.1's example, with RFC 5801's escapes for , and = in the name.
    got = initial_response("oauthbearer", "user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
                           "server.example.com", 143)
    assert got == (b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
                   b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01")
    assert initial_response("oauthbearer", "a,b=c", "t", "h", 1).startswith(b"n,a=a=2Cb=3Dc,\x01")


# --- the token file ------------------------------------------------------------------------

def test_token_file_opens_only_with_the_password(tmp_path):
    tf = TokenFile.create("alice", "alice@example.com", "pw one", "refresh-SECRET")
    tokenfile.write(tmp_path, tf)
    text = (tmp_path / "alice").read_text()
    assert "refresh-SECRET" not in text and "pw one" not in text
    assert stat.S_IMODE((tmp_path / "alice").stat().st_mode) == 0o600
    back = tokenfile.read(tmp_path, "alice")
    assert back is not None and back.check_password("pw one") and not back.check_password("pw two")
    assert back.open(back.key("pw one")) == "refresh-SECRET"
    with pytest.raises(TokenFileError):
        back.open(back.key("pw two"))


def test_token_file_is_bound_to_its_user(tmp_path):
    tf = TokenFile.create("alice", "alice", "pw", "refresh-SECRET")
    data = json.loads(tf.dumps())
    data["imap_user"] = "mallory"  # another mailbox's login with alice's sealed token
    forged = TokenFile.loads(json.dumps(data))
    with pytest.raises(TokenFileError):
        forged.open(forged.key("pw"))
    (tmp_path / "bob").write_text(tf.dumps())  # alice's file under bob's name
    with pytest.raises(TokenFileError):
        tokenfile.read(tmp_path, "bob")


def test_reseal_keeps_the_key_and_changes_the_nonce():
    tf = TokenFile.create("alice", "alice", "pw", "one")
    key = tf.key("pw")
    again = tf.reseal(key, "two")
    assert again.open(key) == "two" and again.sealed[:12] != tf.sealed[:12]


@pytest.mark.parametrize("text", ["", "{}", "[]", '{"format": "pop2gate-oauth2 1"}', "x" * 10])
def test_malformed_token_file_is_an_error(tmp_path, text):
    (tmp_path / "alice").write_text(text)
    with pytest.raises(TokenFileError):
        tokenfile.read(tmp_path, "alice")


def test_token_file_names_are_user_names(tmp_path):
    assert tokenfile.read(tmp_path, "../etc/passwd") is None
    assert tokenfile.read(tmp_path, ".hidden") is None
    assert tokenfile.read(tmp_path, "nobody-here") is None


# --- the token endpoint's answers ----------------------------------------------------------

def test_token_response_parsing():
    t = parse_tokens({"access_token": "a", "token_type": "Bearer", "expires_in": 3599, "refresh_token": "r"})
    assert (t.access_token, t.expires_in, t.refresh_token) == ("a", 3599.0, "r")
    assert parse_tokens({"access_token": "a", "token_type": "bearer"}).refresh_token is None
    for bad in ({}, {"access_token": ""}, {"access_token": "a", "token_type": "mac"},
                {"access_token": "a", "expires_in": "soon"}):
        with pytest.raises(EndpointError):
            parse_tokens(bad)


# --- flows, pure parts ---------------------------------------------------------------------

def test_authorization_url_and_redirect():
    settings = oauth2_settings(provider="google", client_id="cid")
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128 and "=" not in challenge
    url = authorization_url(settings, "http://127.0.0.1:5000/", "st", challenge)
    assert url.startswith("https://accounts.google.com/o/oauth2/v2/auth?response_type=code&client_id=cid&")
    assert "scope=https%3A%2F%2Fmail.google.com%2F" in url and "access_type=offline" in url
    assert code_from("code=c1&state=st", "st") == "c1"
    with pytest.raises(FlowError, match="state"):
        code_from("code=c1&state=other", "st")
    with pytest.raises(FlowError, match="access_denied"):
        code_from("error=access_denied&state=st", "st")


# --- [backend.oauth2] ----------------------------------------------------------------------

def config(oauth2: dict | None, **backend) -> dict:
    b = {"name": "g", "type": "imap", "url": "imaps://imap.gmail.com", **backend}
    if oauth2 is not None:
        b["oauth2"] = oauth2
    return {"backend": [b], "routing": {"default": "g"}}


def oauth2_settings(**keys):
    data = config({"tokens_dir": "/var/lib/pop2gate/tokens", **keys}, auth="oauth2")
    return parse_config(data).backend[0].oauth2


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_provider_fills_its_values_and_keys_override_them(provider):
    s = oauth2_settings(provider=provider, client_id="cid")
    p = PROVIDERS[provider]
    assert (s.authorize_url, s.token_url, s.scope, s.mechanism) == (p.authorize_url, p.token_url, p.scope,
                                                                    p.mechanism)
    s = oauth2_settings(provider=provider, client_id="cid", scope="other", mechanism="oauthbearer")
    assert (s.scope, s.mechanism, s.token_url) == ("other", "oauthbearer", p.token_url)


@pytest.mark.parametrize("data,key", [
    (config({"provider": "google", "client_id": "c", "tokens_dir": "/t", "bogus": 1}, auth="oauth2"),
     "oauth2.bogus"),
    (config({"client_id": "c", "tokens_dir": "/t"}, auth="oauth2"), "oauth2.authorize_url"),
    (config({"provider": "yahoo", "client_id": "c", "tokens_dir": "/t"}, auth="oauth2"), "oauth2.provider"),
    (config({"provider": "google", "client_id": "c", "tokens_dir": "/t", "mechanism": "plain"}, auth="oauth2"),
     "oauth2.mechanism"),
    (config(None, auth="oauth2"), "needs a [backend.oauth2] table"),
    (config({"provider": "google", "client_id": "c", "tokens_dir": "/t"}), 'needs auth = "oauth2"'),
    (config({"provider": "google", "client_id": "c", "tokens_dir": "/t",
             "token_url": "http://auth.example.com/token"}, auth="oauth2"), "plain http only to a loopback"),
    (config({"provider": "google", "client_id": "c", "tokens_dir": "relative"}, auth="oauth2"), "absolute"),
])
def test_bad_oauth2_tables_name_the_problem(data, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace(".", r"\.")):
        parse_config(data)


def test_loopback_http_is_allowed():
    s = oauth2_settings(client_id="c", authorize_url="http://127.0.0.1:8080/a", token_url="http://localhost/t",
                        scope="s")
    assert s.token_url == "http://localhost/t"


def test_client_secret_file_must_be_private(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        oauth2_settings(provider="google", client_id="c", client_secret_file=str(secret))
    os.chmod(secret, 0o600)
    s = oauth2_settings(provider="google", client_id="c", client_secret_file=str(secret))
    assert s.client_secret() == "s3cret"


def test_wrong_key_exits_2(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('[[backend]]\nname = "g"\ntype = "imap"\nurl = "imaps://imap.gmail.com"\nauth = "oauth2"\n'
                   '[backend.oauth2]\nprovider = "google"\nclient_id = "c"\ntokens_dir = "/t"\nscoop = "x"\n'
                   '[routing]\ndefault = "g"\n')
    out = subprocess.run([str(BIN / "pop2gate"), "oauth", "list", "-c", str(cfg)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "oauth2.scoop" in out.stderr


async def test_token_endpoint_certificate_is_verified(tmp_path):
    """An https token endpoint whose certificate no trusted CA signed is refused, not used."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from dovecot import make_ca
    from pop2gate.oauth2.endpoint import Endpoint

    make_ca(tmp_path)
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    endpoint = Endpoint(oauth2_settings(client_id="c", scope="s", authorize_url="https://127.0.0.1/a",
                                        token_url=f"https://127.0.0.1:{httpd.server_address[1]}/token"))
    try:
        with pytest.raises(EndpointError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await endpoint.refresh("refresh-SECRET")
    finally:
        await endpoint.aclose()
        httpd.shutdown()
        httpd.server_close()
    assert seen == []  # no request reached it


async def test_a_cancelled_wait_for_the_token_lock_lets_it_go(tmp_path):
    """A login cut while it waits for another instance's refresh must not keep the lock once it
    comes (it would block every later refresh of that user in this process)."""
    import asyncio

    from pop2gate.oauth2.tokens import _locked

    other = tokenfile.lock(tmp_path, "alice")  # another instance is refreshing
    waiting = asyncio.create_task(_locked(tmp_path, "alice"))
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    os.close(other)  # the other instance is done; the cancelled wait gets the lock, then lets go
    fd = await asyncio.wait_for(_locked(tmp_path, "alice"), 10)
    os.close(fd)
