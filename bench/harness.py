"""What the benchmark scenarios share: deterministic corpora, the private servers, the
gateway under test, and the load generators.

Load runs in worker processes forked before the clock starts (never in the gateway's
process): each worker runs its sessions in threads, blocking clients on both sides (the
project's POP2 client core with lean I/O, bench/pop2session.py; stock stdlib imaplib and
poplib), and hands back one sha256 per message.
"""

from __future__ import annotations

import hashlib
import imaplib
import multiprocessing as mp
import os
import poplib
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dovecot import HOST, Dovecot, _mail_uid, free_port  # noqa: E402
from pop2gate.passwords import hash_password  # noqa: E402
from pop2gate.stores.maildir.users import set_password  # noqa: E402
from pop2session import Pop2Session  # noqa: E402

BIN = Path(sys.executable).parent
PASSWORD = "bench-pw"
TIMEOUT = 600


# -- corpora -------------------------------------------------------------------------------

def message(size: int, n: int) -> bytes:
    """A deterministic message of about `size` octets, CRLF line ends, last line ended."""
    head = b"From: bench@localhost\r\nSubject: message %d\r\nMessage-ID: <%d@bench>\r\n\r\n" % (n, n)
    line = b"%06d the quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n" % n
    return head + line * max(1, (size - len(head)) // len(line))


@dataclass(frozen=True)
class Corpus:
    """A mailbox's messages: (count, size) groups, in delivery order."""

    groups: tuple[tuple[int, int], ...]

    def messages(self) -> list[bytes]:
        out: list[bytes] = []
        for count, size in self.groups:
            out += [message(size, len(out) + i) for i in range(count)]
        return out

    @property
    def count(self) -> int:
        return sum(c for c, _ in self.groups)

    @property
    def octets(self) -> int:
        return sum(c * s for c, s in self.groups)


def digests(messages: Sequence[bytes]) -> list[str]:
    return [hashlib.sha256(m).hexdigest() for m in messages]


# -- the private Dovecot -------------------------------------------------------------------

EXTRA_CONF = """\
# bench: room for S2's sessions, the gateway's and the direct ones alike
default_process_limit = 2500
default_client_limit = 10000
service imap {{
  process_limit = 2500
}}
service imap-login {{
  service_count = 0
  process_min_avail = 2
  client_limit = 2500
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
  service_count = 0
}}
service pop3 {{
  process_limit = 2500
}}
service auth {{
  client_limit = 10000
}}
service anvil {{
  client_limit = 10000
}}
"""


# UW ipop2d's `HELO host:user` names no port (its first ':' ends the host), so it reaches IMAP
# at port 143: Dovecot listens there on an address of its own, without STARTTLS (c-client would
# refuse the test certificate).
UW_CONF = """\
service imap-login {{
  inet_listener imap-uw {{
    address = {host}
    port = 143
  }}
}}
local {host} {{
  ssl = no
}}
"""


def free_imap_address() -> str:
    """A loopback address whose port 143 is free (binding it takes root)."""
    for n in range(109, 255):
        with socket.socket() as s:
            try:
                s.bind((f"127.0.0.{n}", 143))
            except OSError:
                continue
            return f"127.0.0.{n}"
    raise SystemExit("no loopback address with port 143 free")


class BenchDovecot(Dovecot):
    """The tests' private Dovecot (tests/dovecot.py), with POP3 on a second port, limits
    raised for S2, and each user's home being their Maildir, so the Maildir store can
    serve the very same files (S5). Mail is written straight into the Maildirs. With
    `uw_host`, IMAP also on that address's port 143, for UW ipop2d."""

    def __init__(self, uw_host: str | None = None) -> None:
        super().__init__()
        self.pop3_port = free_port()
        self.uw_host = uw_host
        self.users: list[str] = []

    def _set_up(self) -> None:
        super()._set_up()
        conf = self.root / "dovecot.conf"
        text = conf.read_text().replace("protocols = imap\n", "protocols = imap pop3\n")
        text = text.replace("mail_location = maildir:~/Maildir", "mail_location = maildir:~")
        text += EXTRA_CONF.format(pop3_port=self.pop3_port)
        if self.uw_host:
            text += UW_CONF.format(host=self.uw_host)
        conf.write_text(text)

    def start_with(self, users: dict[str, Corpus], hashed: Collection[str] = ()) -> BenchDovecot:
        """Start with these users (password PASSWORD), each with their corpus in INBOX; those
        in `hashed` stored as the gateway's users file stores them (argon2id, same cost)."""
        self._set_up()
        for user, corpus in users.items():
            self.add_user(user, corpus, user in hashed)
        self._launch()
        return self

    def home(self, user: str) -> Path:
        return self.root / "home" / user

    def add_user(self, user: str, corpus: Corpus, hashed: bool = False) -> None:
        """A user with password PASSWORD (PLAIN, or `hashed` with the gateway's own argon2id
        hash) and `corpus` in their INBOX (new/, as delivered); before the server starts."""
        secret = f"{{ARGON2ID}}{hash_password(PASSWORD)}" if hashed else f"{{PLAIN}}{PASSWORD}"
        with open(self.root / "users.passwd", "a") as f:
            f.write(f"{user}:{secret}\n")
        uid, gid = _mail_uid()
        home = self.home(user)
        for sub in ("", "cur", "new", "tmp"):
            (home / sub).mkdir(mode=0o700, exist_ok=True)
            os.chown(home / sub, uid, gid)
        for n, data in enumerate(corpus.messages()):
            path = home / "new" / f"{1700000000 + n}.M{n}P1.bench,S={len(data)}"
            path.write_bytes(data)
            os.chown(path, uid, gid)
        self.users.append(user)


# -- the gateway under test ----------------------------------------------------------------

GATEWAY_LIMITS = {
    # S2 opens up to 1,000 sessions from one address at once, S4 logs in 50 at a time.
    "max_connections": 2000,
    "max_connections_per_address": 2000,
    "max_prelogin_connections": 2000,
    "max_sessions_per_user": 2000,
    "max_logins_per_address": 2000,
}


class Gateway:
    """`pop2gate serve` in its own process on a free loopback port. `backend` is the
    [[backend]] table's keys as TOML text."""

    def __init__(self, root: Path, name: str, backend: str, limits: dict[str, object] | None = None) -> None:
        self.port = free_port()
        self.config = root / f"{name}.toml"
        merged = {**GATEWAY_LIMITS, **(limits or {})}
        self.config.write_text(
            f'[server]\nhostname = "bench"\nlisten = ["127.0.0.1:{self.port}"]\n'
            f'user = "{pwd.getpwuid(os.getuid()).pw_name}"\n'  # serve as the bench's own user
            "[limits]\n" + "".join(f"{k} = {v}\n" for k, v in merged.items())
            + f'[[backend]]\nname = "b"\n{backend}[routing]\ndefault = "b"\n')
        self.log = root / f"{name}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(BIN / "pop2gate"), "serve", "-c", str(self.config),
                                          "--log-level", "warning"], stdout=log, stderr=log)
        try:
            wait_listening(self.port, self.proc, "gateway")
        except SystemExit as exc:
            self.stop()
            raise SystemExit(f"{exc}: {self.log.read_text()[-2000:]}") from None

    @classmethod
    def imap(cls, root: Path, name: str, port: int, limits: dict[str, object] | None = None) -> Gateway:
        return cls(root, name, f'type = "imap"\nurl = "imap://{HOST}:{port}"\ntls = "none"\n', limits)

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def rss(self) -> int:
        return self._status("VmRSS")

    def reset_peak(self) -> None:
        """Start VmHWM (peak RSS) afresh at the current RSS."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def peak(self) -> int:
        return self._status("VmHWM")

    def cpu(self) -> float:
        """User + system CPU seconds so far, every thread of the process."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def errors(self) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if "Traceback" in line or "internal error" in line]

    def stop(self) -> None:
        stop_process(self.proc)


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), 1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class UwIpop2d:
    """UW ipop2d (the program at `path`) behind a real socat, one process per connection.

    `inetd`: `EXEC:...,nofork`, the accepted socket itself as the program's stdin and stdout,
    as inetd gives it (no TCP_NODELAY). `nodelay`: socat relays between the client's socket,
    which has TCP_NODELAY, and the program on a socket pair. The program runs with
    BENCH_UW_HOST in its environment, the host its clients name (`HELO host:user`), for a
    stand-in that needs it."""

    MODES = ("inetd", "nodelay")

    def __init__(self, path: str, mode: str, imap_host: str) -> None:
        self.port = free_port()
        # socat's own listen backlog (5) would drop some of S4's 50 simultaneous connections
        listen = f"TCP-LISTEN:{self.port},bind={HOST},reuseaddr,fork,backlog=1024"
        argv = {"inetd": ["socat", listen, f"EXEC:{path},nofork"],
                "nodelay": ["socat", listen + ",nodelay", f"EXEC:{path}"]}[mode]
        self.proc = subprocess.Popen(argv, env={**os.environ, "BENCH_UW_HOST": imap_host})
        try:
            wait_listening(self.port, self.proc, f"socat for UW ipop2d ({mode})")
        except BaseException:
            self.stop()
            raise

    def greeting(self) -> str:
        """The program's greeting line (which version it is)."""
        with Pop2Session(HOST, self.port, 30) as c:
            c.quit()
            return c.greeting

    def stop(self) -> None:
        stop_process(self.proc)


