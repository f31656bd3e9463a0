"""The `pop2gate` command line."""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import click

from . import __version__
from .config import Config, ConfigError, load_config
from .logs import LEVELS, setup_logging
from .stores.imap import ImapBackend
from .stores.maildir import MaildirBackend

CONFIG_HELP = "TOML configuration file (see docs/configuration.md)."


def _config_errors(err: ConfigError) -> NoReturn:
    """Print every issue, one a line (`FILE:LINE: key: what`), and exit 2."""
    for issue in err.issues:
        click.echo(f"pop2gate: config error: {issue}", err=True)
    sys.exit(2)


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        _config_errors(err)


_log_option = click.option(
    "--log-level", type=click.Choice(LEVELS), default=None,
    help="Log detail; overrides [log] level (default info).",
)


B = TypeVar("B", MaildirBackend, ImapBackend)


def _one_backend(config: Config, kind: type[B], name: str | None, what: str,
                 fits: Callable[[B], bool] = lambda _: True) -> B:
    """The config's one backend of `kind` that `fits`, or the one of them `name`d (--backend)."""
    found = [b for b in config.backend if isinstance(b, kind) and fits(b)]
    if name is not None:
        found = [b for b in found if b.name == name]
    if len(found) != 1:
        raise click.UsageError(f"the config must have exactly one {what}, or name one with --backend")
    return found[0]


def _setup_logging(config: Config | None, level: str | None) -> None:
    try:
        setup_logging(config.log if config is not None else None, level)
    except OSError as err:
        click.echo(f"pop2gate: cannot log to syslog at {config.log.syslog_address if config else ''}: {err}",
                   err=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pop2gate")
def main() -> None:
    """pop2gate: a secure IMAP-to-POP2 (RFC 937) conversion server and toolkit."""


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), required=True, help=CONFIG_HELP)
@click.option("--inetd", is_flag=True, help="Serve one session on stdin/stdout (inetd, xinetd, socat).")
@_log_option
def serve(config_path: Path, inetd: bool, log_level: str | None) -> None:
    """Run the POP2 server.

    Listens on the addresses of [server], or on the sockets systemd hands over (socket
    activation). SIGHUP re-reads the configuration for new sessions; SIGTERM stops.
    """
    from .gateway.listeners import serve_forever, serve_stdio

    config = _load(config_path)
    _setup_logging(config, log_level)
    from .gateway.privileges import PrivilegeError

    try:
        asyncio.run(serve_stdio(config) if inetd else serve_forever(config, reload=lambda: load_config(config_path)))
    except PrivilegeError as err:
        click.echo(f"pop2gate: {err}", err=True)
        sys.exit(2)
    except ConfigError as err:  # a store's path the serving user cannot use (gateway.privileges)
        _config_errors(err)
    except OSError as err:
        click.echo(f"pop2gate: cannot listen: {err}", err=True)
        sys.exit(1)


@main.group("config")
def config_group() -> None:
    """Check a configuration file, or print its reference."""


@config_group.command("check")
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), required=True, help=CONFIG_HELP)
def config_check(config_path: Path) -> None:
    """Validate FILE as `serve` does at start.

    Valid: prints the effective configuration (every default filled in, secrets masked)
    as TOML on stdout and exits 0. Invalid: prints every error, each with its key and its
    line in the file (`FILE:LINE: key: what`), on stderr and exits 2. Whether the serving
    user can use each store's files is checked by `serve`, once it is that user.
    """
    from .config_show import effective_toml

    config = _load(config_path)
    click.echo(effective_toml(config), nl=False)
    click.echo(f"pop2gate: {config_path}: configuration valid", err=True)


@config_group.command("reference")
def config_reference() -> None:
    """Print the configuration reference (docs/configuration.md): every key, its type, default and meaning."""
    from .config_doc import reference

    click.echo(reference(), nl=False)


@main.command()
@click.option(
    "--dir", "directory", type=click.Path(path_type=Path), default=None,
    help="Where the demo store lives (default: pop2gate/demo under the XDG data home).",
)
@_log_option
def demo(directory: Path | None, log_level: str | None) -> None:
    """Serve a demo mailbox (user demo, password demo) on 127.0.0.1:1109."""
    from .demo import DEMO_ADDRESS, create_demo, default_dir
    from .gateway.listeners import serve_forever

    directory = directory or default_dir()
    config = create_demo(directory)
    host, port = DEMO_ADDRESS
    _setup_logging(None, log_level)

    prog = sys.argv[0] if Path(sys.argv[0]).name == "pop2gate" else "pop2gate"

    def ready(_servers: list[asyncio.Server]) -> None:
        click.echo(
            f"pop2gate demo: serving {directory / 'mail'} on {host}:{port} (user demo, password demo)\n"
            f"Connect by hand:     telnet {host} {port}\n"
            f"  then type:         HELO demo demo, READ, RETR, ACKS (keep) or ACKD (delete), QUIT\n"
            f"Or with the client:  {prog} fetch {host}:{port} --user demo --list     (password: demo)\n"
            f"  or into an mbox:   {prog} fetch {host}:{port} --user demo --mbox demo.mbox\n"
            f"Stop with Ctrl-C.",
        )

    try:
        asyncio.run(serve_forever(config, ready=ready))
    except OSError as err:
        click.echo(f"pop2gate demo: cannot listen on {host}:{port}: {err.strerror}", err=True)
        sys.exit(1)


