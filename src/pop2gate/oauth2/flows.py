"""How `pop2gate oauth add` obtains a grant: the authorization code flow with PKCE (RFC 7636)
and a loopback redirect (RFC 8252), the same with the redirected URL pasted back (a machine
without a browser), or the device flow (RFC 8628) where the backend names a `device_url`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

from .config import OAuth2Settings
from .endpoint import Endpoint, EndpointError, GrantError, Tokens

MAX_REQUEST = 16 * 1024  # the redirect request the loopback listener reads, at most
PAGE = b"pop2gate: %s. You may close this window.\r\n"


class FlowError(Exception):
    """The authorization did not complete; the text says why."""


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorization_url(settings: OAuth2Settings, redirect_uri: str, state: str, challenge: str) -> str:
    """The URL the user opens: the provider's consent page for this client, scope and PKCE challenge."""
    query = urlencode({"response_type": "code", "client_id": settings.client_id, "redirect_uri": redirect_uri,
                       "scope": settings.scope, "state": state, "code_challenge": challenge,
                       "code_challenge_method": "S256", **settings.authorize_params()})
    sep = "&" if urlsplit(settings.authorize_url).query else "?"
    return f"{settings.authorize_url}{sep}{query}"


def code_from(query: str, state: str) -> str:
    """The code of a redirect's query; FlowError for a refusal or a state that is not ours."""
    params = {k: v[0] for k, v in parse_qs(query).items()}
    if "error" in params:
        raise FlowError(f"authorization refused: {params['error']} {params.get('error_description', '')}".strip())
    if params.get("state") != state:
        raise FlowError("the redirect's state does not match this request (an old or foreign URL)")
    code = params.get("code")
    if not code:
        raise FlowError("the redirect carries no code")
    return code


def _granted(tokens: Tokens) -> Tokens:
    if tokens.refresh_token is None:
        raise FlowError("the provider gave no refresh token: check the scope (offline_access) and "
                        "the client's registration")
    return tokens


async def _exchange(endpoint: Endpoint, code: str, redirect_uri: str, verifier: str) -> Tokens:
    try:
        return _granted(await endpoint.exchange_code(code, redirect_uri, verifier))
    except (GrantError, EndpointError) as err:
        raise FlowError(f"token endpoint: {err}") from None


async def _await_redirect(state: str, timeout: float, show: Callable[[str], None],
                          url_for: Callable[[str], str]) -> tuple[str, str]:
    """Listen on 127.0.0.1 on a free port; show the URL; return (code, redirect_uri)."""
    got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        target = head.split(b"\r\n", 1)[0].split(b" ")
        query = urlsplit(target[1].decode("ascii", "replace")).query if len(target) == 3 else ""
        status, text = b"404 Not Found", b"not the authorization redirect"
        if query and not got.done():
            try:
                got.set_result(code_from(query, state))
                status, text = b"200 OK", b"authorized; pop2gate has the grant"
            except FlowError as err:
                if "state" not in str(err):
                    got.set_exception(err)
                status, text = b"400 Bad Request", str(err).encode()
        body = PAGE % text
        writer.write(b"HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (status, len(body), body))
        try:
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=MAX_REQUEST)
    async with server:
        redirect_uri = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        show(url_for(redirect_uri))
        try:
            return await asyncio.wait_for(got, timeout), redirect_uri
        except TimeoutError:
            raise FlowError(f"no redirect within {timeout:g}s") from None


async def loopback(endpoint: Endpoint, show: Callable[[str], None], timeout: float) -> Tokens:
    """Authorization code with PKCE, redirected to a listener on 127.0.0.1 (RFC 8252)."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)

    def url_for(redirect_uri: str) -> str:
        return authorization_url(endpoint.settings, redirect_uri, state, challenge)

    code, redirect_uri = await _await_redirect(state, timeout, show, url_for)
    return await _exchange(endpoint, code, redirect_uri, verifier)


async def paste(endpoint: Endpoint, show: Callable[[str], None], read_line: Callable[[], str]) -> Tokens:
    """Authorization code with PKCE, the redirected URL copied from the browser and pasted back."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    redirect_uri = "http://127.0.0.1/"
    show(authorization_url(endpoint.settings, redirect_uri, state, challenge))
    pasted = (await asyncio.to_thread(read_line)).strip()
    if not pasted:
        raise FlowError("no URL pasted")
    return await _exchange(endpoint, code_from(urlsplit(pasted).query, state), redirect_uri, verifier)


async def device(endpoint: Endpoint, show: Callable[[str], None], timeout: float) -> Tokens:
    """The device flow: show the code and where to enter it, then poll the token endpoint."""
    try:
        start = await endpoint.device_start()
    except (GrantError, EndpointError) as err:
        raise FlowError(f"device endpoint: {err}") from None
    where = start.get("verification_uri") or start.get("verification_url")
    show(f"open {where} and enter the code {start['user_code']}")
    interval = _seconds(start.get("interval"), 5)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(timeout, _seconds(start.get("expires_in"), timeout))
    while loop.time() + interval < deadline:
        await asyncio.sleep(interval)
        try:
            return _granted(await endpoint.device_poll(start["device_code"]))
        except GrantError as err:
            if err.code == "slow_down":
                interval += 5
            elif err.code != "authorization_pending":
                raise FlowError(f"authorization refused: {err}") from None
        except EndpointError as err:
            raise FlowError(f"token endpoint: {err}") from None
    raise FlowError("the code was not entered in time")


def _seconds(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) and value > 0 else default
