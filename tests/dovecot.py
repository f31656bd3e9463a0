"""A private Dovecot for the tests: own config, base_dir, users, test CA, loopback ports.

Runs `dovecot -F -c <conf>` as a child process. Mail lives in Maildirs owned
by an unprivileged uid. Messages are delivered with a raw APPEND literal so
the stored bytes are exactly the test's bytes.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import imapserver
from imapserver import wait_for_imap

DOVECOT = "/usr/sbin/dovecot"
HOST = "127.0.0.1"
# Also a loopback address, but one the certificate does not name.
OTHER_HOST = "127.0.0.2"
USERS = {"alice": "alice-pw", "bob": 'b"o\\b pw', "carol": "carol-pw"}
MASTER = ("admin", "admin-pw")


class DovecotError(RuntimeError):
    """The test Dovecot could not be started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _mail_uid() -> tuple[int, int]:
    for name in ("nobody", "dovenull"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        if pw.pw_uid >= 500:
            return pw.pw_uid, pw.pw_gid
    raise DovecotError("no unprivileged user (nobody) with uid >= 500")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path) -> None:
    """A test CA and a server certificate for localhost / 127.0.0.1 only."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=pop2gate test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d)


CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
instance_name = {instance}
verbose_proctitle = yes
protocols = imap
listen = {host}, {other}
ssl = yes
ssl_cert = <{root}/tls/server.pem
ssl_key = <{root}/tls/server.key
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_master_user_separator = *
login_trusted_networks = 127.0.0.0/8
mail_location = maildir:~/Maildir
mail_max_userip_connections = 1000
namespace inbox {{
  inbox = yes
}}
passdb {{
  driver = passwd-file
  master = yes
  args = scheme=PLAIN {root}/master.passwd
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users.passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = {tls_port}
    ssl = yes
  }}
  process_min_avail = 2
}}
# The other address plays a server without UIDPLUS.
local {other} {{
  protocol imap {{
    imap_capability = IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE IDLE
  }}
}}
service anvil {{
  chroot =
}}
"""


class Dovecot:
    """One private Dovecot instance; `start()` then `stop()`."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="p2g-dc-"))
        self.port = free_port()
        self.tls_port = free_port()
        self.ca_file = self.root / "tls" / "ca.pem"
        self.instance = f"pop2gate-test-{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Dovecot:
        if not os.access(DOVECOT, os.X_OK):
            raise DovecotError(f"{DOVECOT} missing: run scripts/install-test-deps.sh")
        self._set_up()
        return self._launch()

    def _set_up(self) -> None:
        """Write the config, users, certificates and home directory."""
        uid, gid = _mail_uid()
        os.chmod(self.root, 0o755)
        (self.root / "tls").mkdir()
        make_ca(self.root / "tls")
        (self.root / "users.passwd").write_text(
            "".join(f"{u}:{{PLAIN}}{p}\n" for u, p in USERS.items()))
        (self.root / "master.passwd").write_text(f"{MASTER[0]}:{{PLAIN}}{MASTER[1]}\n")
        home = self.root / "home"
        home.mkdir()
        os.chown(home, uid, gid)
        conf = self.root / "dovecot.conf"
        conf.write_text(CONF.format(root=self.root, host=HOST, other=OTHER_HOST, port=self.port,
                                    tls_port=self.tls_port, uid=uid, gid=gid,
                                    instance=self.instance))

    def _launch(self) -> Dovecot:
        """Start the master process on the written config; wait until IMAP answers."""
        conf = self.root / "dovecot.conf"
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        proc = self.proc
        wait_for_imap(proc, HOST, self.port,
                      lambda: f"dovecot exited: {proc.stdout.read().decode() if proc.stdout else ''}\n{self.log()}",
                      self.stop, DovecotError)
        return self

    def log(self) -> str:
        try:
            return (self.root / "dovecot.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def pids(self) -> list[int]:
        """This instance's processes: the master and every child (its proctitle names the instance)."""
        out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        mark = f"{self.instance}/"
        pids = [int(line.split()[0]) for line in out.splitlines() if mark in line]
        if self.proc and self.proc.poll() is None:
            pids.append(self.proc.pid)
        return pids

    def signal_all(self, sig: int) -> int:
        """Send `sig` to every process of this instance (SIGSTOP: the whole server hangs); how many."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(pids)

    def kill(self) -> None:
        """SIGKILL the whole instance, as a crash would; its mail stays for `restart`."""
        self.signal_all(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not self.pids(), "dovecot processes survived SIGKILL"

    def restart(self) -> Dovecot:
        """Start again on the same config, ports and mail (after `kill`)."""
        assert self.proc is None or self.proc.poll() is not None, "still running"
        return self._launch()

    def kill_sessions(self, user: str, sig: int = signal.SIGKILL) -> int:
        """Signal (default: SIGKILL) this instance's imap processes serving `user`; how many."""
        out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        mark = f"{self.instance}/imap [{user} "
        pids = [int(line.split()[0]) for line in out.splitlines() if mark in line]
        for pid in pids:
            os.kill(pid, sig)
        return len(pids)

    # Test-side IMAP access, straight to Dovecot.

    def imap(self, user: str) -> imaplib.IMAP4:
        c = imaplib.IMAP4(HOST, self.port, timeout=10)
        c.login(user, USERS[user])  # imaplib quotes the password itself
        return c

    def append(self, user: str, data: bytes, folder: str = "INBOX", flags: str = "") -> int:
        """Store `data` byte for byte; return its UID."""
        return imapserver.append(self.imap, user, data, folder, flags)

    def uids(self, user: str, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags of every message, including \\Deleted ones."""
        return imapserver.uids(self.imap, user, folder)

    def bodies(self, user: str, folder: str = "INBOX") -> dict[int, bytes]:
        """UID -> stored octets of every message, including \\Deleted ones (read with PEEK)."""
        return imapserver.bodies(self.imap, user, folder)

    def expunge(self, user: str, uid: int, folder: str = "INBOX") -> None:
        """Remove one message, as another client would."""
        imapserver.flag(self.imap, user, uid, r"\Deleted", folder, expunge=True)

    def clear(self, user: str, folder: str = "INBOX") -> None:
        imapserver.clear(self.imap, user, folder)