@main.group()
def user() -> None:
    """Manage users of a Maildir backend."""


def _users_file(config_path: Path | None, users_file: Path | None, backend: str | None) -> Path:
    if users_file is not None:
        return users_file
    if config_path is None:
        raise click.UsageError("give -c CONFIG or --users-file FILE")
    return _one_backend(_load(config_path), MaildirBackend, backend, "maildir backend").users_file


def _read_password(confirm: bool = True, prompt: str = "Password: ") -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if confirm and getpass.getpass("Again: ") != first:
            raise click.ClickException("passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


@user.command("add")
@click.argument("name")
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), help=CONFIG_HELP)
@click.option("--users-file", type=click.Path(path_type=Path), help="The users file to change.")
@click.option("--backend", help="Which maildir backend of the config, when it has several.")
def user_add(name: str, config_path: Path | None, users_file: Path | None, backend: str | None) -> None:
    """Create user NAME or change its password.

    The password is read without echo, or from stdin when it is not a terminal.
    """
    from .stores.maildir.users import set_password

    path = _users_file(config_path, users_file, backend)
    try:
        new = set_password(path, name, _read_password())
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    click.echo(f"{'added' if new else 'changed'} user {name} in {path}")


@main.command()
@click.argument("target", metavar="HOST[:PORT]")
@click.option("--user", required=True, metavar="USER", help="Login name.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the password from the first line of FILE (refused if group or others have any access).")
@click.option("--folder", metavar="NAME", help="Mailbox to read instead of INBOX.")
@click.option("--list", "list_only", is_flag=True, help="Only list message numbers and sizes; change nothing.")
@click.option("--dry-run", is_flag=True, help="The same as --list.")
@click.option("--maildir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Save messages into this Maildir (created if missing).")
@click.option("--mbox", type=click.Path(dir_okay=False, path_type=Path),
              help="Append messages to this mbox file (mboxrd, under an exclusive fcntl lock).")
@click.option("--stdout", "to_stdout", is_flag=True, help="Write one message (the first) to stdout.")
@click.option("--keep/--delete", default=True, show_default=True,
              help="Leave each saved message on the server (ACKS), or have it deleted there (ACKD).")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Take at most N messages.")
@click.option("--tls", is_flag=True,
              help="TLS from the first octet (a pop2gate tls_listen port), TLS 1.2 or later. The server's "
                   "certificate and its name (HOST) are verified, against the system's CAs or --ca-file.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --tls: trust the CA certificates in this PEM file instead of the system's.")
@click.option("--insecure", is_flag=True, help="With --tls: do not verify the certificate (warns on stderr).")
@click.option("--connect-timeout", type=click.FloatRange(min=0.01), default=30.0, metavar="SECONDS", show_default=True,
              help="Seconds to connect (and finish the TLS handshake).")
@click.option("--timeout", type=click.FloatRange(min=0.01), default=60.0, show_default=True, metavar="SECONDS",
              help="Seconds to wait for each reply or piece of message data.")
