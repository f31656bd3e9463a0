"""The private Dovecot (dovecot.py) with OAuth2 logins: XOAUTH2 and OAUTHBEARER checked by
Dovecot's oauth2 passdb against the test authorization server's /introspect (oauthserver.py).
Password logins (PLAIN, LOGIN) still work, so the test side fills and reads mailboxes as before."""

from __future__ import annotations

from dovecot import Dovecot

OAUTH2_CONF = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 5000
"""


class OAuthDovecot(Dovecot):
    """Dovecot whose IMAP accepts OAuth2 bearer tokens that `introspection_url` says are active."""

    def __init__(self, introspection_url: str) -> None:
        super().__init__()
        self.introspection_url = introspection_url

    def _set_up(self) -> None:
        super()._set_up()
        conf = self.root / "dovecot.conf"
        (self.root / "oauth2.conf").write_text(OAUTH2_CONF.format(url=self.introspection_url))
        text = conf.read_text()
        text = text.replace("auth_mechanisms = plain login\n", "auth_mechanisms = plain login xoauth2 oauthbearer\n")
        text = text.replace("  driver = passwd-file\n  args = scheme=PLAIN username_format",
                            "  driver = passwd-file\n  mechanisms = plain login\n  args = scheme=PLAIN username_format")
        text += ("passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                 f"  args = {self.root}/oauth2.conf\n}}\n")
        conf.write_text(text)
