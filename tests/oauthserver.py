"""An OAuth2 authorization server for the tests, on loopback plain HTTP.

/authorize (any GET) approves at once (as `approve_as`) and redirects with a code; /token (any
POST but the two below) serves the authorization_code grant (PKCE S256 checked), refresh_token
(rotation, revocation) and the device grant; /device starts the device flow; /introspect
answers Dovecot's oauth2 passdb. Any path works for the first two, so a provider preset's
published paths can be checked against this server.
Every request is recorded (`requests`), so tests see what pop2gate sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

HOST = "127.0.0.1"


def _form(text: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


class OAuthServer:
    """`start()` then `stop()`; `url(path)` for the config; knobs below are plain attributes."""

    def __init__(self) -> None:
        self.approve_as = "alice"
        self.expires_in = 3600  # lifetime of each access token, seconds
        self.rotate = True  # each refresh hands out a new refresh token and retires the old one
        self.token_delay = 0.0  # seconds /token waits before answering (a slow endpoint)
        self.device_polls = 2  # polls answered authorization_pending before approval
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, params)
        self.lock = threading.Lock()
        self.codes: dict[str, dict[str, str]] = {}
        self.refresh: dict[str, str] = {}  # refresh token -> user
        self.access: dict[str, tuple[str, float]] = {}  # access token -> (user, expiry by the wall clock)
        self.devices: dict[str, list] = {}  # device code -> [user, polls left]
        self.issued: list[str] = []  # every refresh and access token handed out (for leak checks)
        self.httpd: ThreadingHTTPServer | None = None

    # Control

    def start(self) -> OAuthServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                owner._get(self)

            def do_POST(self) -> None:  # noqa: N802
                owner._post(self)

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def revoke(self, user: str) -> None:
        """Every grant of `user` ends (refresh and access tokens)."""
        with self.lock:
            self.refresh = {t: u for t, u in self.refresh.items() if u != user}
            self.access = {t: v for t, v in self.access.items() if v[0] != user}

    def token_requests(self, grant: str | None = None) -> list[dict[str, str]]:
        """The token endpoint's requests (any POST but /device and /introspect), of one grant type."""
        return [p for m, path, p in self.requests if m == "POST" and path not in ("/device", "/introspect")
                and (grant is None or p.get("grant_type") == grant)]

    def active(self, token: str) -> bool:
        with self.lock:
            entry = self.access.get(token)
        return entry is not None and entry[1] > time.time()

    # HTTP

    def _reply(self, h: BaseHTTPRequestHandler, status: int, body: dict | None = None,
               headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        u = urlsplit(h.path)
        params = _form(u.query)
        self.requests.append(("GET", u.path, params))
        # Any other path is the authorization endpoint: a provider preset's own path works too.
        if params.get("response_type") != "code" or params.get("code_challenge_method") != "S256":
            return self._reply(h, 400, {"error": "invalid_request"})
        code = secrets.token_urlsafe(16)
        with self.lock:
            self.codes[code] = {**params, "user": self.approve_as}
        target = params["redirect_uri"] + "?" + urlencode({"code": code, "state": params.get("state", "")})
        self._reply(h, 302, None, {"Location": target})

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        params = _form(h.rfile.read(length).decode())
        path = urlsplit(h.path).path
        self.requests.append(("POST", path, params))
        if path == "/device":
            code = secrets.token_urlsafe(16)
            with self.lock:
                self.devices[code] = [self.approve_as, self.device_polls]
            return self._reply(h, 200, {"device_code": code, "user_code": "WDJB-MJHT",
                                        "verification_uri": self.url("/activate"), "interval": 1,
                                        "expires_in": 60})
        if path == "/introspect":
            token = params.get("token", "")
            with self.lock:
                entry = self.access.get(token)
            if entry is None or entry[1] <= time.time():
                return self._reply(h, 200, {"active": False})
            return self._reply(h, 200, {"active": True, "username": entry[0]})
        # Any other path is the token endpoint: a provider preset's own path works too.
        if self.token_delay:
            time.sleep(self.token_delay)
        status, body = self._token(params)
        self._reply(h, status, body)

    def _issue(self, user: str, refresh: str | None = None) -> dict:
        access = secrets.token_urlsafe(24)
        with self.lock:
            self.access[access] = (user, time.time() + self.expires_in)
            if refresh is None:
                refresh = secrets.token_urlsafe(32)
                self.refresh[refresh] = user
            self.issued.extend([access, refresh])
        return {"access_token": access, "token_type": "Bearer", "expires_in": self.expires_in,
                "refresh_token": refresh, "scope": "mail"}

    def _token(self, p: dict[str, str]) -> tuple[int, dict]:
        grant = p.get("grant_type")
        if grant == "authorization_code":
            with self.lock:
                req = self.codes.pop(p.get("code", ""), None)
            if req is None or req["redirect_uri"] != p.get("redirect_uri") or req["client_id"] != p.get("client_id"):
                return 400, {"error": "invalid_grant"}
            digest = hashlib.sha256(p.get("code_verifier", "").encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != req["code_challenge"]:
                return 400, {"error": "invalid_grant", "error_description": "PKCE verifier does not match"}
            return 200, self._issue(req["user"])
        if grant == "refresh_token":
            token = p.get("refresh_token", "")
            with self.lock:
                user = self.refresh.get(token)
                if user is not None and self.rotate:
                    del self.refresh[token]
            if user is None:
                return 400, {"error": "invalid_grant", "error_description": "token revoked or expired"}
            return 200, self._issue(user, None if self.rotate else token)
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            with self.lock:
                entry = self.devices.get(p.get("device_code", ""))
                if entry is not None and entry[1] > 0:
                    entry[1] -= 1
                    return 400, {"error": "authorization_pending"}
                if entry is not None:
                    del self.devices[p["device_code"]]
            if entry is None:
                return 400, {"error": "expired_token"}
            return 200, self._issue(entry[0])
        return 400, {"error": "unsupported_grant_type"}