def maildir_gateway(root: Path, dc: BenchDovecot, users: Sequence[str]) -> Gateway:
    """A gateway whose Maildir store serves the Dovecot users' homes (the same files)."""
    users_file = root / "maildir-users"
    for user in users:
        set_password(users_file, user, PASSWORD)
    return Gateway(root, "maildir", f'type = "maildir"\npath = "{dc.root / "home"}"\n'
                                    f'users_file = "{users_file}"\n')


# -- sessions (run in the load processes) --------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One client session: `kind` names the function below; `cycles` for the login storms."""

    kind: str
    port: int
    user: str
    password: str = PASSWORD
    cycles: int = 1
    host: str = HOST


def pop2_drain(job: Job, form: Callable[[bytes], bytes] | None = None) -> list[str]:
    """READ n, RETR, ACKS per message (the project's POP2 client core: bench/pop2session.py);
    the digests of `form` of each message, if given."""
    out = []
    with Pop2Session(job.host, job.port, TIMEOUT) as c:
        count = c.helo(job.user, job.password)
        for n in range(1, count + 1):
            c.read(n)
            out.append(c.retr_digest(form))
            c.acks()
        c.quit()
    return out


def uw_form(data: bytes) -> bytes:
    """A message as UW ipop2d sends it, back in the corpus's form: c-client's mbox heritage adds
    a `Status:` line to the header and a blank line at the end (the corpus has neither)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    head = b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"Status:"))
    body = body[:-2] if body.endswith(b"\r\n\r\n") else body
    return head + sep + body


def uw_drain(job: Job) -> list[str]:
    """pop2_drain for UW ipop2d: each message hashed in the corpus's form (`uw_form`)."""
    return pop2_drain(job, uw_form)


