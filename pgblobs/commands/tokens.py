"""``pgblobs token`` and ``pgblobs service-token``: create and revoke the
access tokens of users and of services (an MX delivering mail)."""

import argparse
from collections.abc import Callable

from pgblobs import accounts
from pgblobs.commands.common import Handler, Subcommands, database_options, with_connection
from pgblobs.db.sync import SyncConnection


def _token_commands(
    create: Callable[[SyncConnection, str], str],
    revoke: Callable[[SyncConnection, str], int],
    holder: str,
) -> tuple[Handler, Handler]:
    """The create and revoke commands of one kind of token (users', services')."""

    @with_connection
    def create_command(connection: SyncConnection, args: argparse.Namespace) -> None:
        print(create(connection, args.holder))

    @with_connection
    def revoke_command(connection: SyncConnection, args: argparse.Namespace) -> None:
        revoked = revoke(connection, args.holder)
        print(f"revoked {revoked} token(s) of {holder} {args.holder}")

    return create_command, revoke_command


def configure_parser(commands: Subcommands) -> None:
    for command_name, help_text, holder, metavar, create, revoke in (
        (
            "token",
            "access tokens of users",
            "user",
            "USER",
            accounts.create_token,
            accounts.revoke_tokens,
        ),
        (
            "service-token",
            "access tokens of services (an MX delivering mail)",
            "service",
            "NAME",
            accounts.create_service_token,
            accounts.revoke_service_tokens,
        ),
    ):
        token = commands.add_parser(command_name, help=help_text).add_subparsers(
            dest=f"{command_name}_command", required=True, metavar="COMMAND"
        )
        for action, run, action_help in zip(
            ("create", "revoke"),
            _token_commands(create, revoke, holder),
            (
                f"print a new token for the {holder} {metavar} (only the token)",
                f"revoke every token of the {holder} {metavar}",
            ),
            strict=True,
        ):
            command = token.add_parser(action, help=action_help)
            command.add_argument("holder", metavar=metavar)
            database_options(command)
            command.set_defaults(run=run)