def fetch(target: str, user: str, password_file: Path | None, folder: str | None, list_only: bool,
          dry_run: bool, maildir: Path | None, mbox: Path | None, to_stdout: bool, keep: bool,
          limit: int | None, tls: bool, ca_file: Path | None, insecure: bool, connect_timeout: float,
          timeout: float) -> None:
    """Move a mailbox out of a POP2 server, or list it.

    HOST[:PORT] as for `check`: a name, an IPv4 address, or [IPv6]; port 109 by default.

    \b
    The password comes from --password-file, else $POP2_PASSWORD, else a prompt
    without echo when stdin is a terminal, else the first line of stdin. There is
    no option that takes it on the command line.

    A message is acknowledged only once it is on disk (fsynced). With --delete the
    server deletes only after a clean QUIT; a message cut short or of the wrong
    length leaves nothing written and the session ends without QUIT, so nothing
    is deleted.

    \b
    Ctrl-C once:  finish the current message, then QUIT (deletions so far apply).
    Ctrl-C twice: abort at once without QUIT (the server deletes nothing).

    Exit status: 0 done, 1 failure or interrupted (one line on stderr), 2 usage error.
    """
    import ssl

    from .console import PasswordError, read_password
    from .fetch import FetchError, Session, TargetError, parse_host_port, run, tls_context
    from .mailfiles import MaildirWriter, MboxWriter, StdoutWriter, WriteError

    outputs = [list_only or dry_run, maildir is not None, mbox is not None, to_stdout]
    if sum(outputs) != 1:
        raise click.UsageError("give exactly one of --list (or --dry-run), --maildir, --mbox or --stdout")
    if not keep and (list_only or dry_run):
        raise click.UsageError("--delete needs --maildir, --mbox or --stdout")
    if to_stdout and limit not in (None, 1):
        raise click.UsageError("--stdout writes one message: --limit can only be 1")
    if (ca_file is not None or insecure) and not tls:
        raise click.UsageError(f"{'--ca-file' if ca_file is not None else '--insecure'} needs --tls")
    if ca_file is not None and insecure:
        raise click.UsageError("--ca-file and --insecure exclude each other")
    try:
        host, port = parse_host_port(target)
    except TargetError as err:
        raise click.BadParameter(str(err), param_hint="HOST[:PORT]") from None
    try:
        context = tls_context(ca_file, insecure) if tls else None
    except ssl.SSLError as err:
        raise click.BadParameter(f"no CA certificate in {ca_file}: {err}", param_hint="--ca-file") from None
    try:
        password = read_password(password_file, f"Password for {user} at {target}: ")
    except PasswordError as err:
        raise click.BadParameter(str(err), param_hint="--password-file" if password_file else "password") from None
    if insecure:
        click.echo("pop2gate fetch: warning: --insecure: the server's certificate is not verified; "
                   "anyone on the path can read the password and the mail", err=True)
    try:
        writer = (MaildirWriter(maildir) if maildir is not None else MboxWriter(mbox) if mbox is not None
                  else StdoutWriter() if to_stdout else None)
        session = Session(host, port, user, folder, context, connect_timeout, timeout)
        sys.exit(run(session, password, writer, delete=not keep, limit=1 if to_stdout else limit,
                     bar=sys.stderr.isatty()))
    except (FetchError, WriteError) as err:
        click.echo(f"pop2gate fetch: {err}", err=True)
        sys.exit(1)


@main.command()
@click.argument("targets", nargs=-1)
@click.option("--targets-file", "targets_file", type=click.Path(dir_okay=False),
              help="File of targets, one a line (# starts a comment).")
@click.option("--ports", default="109", show_default=True,
              help="Ports to check on targets without one, e.g. 109,110,143.")
@click.option("--timeout", type=click.FloatRange(min=0.01), default=5.0, show_default=True,
              help="Seconds allowed for each connection and its greeting.")
@click.option("--concurrency", type=click.IntRange(min=1), default=32, show_default=True,
              help="Connections open at once, at most.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per target and port.")
def check(targets: tuple[str, ...], targets_file: str | None, ports: str, timeout: float,
          concurrency: int, as_json: bool) -> None:
    """Find POP2 services and say which known advisories apply.

    TARGETS are host names, IPv4 or IPv6 addresses, host:port or [v6]:port;
    the default is localhost. Only the greeting is read, then QUIT (or LOGOUT)
    is sent; no login, no password, nothing else. Exit status: 0 nothing
    vulnerable, 1 something vulnerable, 2 usage error.
    """
    from . import check as checker

    try:
        port_list = checker.parse_ports(ports)
    except checker.TargetError as e:
        raise click.BadParameter(str(e), param_hint="--ports") from None
    names = list(targets)
    if targets_file is not None:
        try:
            names += checker.read_targets_file(targets_file)
        except (OSError, UnicodeDecodeError) as e:
            raise click.BadParameter(f"cannot read {targets_file}: {e}",
                                     param_hint="--targets-file") from None
    if not names and targets_file is None:
        names = ["localhost"]
    if not names:
        raise click.UsageError("no targets in the targets file")
    try:
        rows = checker.check(names, port_list, timeout=timeout, concurrency=concurrency)
    except checker.TargetError as e:
        raise click.BadParameter(str(e), param_hint="TARGETS") from None
    if as_json:
        click.echo(checker.to_json(rows))
    elif sys.stdout.isatty():
        from rich.console import Console

        Console().print(checker.rich_table(rows))
    else:
        click.echo(checker.plain_table(rows), nl=False)
    sys.exit(checker.exit_status(rows))


@main.group()
def oauth() -> None:
    """Manage the OAuth2 grants of IMAP backends with auth = "oauth2" (docs/oauth2.md)."""


