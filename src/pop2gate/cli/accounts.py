"""`pop2gate user` and `pop2gate oauth`: who may log in (Maildir users, OAuth2 grants)."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from pathlib import Path

import click

from ..config import Config
from ..stores.imap import ImapBackend
from ..stores.maildir import MaildirBackend
from .base import CONFIG_HELP, load, main, one_backend


@main.group()
def user() -> None:
    """Manage users of a Maildir backend."""


def _users_file(config_path: Path | None, users_file: Path | None,
                backend: str | None) -> tuple[Path, tuple[int, int] | None]:
    """The users file, and who must own it: as root, the user `serve` runs as (from the
    config), or with --users-file the owner the file already has; else nobody in particular."""
    from ..gateway.privileges import PrivilegeError, serving_ids

    if users_file is not None:
        try:
            st = users_file.stat()
        except OSError:
            return users_file, None
        return users_file, (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    if config_path is None:
        raise click.UsageError("give -c CONFIG or --users-file FILE")
    config = load(config_path)
    path = one_backend(config, MaildirBackend, backend, "maildir backend").users_file
    try:
        return path, serving_ids(config)
    except PrivilegeError as err:
        raise click.ClickException(str(err)) from None


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

    The password is read without echo, or from stdin when it is not a terminal. Run as
    root, the file (mode 0600) is left to the user `serve` runs as (server.user of the
    config; with --users-file, the file keeps the owner it has).
    """
    from ..stores.maildir.users import set_password

    path, owner = _users_file(config_path, users_file, backend)
    try:
        new = set_password(path, name, _read_password(), owner)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    click.echo(f"{'added' if new else 'changed'} user {name} in {path}")


@main.group()
def oauth() -> None:
    """Manage the OAuth2 grants of IMAP backends with auth = "oauth2" (docs/oauth2.md)."""


def _oauth_backend(config_path: Path, backend: str | None) -> tuple[Config, ImapBackend]:
    config = load(config_path)
    return config, one_backend(config, ImapBackend, backend, 'imap backend with auth = "oauth2"',
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
    from ..gateway.privileges import PrivilegeError, serving_ids
    from ..oauth2 import flows, tokenfile
    from ..oauth2.endpoint import Endpoint, Tokens
    from ..passwords import valid_user_name

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
    from ..oauth2 import tokenfile

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
    from ..oauth2 import tokenfile

    _, chosen = _oauth_backend(config_path, backend)
    assert chosen.oauth2 is not None
    if not tokenfile.remove(chosen.oauth2.tokens_dir, name):
        raise click.ClickException(f"no grant stored for {name!r}")
    click.echo(f"removed the grant of {name}")
