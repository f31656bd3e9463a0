"""A private Cyrus IMAP for the tests: own config, partition, sasldb, loopback port.

Debian's cyrus-imapd conflicts with dovecot-imapd, so scripts/install-test-deps.sh
unpacks the packages into CYRUS_ROOT instead of installing them. `master` runs
as root and drops to `nobody` (cyrus_user). Cyrus logs only to syslog.

Two layouts: "unix" ('/' separator, altnamespace: folders beside INBOX) and
"debian" (Debian's default: '.' separator, folders under INBOX.).
Cyrus refuses bare LF in APPEND: deliver CRLF messages.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import imapserver
from dovecot import HOST, free_port
from imapserver import quoted, stop_group, wait_for_imap

CYRUS_ROOT = Path(os.environ.get("POP2GATE_CYRUS_ROOT", "/opt/pop2gate-test/cyrus"))
BIN = CYRUS_ROOT / "usr/lib/cyrus/bin"
LIBS = ":".join(str(p) for p in CYRUS_ROOT.glob("usr/lib/*-linux-gnu"))  # libcyrus*.so
SASLPASSWD = "/usr/sbin/saslpasswd2"
USERS = {"alice": "alice-pw", "bob": "b o b pw"}
ADMIN = ("cyradmin", "admin-pw")
# The gateway's master user (`HELO user*pop2gw`), in proxyservers: it may act as any user.
PROXY = ("pop2gw", "proxy-pw")
RUN_AS = "nobody"
LAYOUTS = {"unix": ("yes", "yes", "/"), "debian": ("no", "no", ".")}

IMAPD_CONF = """\
configdirectory: {root}/conf
defaultpartition: default
partition-default: {root}/part
cyrus_user: {run_as}
admins: {admin}
proxyservers: {proxy}
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {root}/sasldb2
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
failedloginpause: 0
unixhierarchysep: {unixsep}
altnamespace: {altns}
lmtpsocket: {root}/conf/socket/lmtp
idlesocket: {root}/conf/socket/idle
notifysocket: {root}/conf/socket/notify
syslog_prefix: p2g-cyrus-{port}
"""

# Commands by absolute path: Debian's build ignores serverpath for cyrus.conf.
CYRUS_CONF = """\
START {{
  recover cmd="{bin}/ctl_cyrusdb -C {root}/imapd.conf -r"
}}
SERVICES {{
  imap cmd="{bin}/imapd -C {root}/imapd.conf" listen="{host}:{port}" prefork=0 maxchild=100
}}
"""


class CyrusError(RuntimeError):
    """The test Cyrus could not be started."""



class Cyrus:
    """One private Cyrus instance; `start()` then `stop()`."""

    def __init__(self, layout: str = "unix") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}")
        self.layout = layout
        self.sep = LAYOUTS[layout][2]
        self.root = Path(tempfile.mkdtemp(prefix="p2g-cy-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def folder(self, name: str) -> str:
        """The IMAP name of a user's folder `name` ("a/b") in this layout."""
        if name == "INBOX":
            return name
        path = name.replace("/", self.sep)
        return path if self.layout == "unix" else f"INBOX{self.sep}{path}"

    def start(self) -> Cyrus:
        """Set up, launch, create each user's mailbox as admin; on any failure clean up."""
        try:
            if not os.access(BIN / "master", os.X_OK):
                raise CyrusError(f"{BIN}/master missing: run scripts/install-test-deps.sh")
            self._set_up()
            self._launch()
            for user in USERS:
                self._admin("CREATE", quoted(f"user{self.sep}{user}"))
        except BaseException:
            self.stop()
            raise
        return self

    def _set_up(self) -> None:
        """Write the configs, the sasldb and the directories, owned by RUN_AS."""
        unixsep, altns, _ = LAYOUTS[self.layout]
        for sub in ("conf/socket", "conf/proc", "conf/db", "part"):
            (self.root / sub).mkdir(parents=True)
        (self.root / "imapd.conf").write_text(IMAPD_CONF.format(
            root=self.root, run_as=RUN_AS, admin=ADMIN[0], proxy=PROXY[0], unixsep=unixsep, altns=altns,
            port=self.port))
        (self.root / "cyrus.conf").write_text(CYRUS_CONF.format(
            bin=BIN, root=self.root, host=HOST, port=self.port))
        sasldb = self.root / "sasldb2"
        for user, password in [*USERS.items(), ADMIN, PROXY]:
            subprocess.run([SASLPASSWD, "-f", str(sasldb), "-c", "-p", user],
                           input=password.encode(), check=True, capture_output=True)
        pw = pwd.getpwnam(RUN_AS)
        os.chmod(self.root, 0o755)
        for path in [self.root, *self.root.rglob("*")]:
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _launch(self) -> None:
        """Start `master` in its own process group; wait until IMAP answers."""
        env = {**os.environ, "LD_LIBRARY_PATH": LIBS}
        self.proc = subprocess.Popen(
            [str(BIN / "master"), "-C", str(self.root / "imapd.conf"), "-M", str(self.root / "cyrus.conf"),
             "-D", "-p", str(self.root / "master.pid")],
            env=env, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        proc = self.proc

        def exited() -> str:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            return f"cyrus master exited {proc.returncode} (it logs to syslog only): {out}"

        wait_for_imap(proc, HOST, self.port, exited, self.stop, CyrusError)

    def stop(self) -> None:
        """End master and its children (one process group), then remove the files."""
        stop_group(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)

    # Test-side IMAP access, straight to Cyrus.

    def imap(self, user: str) -> imaplib.IMAP4:
        c = imaplib.IMAP4(HOST, self.port, timeout=10)
        c.login(user, {**USERS, ADMIN[0]: ADMIN[1], PROXY[0]: PROXY[1]}[user])
        return c

    def _admin(self, *args: str) -> None:
        c = self.imap(ADMIN[0])
        try:
            typ, dat = c._simple_command(*args)
            assert typ == "OK", dat
        finally:
            c.logout()

    def create(self, user: str, folder: str) -> None:
        """Create `folder` ("a/b", layout-neutral) for `user`."""
        c = self.imap(user)
        try:
            typ, dat = c._simple_command("CREATE", quoted(self.folder(folder)))
            assert typ == "OK", dat
        finally:
            c.logout()

    def append(self, user: str, data: bytes, folder: str = "INBOX", flags: str = "") -> int:
        """Store `data` (CRLF lines) byte for byte in an existing folder; return its UID."""
        return imapserver.append(self.imap, user, data, self.folder(folder), flags, create=False)

    def bodies(self, user: str, folder: str = "INBOX") -> dict[int, bytes]:
        """UID -> stored octets of every message (read with PEEK)."""
        return imapserver.bodies(self.imap, user, self.folder(folder))

    def list(self, user: str) -> list[tuple[str, str]]:
        """(separator, name) of every folder `user` sees."""
        c = self.imap(user)
        try:
            typ, data = c.list()
            assert typ == "OK", data
            out = []
            for item in data:
                assert isinstance(item, bytes), item
                rest = item.decode().split(") ", 1)[1]
                sep, name = rest.split(" ", 1)
                out.append((sep.strip('"'), name.strip('"')))
            return out
        finally:
            c.logout()