def _oauth_backend(config_path: Path, backend: str | None) -> tuple[Config, ImapBackend]:
    config = _load(config_path)
    return config, _one_backend(config, ImapBackend, backend, 'imap backend with auth = "oauth2"',
                                lambda b: b.oauth2 is not None)


_oauth_config = click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), required=True,
                             help=CONFIG_HELP)
_oauth_backend_option = click.option("--backend", help='Which backend with auth = "oauth2", when there are several.')


@oauth.command("add")
@click.argument("name")
@_oauth_config
@_oauth_backend_option
@click.option("--imap-user", help="The mailbox's login at the provider (its address); default: NAME.")
@click.option("--paste", is_flag=True, help="No browser here: open the printed URL elsewhere and paste back "
                                            "the address the browser was sent to.")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds to wait for the authorization.")
def oauth_add(name: str, config_path: Path, backend: str | None, imap_user: str | None, paste: bool,
              timeout: float) -> None:
    """Authorize user NAME's mailbox and store its grant.

    Asks for the POP2 password to set for NAME (without echo, twice; or one line from stdin
    when it is not a terminal), then authorizes at the provider: a URL to open, redirected back
    to a listener on 127.0.0.1; with --paste, the redirected URL read back; where the backend
    has a device_url, a code to enter. The refresh token is stored encrypted with a key derived
    from the password, in tokens_dir/NAME (mode 0600).
    """
    from .gateway.privileges import PrivilegeError, serving_ids
    from .oauth2 import flows, tokenfile
    from .oauth2.endpoint import Endpoint, Tokens
    from .passwords import valid_user_name

    config, chosen = _oauth_backend(config_path, backend)
    settings = chosen.oauth2
    assert settings is not None
    if not valid_user_name(name):
        raise click.UsageError(f"invalid user name {name!r}: use letters, digits and . _ + @ -")
    password = _read_password(prompt=f"POP2 password to set for {name}: ")
    if not password:
        raise click.UsageError("empty password")
    try:
        owner = serving_ids(config)
    except PrivilegeError as err:
        raise click.ClickException(str(err)) from None

    def show(text: str) -> None:
        if not text.startswith("http"):
            click.echo(text)  # the device flow's code and where to enter it
        elif paste:
            click.echo(f"Open this URL in a browser, sign in as the mailbox's owner and allow access:\n{text}\n"
                       "Then paste the address the browser was sent to (it starts http://127.0.0.1/).")
        else:
            click.echo(f"Open this URL in a browser on this machine, sign in as the mailbox's owner and allow "
                       f"access:\n{text}\nWaiting up to {timeout:g}s for the browser to come back.")

    def read_line() -> str:
        if sys.stdin.isatty():
            return input("Address the browser was sent to: ")
        return sys.stdin.readline()

    async def authorize() -> Tokens:
        endpoint = Endpoint(settings)
        try:
            if paste:
                return await flows.paste(endpoint, show, read_line)
            if settings.device_url is not None:
                return await flows.device(endpoint, show, timeout)
            return await flows.loopback(endpoint, show, timeout)
        finally:
            await endpoint.aclose()

    try:
        tokens = asyncio.run(authorize())
    except flows.FlowError as err:
        raise click.ClickException(str(err)) from None
    assert tokens.refresh_token is not None
    tf = tokenfile.TokenFile.create(name, imap_user or name, password, tokens.refresh_token)
    tokenfile.make_dir(settings.tokens_dir, owner)
    path = tokenfile.write(settings.tokens_dir, tf, owner)
    click.echo(f"stored the grant of {name} (IMAP login {tf.imap_user}) in {path}")


@oauth.command("list")
@_oauth_config
@_oauth_backend_option
def oauth_list(config_path: Path, backend: str | None) -> None:
    """List the users with a stored grant, and their IMAP logins."""
    from .oauth2 import tokenfile

    _, chosen = _oauth_backend(config_path, backend)
    assert chosen.oauth2 is not None
    tokens_dir = chosen.oauth2.tokens_dir
    for name in tokenfile.users(tokens_dir):
        try:
            tf = tokenfile.read(tokens_dir, name)
        except tokenfile.TokenFileError as err:
            click.echo(f"{name}\t(unreadable: {err})")
            continue
        if tf is not None:
            click.echo(f"{name}\t{tf.imap_user}")


@oauth.command("remove")
@click.argument("name")
@_oauth_config
@_oauth_backend_option
def oauth_remove(name: str, config_path: Path, backend: str | None) -> None:
    """Delete user NAME's stored grant (revoke it at the provider too)."""
    from .oauth2 import tokenfile

    _, chosen = _oauth_backend(config_path, backend)
    assert chosen.oauth2 is not None
    if not tokenfile.remove(chosen.oauth2.tokens_dir, name):
        raise click.ClickException(f"no grant stored for {name!r}")
    click.echo(f"removed the grant of {name}")
