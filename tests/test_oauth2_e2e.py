"""OAuth2 backends end to end, all real on loopback: `pop2gate oauth add` as a process against
the test authorization server (oauthserver.py), then POP2 through pop2gate to a Dovecot that
accepts only bearer tokens for these logins (dovecot_oauth.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from dovecot import HOST
from helpers import BIN, Gateways, toml_value
from pop2gate.config import parse_config
from pop2gate.oauth2 import PROVIDERS
from pop2gate.pop2.client import AsyncClient, Pop2Error

POP2GATE = str(BIN / "pop2gate")
PASSWORD = "pop2 pass"  # the POP2 password set by `oauth add`, a space inside
MESSAGES = [
    b"Subject: one\r\n\r\n.\r\n..\r\n.leading dot\r\nend\r\n",
    b"Subject: two\r\n\r\n" + b"x" * 5000 + b"\r\n",
    b"Subject: three\r\n\r\nno final line end",
]


def wire(data: bytes) -> bytes:
    return data if data.endswith(b"\r\n") else data + b"\r\n"


class Env:
    """A config with one oauth2 backend ("dc") on the test Dovecot, written out for the CLI."""

    def __init__(self, root: Path, server, dovecot, **oauth2: object) -> None:
        self.root, self.server, self.dovecot = root, server, dovecot
        self.tokens_dir = root / "tokens"
        self.oauth2: dict[str, object] = {
            "authorize_url": server.url("/authorize"), "token_url": server.url("/token"),
            "client_id": "pop2gate-test", "scope": "mail offline", "tokens_dir": str(self.tokens_dir),
            "timeout": 2, **oauth2}
        self.limits = {"bad_login_delay": 0.05, "close_linger": 0.1}

    def data(self) -> dict:
        return {
            "server": {"hostname": "test.invalid", "listen": ["127.0.0.1:0"]},
            "limits": self.limits,
            "backend": [{"name": "dc", "type": "imap", "url": f"imap://{HOST}:{self.dovecot.port}",
                         "tls": "none", "auth": "oauth2", "oauth2": self.oauth2}],
            "routing": {"default": "dc"},
        }

    def write(self) -> Path:
        d = self.data()
        lines = []
        for table in ("server", "limits", "routing"):
            lines.append(f"[{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in d[table].items()]
        b = dict(d["backend"][0])
        oauth2 = b.pop("oauth2")
        lines.append("[[backend]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in b.items()]
        lines.append("[backend.oauth2]")
        lines += [f"{k} = {toml_value(v)}" for k, v in oauth2.items() if v is not None]
        path = self.root / "pop2gate.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def add(self, user: str = "alice", *extra: str, password: str = PASSWORD) -> subprocess.Popen:
        """`pop2gate oauth add USER` running, the password already on its stdin."""
        proc = subprocess.Popen([POP2GATE, "oauth", "add", user, "-c", str(self.write()), *extra],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdin is not None
        proc.stdin.write(password + "\n")
        proc.stdin.flush()
        return proc

    def add_through_browser(self, user: str = "alice", *extra: str) -> str:
        """`oauth add` through the loopback redirect: follow the printed URL as a browser would."""
        proc = self.add(user, *extra)
        url = wait_for_line(proc, "http")
        page = browser(url)
        assert page.status_code == 200 and "authorized" in page.text
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        return url + "\n" + out


def browser(url: str, follow: bool = True) -> httpx.Response:
    """What a browser does with the printed URL: GET it, following the redirect unless told not to."""
    return httpx.get(url, follow_redirects=follow, timeout=10)


def wait_for_line(proc: subprocess.Popen, start: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(start):
            return line.strip()
    raise AssertionError(f"no line starting {start!r}; stderr: {proc.stderr.read() if proc.stderr else ''}")


@pytest.fixture
def env(tmp_path, oauth_server, oauth_dovecot):
    oauth_server.expires_in, oauth_server.rotate, oauth_server.token_delay = 3600, True, 0.0
    oauth_dovecot.clear("alice")
    return Env(tmp_path, oauth_server, oauth_dovecot)


@pytest.fixture
async def gate():
    gateways = Gateways()

    async def start(env: Env) -> tuple[str, int]:
        host, port, _ = await gateways.start(parse_config(env.data()))
        return host, port

    yield start
    await gateways.aclose()


async def client(addr: tuple[str, int]) -> AsyncClient:
    reader, writer = await asyncio.open_connection(*addr)
    return await AsyncClient.from_streams(reader, writer, timeout=30)


async def drain(addr: tuple[str, int], expected: list[bytes], pause: float = 0) -> None:
    """HELO, then READ/RETR/ACKD every message byte for byte, then QUIT; `pause` after HELO."""
    c = await client(addr)
    assert await c.helo("alice", PASSWORD) == len(expected)
    if pause:
        await asyncio.sleep(pause)
    for n, data in enumerate(expected, 1):
        assert await c.read(n) == len(wire(data))
        assert await c.retr() == wire(data)
        await c.ackd()
    await c.quit()


async def bad_login(addr: tuple[str, int], password: str = PASSWORD) -> str:
    c = await client(addr)
    with pytest.raises(Pop2Error) as err:
        await c.helo("alice", password)
    return str(err.value)


def fill(dovecot, messages: list[bytes] = MESSAGES) -> list[int]:
    return [dovecot.append("alice", m) for m in messages]


# --- oauth add, then a drain ---------------------------------------------------------------

async def test_add_through_loopback_redirect_then_drain_byte_exact(env, gate, oauth_server, oauth_dovecot):
    oauth_server.requests.clear()
    printed = env.add_through_browser()
    authorize = [p for m, path, p in oauth_server.requests if m == "GET"][-1]
    assert authorize["client_id"] == "pop2gate-test" and authorize["scope"] == "mail offline"
    assert authorize["code_challenge_method"] == "S256" and authorize["redirect_uri"].startswith("http://127.0.0.1:")
    exchange = oauth_server.token_requests("authorization_code")[-1]
    assert exchange["code_verifier"] and exchange["redirect_uri"] == authorize["redirect_uri"]
    path = env.tokens_dir / "alice"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "stored the grant of alice" in printed
    fill(oauth_dovecot)
    await drain(await gate(env), MESSAGES)
    assert oauth_dovecot.uids("alice") == {}
    assert "method=XOAUTH2" in oauth_dovecot.log()


async def test_token_file_holds_no_token_in_clear(env, oauth_server):
    env.add_through_browser()
    text = (env.tokens_dir / "alice").read_text()
    assert oauth_server.issued
    for token in oauth_server.issued:
        assert token not in text
    assert PASSWORD not in text


async def test_access_token_expiring_mid_session_and_between_sessions(env, gate, oauth_server, oauth_dovecot):
    oauth_server.expires_in = 2
    issued = len(oauth_server.issued)
    env.add_through_browser()
    addr = await gate(env)
    fill(oauth_dovecot, MESSAGES[:1])
    refreshes = len(oauth_server.token_requests("refresh_token"))
    # Mid-session: the token that opened the IMAP session expires; the session goes on.
    await drain(addr, MESSAGES[:1], pause=2.5)
    assert not any(oauth_server.active(t) for t in oauth_server.issued[issued:])
    # Between sessions: the cached token has expired, so the next login refreshes.
    fill(oauth_dovecot, MESSAGES[1:2])
    await drain(addr, MESSAGES[1:2])
    assert len(oauth_server.token_requests("refresh_token")) == refreshes + 2
    assert oauth_dovecot.uids("alice") == {}


async def test_access_token_is_cached_until_shortly_before_it_expires(env, gate, oauth_server):
    env.add_through_browser()
    addr = await gate(env)
    before = len(oauth_server.token_requests())
    await drain(addr, [])
    await drain(addr, [])
    assert len(oauth_server.token_requests()) == before + 1


async def test_rotated_refresh_token_is_persisted(env, gate, oauth_server, oauth_dovecot):
    env.add_through_browser()
    first = (env.tokens_dir / "alice").read_text()
    await drain(await gate(env), [])  # refreshes: the server rotates and retires the old token
    second = (env.tokens_dir / "alice").read_text()
    assert second != first
    assert stat.S_IMODE((env.tokens_dir / "alice").stat().st_mode) == 0o600
    # A fresh gateway (nothing cached) can only log in with the rotated token from the file.
    fill(oauth_dovecot, MESSAGES[:1])
    await drain(await gate(env), MESSAGES[:1])
    (env.tokens_dir / "alice").write_text(first)  # the retired token: the grant is gone
    assert "Bad login" in await bad_login(await gate(env))


async def test_revoked_grant_is_bad_login_with_operator_hint(env, gate, oauth_server, oauth_dovecot, caplog):
    env.add_through_browser()
    uids = fill(oauth_dovecot, MESSAGES[:1])
    oauth_server.revoke("alice")
    caplog.set_level(logging.INFO)
    assert "Bad login" in await bad_login(await gate(env))
    assert "run `pop2gate oauth add alice` again" in caplog.text
    assert sorted(oauth_dovecot.uids("alice")) == uids


async def test_wrong_password_is_bad_login_with_delay_and_no_token_request(env, gate, oauth_server, caplog):
    env.add_through_browser()
    addr = await gate(env)
    before = len(oauth_server.requests)
    caplog.set_level(logging.INFO)
    assert "Bad login" in await bad_login(addr, "not the password")
    assert len(oauth_server.requests) == before
    assert "bad login" in caplog.text and "delay=0.05s" in caplog.text


@pytest.mark.parametrize("fault", ["down", "slow"])
async def test_token_endpoint_down_or_slow_is_mail_server_error(env, gate, oauth_server, oauth_dovecot, fault):
    env.add_through_browser()
    uids = fill(oauth_dovecot, MESSAGES[:2])
    if fault == "down":
        import socket

        with socket.socket() as s:
            s.bind((HOST, 0))
            env.oauth2["token_url"] = f"http://{HOST}:{s.getsockname()[1]}/token"  # nothing listens
    else:
        oauth_server.token_delay = 3  # longer than the backend's timeout = 2
    try:
        assert "Mail server error" in await bad_login(await gate(env))
    finally:
        oauth_server.token_delay = 0
    assert sorted(oauth_dovecot.uids("alice")) == uids
    assert not any(r"\Deleted" in f for f in oauth_dovecot.uids("alice").values())


async def test_debug_logs_hold_no_token_or_password(env, gate, oauth_server, oauth_dovecot, caplog):
    caplog.set_level(logging.DEBUG)
    printed = env.add_through_browser()
    fill(oauth_dovecot, MESSAGES[:1])
    addr = await gate(env)
    await drain(addr, MESSAGES[:1])
    assert "Bad login" in await bad_login(addr, "wrong " + PASSWORD)
    assert "new access token for 'alice'" in caplog.text  # debug lines were recorded
    for token in oauth_server.issued:
        assert token not in caplog.text and token not in printed
    assert PASSWORD not in caplog.text


# --- the other flows -----------------------------------------------------------------------

async def test_device_flow(env, gate, oauth_server, oauth_dovecot):
    env.oauth2["device_url"] = oauth_server.url("/device")
    proc = env.add()
    line = wait_for_line(proc, "open ")
    assert line == f"open {oauth_server.url('/activate')} and enter the code WDJB-MJHT"
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    polls = oauth_server.token_requests("urn:ietf:params:oauth:grant-type:device_code")
    assert len(polls) >= 3  # two authorization_pending answers, then the grant
    fill(oauth_dovecot, MESSAGES[:1])
    await drain(await gate(env), MESSAGES[:1])


async def test_paste_flow(env, gate, oauth_server, oauth_dovecot):
    proc = env.add("alice", "--paste")
    url = wait_for_line(proc, "http")
    answer = browser(url, follow=False)  # the browser, on another machine
    assert answer.status_code == 302
    pasted = answer.headers["location"]
    assert pasted.startswith("http://127.0.0.1/?code=")
    out, err = proc.communicate(pasted + "\n", timeout=30)
    assert proc.returncode == 0, err
    fill(oauth_dovecot, MESSAGES[:1])
    await drain(await gate(env), MESSAGES[:1])


def test_paste_of_a_foreign_url_is_refused(env, oauth_server):
    proc = env.add("alice", "--paste")
    wait_for_line(proc, "http")
    out, err = proc.communicate("http://127.0.0.1/?code=abc&state=not-ours\n", timeout=30)
    assert proc.returncode == 1 and "state does not match" in err
    assert not (env.tokens_dir / "alice").exists()


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_provider_preset_sends_its_published_paths_scope_and_mechanism(
        env, gate, oauth_server, oauth_dovecot, provider):
    preset = PROVIDERS[provider]
    # The preset's own paths on the local server: only the host differs from what is published.
    env.oauth2 = {"provider": provider, "client_id": "pop2gate-test", "tokens_dir": str(env.tokens_dir),
                  "authorize_url": oauth_server.url(urlsplit(preset.authorize_url).path),
                  "token_url": oauth_server.url(urlsplit(preset.token_url).path)}
    oauth_server.requests.clear()
    env.add_through_browser()
    method, path, authorize = oauth_server.requests[0]
    assert (method, path) == ("GET", urlsplit(preset.authorize_url).path)
    assert authorize["scope"] == preset.scope
    for key, value in preset.authorize_params.items():
        assert authorize[key] == value
    token_paths = {path for m, path, _ in oauth_server.requests if m == "POST"}
    assert token_paths == {urlsplit(preset.token_url).path}
    size = len(oauth_dovecot.log())
    fill(oauth_dovecot, MESSAGES[:1])
    await drain(await gate(env), MESSAGES[:1])
    assert f"method={preset.mechanism.upper()}" in oauth_dovecot.log()[size:]


async def test_oauthbearer_mechanism(env, gate, oauth_dovecot):
    env.oauth2["mechanism"] = "oauthbearer"
    env.add_through_browser()
    size = len(oauth_dovecot.log())
    fill(oauth_dovecot, MESSAGES[:1])
    await drain(await gate(env), MESSAGES[:1])
    assert "method=OAUTHBEARER" in oauth_dovecot.log()[size:]


def test_published_provider_values():
    """The presets, as Google and Microsoft publish them (sources in docs/oauth2.md)."""
    google, microsoft = PROVIDERS["google"], PROVIDERS["microsoft"]
    assert google.authorize_url == "https://accounts.google.com/o/oauth2/v2/auth"
    assert google.token_url == "https://oauth2.googleapis.com/token"
    assert google.scope == "https://mail.google.com/" and google.mechanism == "xoauth2"
    assert microsoft.authorize_url == "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
    assert microsoft.token_url == "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    assert microsoft.scope == "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
    assert microsoft.mechanism == "xoauth2"


# --- list and remove -----------------------------------------------------------------------

def test_list_and_remove(env):
    env.add_through_browser("alice", "--imap-user", "alice")
    cfg = str(env.write())
    out = subprocess.run([POP2GATE, "oauth", "list", "-c", cfg], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "alice\talice\n"
    gone = subprocess.run([POP2GATE, "oauth", "remove", "alice", "-c", cfg], capture_output=True, text=True,
                          timeout=30)
    assert gone.returncode == 0 and not (env.tokens_dir / "alice").exists()
    again = subprocess.run([POP2GATE, "oauth", "remove", "alice", "-c", cfg], capture_output=True, text=True,
                           timeout=30)
    assert again.returncode == 1 and "no grant stored" in again.stderr


def test_add_as_root_hands_the_file_to_the_serving_user(env):
    assert os.geteuid() == 0, "make test runs as root"
    env.add_through_browser()
    nobody = pwd.getpwnam("nobody")
    for path, mode in ((env.tokens_dir, 0o700), (env.tokens_dir / "alice", 0o600)):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, nobody.pw_gid, mode)


def test_served_as_nobody_after_oauth_add_as_root(tmp_path, oauth_server, oauth_dovecot):
    """`oauth add` as root, `serve` dropping to nobody: the server reads the grant, refreshes over
    HTTP and stores the rotated token as nobody, and imports nothing after the drop."""
    from helpers import free_port, wait_port
    from pop2gate.pop2.client import Client
    from test_privileges import imports_after_the_drop, serve, stop

    assert os.geteuid() == 0, "make test runs as root"
    root = Path(tempfile.mkdtemp(prefix="p2g-oauth-"))
    os.chmod(root, 0o755)  # pytest's tmp_path is closed to nobody
    try:
        env = Env(root, oauth_server, oauth_dovecot)
        oauth_dovecot.clear("alice")
        env.add_through_browser()
        before = (env.tokens_dir / "alice").read_text()
        fill(oauth_dovecot, MESSAGES[:1])
        port = free_port()
        cfg = env.write()
        cfg.write_text(cfg.read_text().replace('listen = ["127.0.0.1:0"]', f'listen = ["127.0.0.1:{port}"]')
                       .replace("[server]\n", '[server]\nuser = "nobody"\n'))
        proc = serve(BIN / "pop2gate", cfg, PYTHONPROFILEIMPORTTIME="1")
        try:
            wait_port(port, proc)
            with Client.connect("127.0.0.1", port, timeout=20) as c:
                assert c.helo("alice", PASSWORD) == 1
                assert c.read() == len(wire(MESSAGES[0])) and c.retr() == wire(MESSAGES[0])
                c.ackd()
                c.quit()
        finally:
            err = stop(proc)
        assert "Traceback" not in err, err
        assert "stored the rotated refresh token" in err
        after = env.tokens_dir / "alice"
        assert after.read_text() != before
        st = after.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pwd.getpwnam("nobody").pw_uid, 0o600)
        assert oauth_dovecot.uids("alice") == {}
        # anyio tries an optional module that is not installed (sniffio) on each call: a lookup
        # that fails the same way before and after the drop; any module that exists must be loaded.
        late = [m for m in imports_after_the_drop(err) if importlib.util.find_spec(m) is not None]
        assert late == [], late
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_access_token_the_imap_server_refuses_is_dropped(env, gate, oauth_server, oauth_dovecot):
    """A cached token the provider no longer takes: that login is `- Bad login` (not a hang on
    the server's error challenge), and the next one gets a fresh token."""
    env.add_through_browser()
    addr = await gate(env)
    await drain(addr, [])  # the access token is cached now
    with oauth_server.lock:
        oauth_server.access.clear()  # every access token ends early; the grant stays
    assert "Bad login" in await bad_login(addr)
    fill(oauth_dovecot, MESSAGES[:1])
    await drain(addr, MESSAGES[:1])


async def test_two_instances_refreshing_at_once_keep_the_grant(env, gate, oauth_server, oauth_dovecot):
    """Scale-out: two gateways (own caches) sharing tokens_dir log the same user in at once, with
    a token endpoint that rotates and answers slowly. One refreshes and stores the rotated token;
    the other waits for it and uses the stored one, instead of spending the retired token."""
    env.add_through_browser()
    first, second = await gate(env), await gate(env)
    oauth_server.token_delay = 0.5
    try:
        await asyncio.gather(drain(first, []), drain(second, []))
    finally:
        oauth_server.token_delay = 0
    await drain(await gate(env), [])  # and the file still holds a live grant
