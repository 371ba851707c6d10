"""The ``pgblobs`` command: the parsers of pgblobs/commands/, assembled.

Each command is a few lines that call the backend, the accounts or the
schema module; errors come back as one readable line and a non-zero exit.
"""

import argparse
import sys

from pgblobs.commands import (
    db,
    export_fs,
    fsck,
    import_fs,
    purge,
    quota,
    report,
    serve,
    tokens,
    users,
)
from pgblobs.commands.common import FAILURES, message

# In the order `pgblobs --help` lists them.
_COMMANDS = (serve, db, tokens, quota, users, report, purge, fsck, import_fs, export_fs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgblobs",
        description="pgblobs: blobs of end-to-end-encrypted sync clients, in PostgreSQL",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.configure_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(arguments)
    # A command may parse its own again: serve, over a configuration file's defaults.
    args.arguments = arguments
    try:
        args.run(args)
    except FAILURES as error:
        raise SystemExit(f"pgblobs: {message(error)}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
