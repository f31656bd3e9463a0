"""The `pop2gate` command line."""

from __future__ import annotations

import asyncio
import getpass
import sys
from pathlib import Path

import click

from . import __version__
from .config import Config, ConfigError, load_config
from .logs import LEVELS, setup_logging
from .stores.imap import ImapBackend
from .stores.maildir import MaildirBackend

CONFIG_HELP = "TOML configuration file (see docs/configuration.md)."


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        click.echo(f"pop2gate: config error: {err}", err=True)
        sys.exit(2)


_log_option = click.option(
    "--log-level", type=click.Choice(LEVELS), default="info", show_default=True, help="Log detail (to stderr)."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pop2gate")
def main() -> None:
    """pop2gate: a secure IMAP-to-POP2 (RFC 937) conversion server and toolkit."""


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), required=True, help=CONFIG_HELP)
@click.option("--inetd", is_flag=True, help="Serve one session on stdin/stdout (inetd, xinetd, socat).")
@_log_option
def serve(config_path: Path, inetd: bool, log_level: str) -> None:
    """Run the POP2 server."""
    from .gateway.listeners import serve_forever, serve_stdio

    config = _load(config_path)
    setup_logging(log_level)
    from .gateway.privileges import PrivilegeError

    try:
        asyncio.run(serve_stdio(config) if inetd else serve_forever(config))
    except PrivilegeError as err:
        click.echo(f"pop2gate: {err}", err=True)
        sys.exit(2)
    except ConfigError as err:  # a store's path the serving user cannot use (gateway.privileges)
        click.echo(f"pop2gate: config error: {err}", err=True)
        sys.exit(2)
    except OSError as err:
        click.echo(f"pop2gate: cannot listen: {err}", err=True)
        sys.exit(1)


@main.command()
@click.option(
    "--dir", "directory", type=click.Path(path_type=Path), default=None,
    help="Where the demo store lives (default: pop2gate/demo under the XDG data home).",
)
@_log_option
def demo(directory: Path | None, log_level: str) -> None:
    """Serve a demo mailbox (user demo, password demo) on 127.0.0.1:1109."""
    from .demo import DEMO_ADDRESS, create_demo, default_dir
    from .gateway.listeners import serve_forever

    directory = directory or default_dir()
    config = create_demo(directory)
    host, port = DEMO_ADDRESS
    setup_logging(log_level)

    prog = sys.argv[0] if Path(sys.argv[0]).name == "pop2gate" else "pop2gate"

    def ready(_servers: list[asyncio.Server]) -> None:
        click.echo(
            f"pop2gate demo: serving {directory / 'mail'} on {host}:{port} (user demo, password demo)\n"
            f"Connect by hand:     telnet {host} {port}\n"
            f"  then type:         HELO demo demo, READ, RETR, ACKS (keep) or ACKD (delete), QUIT\n"
            f"Or with the client:  echo demo | {prog} fetch --host {host} --port {port} --user demo --list\n"
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
    config = _load(config_path)
    maildirs = [b for b in config.backend if isinstance(b, MaildirBackend)]
    if backend is not None:
        maildirs = [b for b in maildirs if b.name == backend]
    if len(maildirs) != 1:
        raise click.UsageError("the config must have exactly one maildir backend, or name one with --backend")
    return maildirs[0].users_file


def _read_password(confirm: bool = True) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
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
@click.option("--host", default="127.0.0.1", show_default=True, help="POP2 server.")
@click.option("--port", default=109, show_default=True, type=click.IntRange(1, 65535))
@click.option("--user", required=True, help="Login name (the password is read without echo, or from stdin).")
@click.option("--folder", help="Mailbox to read instead of INBOX.")
@click.option("--list", "list_only", is_flag=True, help="Only list message numbers and sizes; change nothing.")
@click.option("--maildir", type=click.Path(path_type=Path), help="Save messages into this Maildir.")
@click.option("--delete", is_flag=True, help="With --maildir: delete each message on the server once saved.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait on the network.")
@click.option("--tls", is_flag=True,
              help="TLS from the first octet (a pop2gate tls_listen port), TLS 1.2 or later. The server's "
                   "certificate and its name (--host) are verified, against the system's CAs or --ca-file.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --tls: trust the CA certificates in this PEM file instead of the system's.")
def fetch(host: str, port: int, user: str, folder: str | None, list_only: bool, maildir: Path | None,
          delete: bool, timeout: float, tls: bool, ca_file: Path | None) -> None:
    """Read a mailbox from a POP2 server (list it, or save it into a Maildir)."""
    import ssl

    from .fetch import fetch_to_maildir, list_messages
    from .pop2.client import Client, ProtocolError

    if list_only == (maildir is not None):
        raise click.UsageError("give exactly one of --list or --maildir")
    if delete and maildir is None:
        raise click.UsageError("--delete needs --maildir")
    if ca_file is not None and not tls:
        raise click.UsageError("--ca-file needs --tls")
    context = None
    if tls:
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except ssl.SSLError as err:
            raise click.BadParameter(f"no CA certificate in {ca_file}: {err}", param_hint="--ca-file") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    password = _read_password(confirm=False)
    try:
        with Client.connect(host, port, timeout=timeout, ssl_context=context) as client:
            count = client.helo(user, password)
            if folder:
                count = client.fold(folder)
            if list_only:
                for n, size in list_messages(client, count):
                    click.echo(f"{n:6d} {size:10d}")
                click.echo(f"{count} message(s) in {folder or 'INBOX'}")
            elif maildir is not None:
                saved = fetch_to_maildir(client, count, maildir, delete, report=click.echo)
                click.echo(f"{saved} message(s) saved to {maildir}" + (", deleted on the server" if delete else ""))
            client.quit()
    except (ProtocolError, OSError) as err:
        click.echo(f"pop2gate fetch: {err.__class__.__name__}: {err}", err=True)
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
    found = [b for b in config.backend if isinstance(b, ImapBackend) and b.oauth2 is not None]
    if backend is not None:
        found = [b for b in found if b.name == backend]
    if len(found) != 1:
        raise click.UsageError('the config must have exactly one imap backend with auth = "oauth2", '
                               'or name one with --backend')
    return config, found[0]


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
    password = _read_password()
    if not password:
        raise click.UsageError("empty password")
    try:
        owner = serving_ids(config)
    except PrivilegeError as err:
        raise click.ClickException(str(err)) from None

    def show(text: str) -> None:
        click.echo(f"Open this URL in a browser:\n{text}" if text.startswith("http") else text)

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
