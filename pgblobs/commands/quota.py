"""``pgblobs quota set|show``: per-user quotas."""

import argparse

from pgblobs import accounts
from pgblobs.commands.common import (
    Handler,
    Subcommands,
    byte_limit,
    database_options,
    with_connection,
)
from pgblobs.db.sync import SyncConnection


def _quota_setting(text: str) -> int | str | None:
    """What `quota set` accepts: a byte limit, or 'default' to drop the override."""
    if text.lower() == "default":
        return "default"
    return byte_limit(text)


@with_connection
def _quota_set(connection: SyncConnection, args: argparse.Namespace) -> None:
    if args.bytes == "default":
        accounts.clear_quota(connection, args.user)
        print(f"{args.user}: the server's default quota applies")
    else:
        accounts.set_quota(connection, args.user, args.bytes)
        limit = "unlimited" if args.bytes is None else f"{args.bytes} bytes"
        print(f"{args.user}: quota {limit}")


@with_connection
def _quota_show(connection: SyncConnection, args: argparse.Namespace) -> None:
    has_override, quota_bytes, used = accounts.quota(connection, args.user)
    if not has_override:
        limit = "server default"
    elif quota_bytes is None:
        limit = "unlimited"
    else:
        limit = f"{quota_bytes} bytes"
    print(f"{args.user}: quota {limit}, {used} bytes used")


def _user_command(
    commands: Subcommands, name: str, help_text: str, run: Handler
) -> argparse.ArgumentParser:
    """A subcommand taking a USER and the database options."""
    command = commands.add_parser(name, help=help_text)
    command.add_argument("user")
    database_options(command)
    command.set_defaults(run=run)
    return command


def configure_parser(commands: Subcommands) -> None:
    quota = commands.add_parser("quota", help="per-user quotas").add_subparsers(
        dest="quota_command", required=True, metavar="COMMAND"
    )
    set_quota = _user_command(
        quota, "set", "set USER's quota: BYTES, 'unlimited' or 'default'", _quota_set
    )
    set_quota.add_argument("bytes", type=_quota_setting)
    _user_command(quota, "show", "USER's quota and usage", _quota_show)
