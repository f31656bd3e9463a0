"""A private Courier-IMAP for the tests: own config, authdaemon, userdb users, loopback port.

Debian's courier-imap conflicts with dovecot-imapd, so scripts/install-test-deps.sh
installs only its dependencies and unpacks the package into COURIER_ROOT. Courier's
paths (/etc/courier, /run/courier) are compiled in, so the server runs as root in a
private mount namespace (`unshare -m`) with this instance's directories bind-mounted
over them: authdaemond, then couriertcpd -> imaplogin -> imapd on 127.0.0.1.
STARTTLS with a test CA's certificate (`ca_file`), after which Courier offers AUTH=PLAIN
(before it, plain LOGIN only); folders are `INBOX.x`.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from dovecot import HOST, USERS, Dovecot, _mail_uid, free_port, make_ca
from imapserver import stop_group, wait_for_imap

COURIER_ROOT = Path("/opt/pop2gate-test/courier")
IMAPD = COURIER_ROOT / "usr/bin/imapd"
IMAPLOGIN = COURIER_ROOT / "usr/lib/courier/courier/imaplogin"
MAILDIRMAKE = "/usr/bin/maildirmake.courier"  # /usr/bin/maildirmake may be Dovecot's
AUTHDAEMOND = "/usr/lib/courier/courier-authlib/authdaemond"
NEEDED = (IMAPD, IMAPLOGIN, Path(AUTHDAEMOND), Path("/usr/sbin/couriertcpd"), Path(MAILDIRMAKE),
          Path("/usr/bin/couriertls"))

# What imapd reads from its environment (Debian's /etc/courier/imapd, trimmed).
IMAPD_ENV = {
    "IMAP_CAPABILITY": "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE",
    "IMAP_KEYWORDS": "1",
    "IMAP_ACL": "1",
    "IMAP_IDLE_TIMEOUT": "60",
    "IMAP_MAILBOX_SANITY_CHECK": "1",
    "IMAP_USELOCKS": "1",
    "IMAP_UMASK": "022",
    "IMAP_TRASHFOLDERNAME": "Trash",
    "IMAP_EMPTYTRASH": "",
    "IMAP_MOVE_EXPUNGE_TO_TRASH": "0",
    "IMAP_SHAREDINDEXFILE": "/etc/courier/shared/index",
    "HEADERFROM": "X-IMAP-Sender",
    "SENDMAIL": "/bin/false",
    # STARTTLS as Debian sets it up (/etc/courier/imapd-ssl): AUTH=PLAIN only after it
    "IMAP_STARTTLS": "YES",
    "IMAP_TLS_REQUIRED": "0",
    "IMAP_CAPABILITY_TLS": "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA "
                           "IDLE AUTH=PLAIN",
    "COURIERTLS": "/usr/bin/couriertls",
    "TLS_CERTFILE": "/etc/courier/imapd.pem",
    "TLS_VERIFYPEER": "NONE",
}

AUTHDAEMONRC = """\
authmodulelist="authuserdb"
daemons=3
authdaemonvar=/run/courier/authdaemon
DEBUG_LOGIN=0
DEFAULTOPTIONS=""
LOGGEROPTS=""
"""

# Runs inside the namespace: $1 = this instance's root, $2 = port.
LAUNCH = f"""\
set -e
mount --make-rprivate /
mkdir -p /etc/courier /run/courier
mount --bind "$1/etc" /etc/courier
mount --bind "$1/run" /run/courier
{AUTHDAEMOND} &
while [ ! -S /run/courier/authdaemon/socket ]; do sleep 0.02; done
exec /usr/sbin/couriertcpd -address={HOST} -nodnslookup -noidentlookup -maxprocs=100 -maxperip=100 \\
    "$2" {IMAPLOGIN} {IMAPD} Maildir
"""


class CourierError(RuntimeError):
    """The test Courier could not be started."""


class Courier:
    """One private Courier-IMAP instance; `start()` then `stop()`. Users and passwords: dovecot.USERS."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="p2g-courier-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca_file = self.root / "tls" / "ca.pem"

    def start(self) -> Courier:
        missing = [str(p) for p in NEEDED if not os.access(p, os.X_OK)]
        if missing:
            raise CourierError(f"{', '.join(missing)} missing: run scripts/install-test-deps.sh")
        if os.geteuid() != 0:
            raise CourierError("the test Courier needs root (a private mount namespace)")
        self._set_up()
        return self._launch()

    def _set_up(self) -> None:
        """Write the config, the userdb and each user's Maildir."""
        uid, gid = _mail_uid()
        os.chmod(self.root, 0o755)
        etc = self.root / "etc"
        (etc / "shared").mkdir(parents=True)
        (etc / "authdaemonrc").write_text(AUTHDAEMONRC)
        tls = self.root / "tls"
        tls.mkdir()
        make_ca(tls)
        pem = etc / "imapd.pem"
        pem.write_bytes((tls / "server.key").read_bytes() + (tls / "server.pem").read_bytes())
        pem.chmod(0o644)  # a test key: imaplogin runs couriertls as an unprivileged user
        (self.root / "run" / "authdaemon").mkdir(parents=True, mode=0o750)
        lines = []
        for user, password in USERS.items():
            home = self.root / "home" / user
            home.mkdir(parents=True)
            subprocess.run([MAILDIRMAKE, str(home / "Maildir")], check=True, capture_output=True)
            for path in [home, *home.rglob("*")]:
                os.chown(path, uid, gid)
            crypted = _userdbpw(password)
            lines.append(f"{user}\tuid={uid}|gid={gid}|home={home}|mail={home}/Maildir|systempw={crypted}\n")
        userdb = etc / "userdb"
        userdb.write_text("".join(lines))
        userdb.chmod(0o600)
        subprocess.run(["makeuserdb", "-f", str(userdb)], check=True, capture_output=True)

    def _launch(self) -> Courier:
        """Start authdaemond and couriertcpd in their namespace; wait until IMAP answers."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **IMAPD_ENV}
        with open(self.root / "courier.log", "wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "sh", "-c", LAUNCH, "courier", str(self.root), str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        proc = self.proc
        wait_for_imap(proc, HOST, self.port, lambda: f"courier exited ({proc.returncode}):\n{self.log()}",
                      self.stop, CourierError)
        return self

    def log(self) -> str:
        try:
            return (self.root / "courier.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """End the whole instance (its own process group) and remove its files."""
        stop_group(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)

    # Test-side IMAP access, straight to Courier; the rest is plain IMAP, as for Dovecot.

    def imap(self, user: str) -> imaplib.IMAP4:
        c = imaplib.IMAP4(HOST, self.port, timeout=10)
        c.login(user, USERS[user])
        return c

    append = Dovecot.append
    uids = Dovecot.uids
    bodies = Dovecot.bodies
    expunge = Dovecot.expunge
    clear = Dovecot.clear


def _userdbpw(password: str) -> str:
    """The password's crypt(3) hash, as `userdbpw` makes it."""
    out = subprocess.run(["userdbpw", "-md5"], input=f"{password}\n{password}\n".encode(),
                         check=True, capture_output=True)
    return out.stdout.decode().strip()