def _imap(job: Job) -> imaplib.IMAP4:
    """Logged in, straight to the IMAP server, as stdlib imaplib does it."""
    c = imaplib.IMAP4(job.host, job.port, timeout=TIMEOUT)
    c.login(job.user, job.password)
    return c


def imap_drain(job: Job) -> list[str]:
    """What a client does straight to IMAP: one UID list, then BODY.PEEK[] per UID."""
    c = _imap(job)
    c.select("INBOX")
    _, data = c.uid("FETCH", "1:*", "(UID RFC822.SIZE)")
    uids = sorted(int(d.split(b"UID ")[1].split()[0].rstrip(b")"))
                  for d in data if isinstance(d, bytes) and b"UID " in d)
    out = []
    for uid in uids:
        _, data = c.uid("FETCH", str(uid), "(BODY.PEEK[])")
        out.append(hashlib.sha256(b"".join(d[1] for d in data if isinstance(d, tuple))).hexdigest())
    c.logout()
    return out


def pop3_drain(job: Job) -> list[str]:
    """poplib: STAT, then RETR per message."""
    c = poplib.POP3(job.host, job.port, timeout=TIMEOUT)
    c.user(job.user)
    c.pass_(job.password)
    count, _ = c.stat()
    out = []
    for n in range(1, count + 1):
        _, lines, _ = c.retr(n)
        out.append(hashlib.sha256(b"".join(line + b"\r\n" for line in lines)).hexdigest())
    c.quit()
    return out


def imap_select(job: Job) -> list[str]:
    """LOGIN, SELECT INBOX, LOGOUT: has Dovecot index the mailbox."""
    c = _imap(job)
    c.select("INBOX")
    c.logout()
    return []


def pop2_logins(job: Job) -> list[str]:
    """HELO + QUIT, `cycles` times."""
    for _ in range(job.cycles):
        with Pop2Session(job.host, job.port, TIMEOUT) as c:
            c.helo(job.user, job.password)
            c.quit()
    return []


def imap_logins(job: Job) -> list[str]:
    """LOGIN + LOGOUT, `cycles` times."""
    for _ in range(job.cycles):
        _imap(job).logout()
    return []


KINDS: dict[str, Callable[[Job], list[str]]] = {
    "pop2": pop2_drain, "pop2-uw": uw_drain, "imap": imap_drain, "pop3": pop3_drain,
    "pop2-login": pop2_logins, "imap-login": imap_logins, "imap-select": imap_select,
}


@dataclass
class Load:
    """What a load run gives back: wall time from the start signal to the last session's
    end, each session's message digests (None: it failed) and the failures' texts."""

    seconds: float
    results: list[list[str] | None]
    failures: list[str] = field(default_factory=list)


def _one(job: Job) -> tuple[list[str] | None, str]:
    try:
        return KINDS[job.kind](job), ""
    except Exception as err:  # counted as an error of the run
        return None, f"{job.kind} {job.user}: {type(err).__name__}: {err}"


def _worker(jobs: list[tuple[int, Job]], go: mp.synchronize.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    go.wait()
    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        done = list(pool.map(lambda ij: (ij[0], *_one(ij[1])), jobs))
    out.put((done, time.time()))


def run_load(jobs: Sequence[Job], procs: int = 2) -> Load:
    """Run every job at once, spread over `procs` forked processes."""
    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = max(1, min(procs, len(jobs)))
    slices = [[(i, j) for i, j in enumerate(jobs) if i % procs == p] for p in range(procs)]
    workers = [ctx.Process(target=_worker, args=(s, go, out)) for s in slices]
    for w in workers:
        w.start()
    time.sleep(0.2)  # let every worker reach the start line
    start = time.time()
    go.set()
    results: list[list[str] | None] = [None] * len(jobs)
    failures: list[str] = []
    end = start
    for _ in workers:
        done, finished = out.get(timeout=TIMEOUT * 2)
        end = max(end, finished)
        for i, result, failure in done:
            results[i] = result
            if failure:
                failures.append(failure)
    for w in workers:
        w.join(30)
    return Load(end - start, results, failures)
