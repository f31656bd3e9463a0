"""OAuth2 for IMAP backends with `auth = "oauth2"` (docs/oauth2.md).

`config` the `[backend.oauth2]` table and the provider presets, `sasl` the XOAUTH2 and
OAUTHBEARER initial responses, `tokenfile` the per-user file (password hash, encrypted
refresh token), `endpoint` the token endpoint client, `tokens` what a login needs (password
check, access token cache, refresh, rotation), `flows` how `pop2gate oauth add` obtains the
first grant (authorization code with PKCE, device, paste).
"""

from .config import PROVIDERS, OAuth2Settings

__all__ = ["PROVIDERS", "OAuth2Settings"]
