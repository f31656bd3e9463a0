"""`pop2gate fetch` and `pop2gate check`: the POP2 client and the advisory checker."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .base import main


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

    from ..console import PasswordError, read_password
    from ..fetch import FetchError, Session, TargetError, parse_host_port, run, tls_context
    from ..mailfiles import MaildirWriter, MboxWriter, StdoutWriter, WriteError

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
    from .. import check as checker

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
