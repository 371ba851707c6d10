"""``pgblobs user delete``: remove everything pgblobs holds of a user."""

import argparse
import sys

from pgblobs import settings
from pgblobs.commands.common import (
    Subcommands,
    database_options,
    non_negative_seconds,
    with_connection,
)
from pgblobs.db.sync import SyncConnection
from pgblobs.ops.output import human_size

# What a CouchDB token source means for a deletion (README, "Deleting an account").
COUCHDB_NOTE = (
    "note: nodes that take users' tokens from a provider's CouchDB (--user-tokens couchdb:URL) "
    "cannot have them revoked by pgblobs: the provider must end the user's sessions there "
    "(pgblobs refuses the user's writes either way)"
)


def _confirmed(user: str, summary: str) -> bool:
    """The operator's yes on the terminal; without a terminal, a refusal."""
    if not sys.stdin.isatty():
        raise SystemExit(
            f"pgblobs: user delete asks before deleting, and stdin is not a terminal: "
            f"pass --yes to delete everything of user {user}"
        )
    # On stderr, where a question belongs when stdout is kept.
    print(f"Delete everything of user {user} ({summary})? [y/N] ", end="", file=sys.stderr)
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


@with_connection
def _delete(connection: SyncConnection, args: argparse.Namespace) -> None:
    from pgblobs.ops import accounts

    held = accounts.contents(connection, args.user)
    if held.nothing:
        state = "its account was deleted already" if held.closed else "nothing to delete"
        print(f"user {args.user}: pgblobs holds nothing of this user ({state})")
        return
    summary = (
        f"{held.blobs} blob(s), {human_size(held.bytes)}, {held.tombstones} tombstone(s), "
        f"{held.tokens} token(s), {held.uploads} upload(s) in progress"
        + (", a quota override" if held.quota_rows else "")
    )
    if not args.yes and not _confirmed(args.user, summary):
        raise SystemExit("pgblobs: nothing deleted")
    try:
        removed = accounts.delete_account(connection, args.user, args.held_upload_wait)
    except KeyboardInterrupt:
        raise SystemExit(
            f"pgblobs: interrupted; the account of {args.user} is closed and partly deleted: "
            f"run `pgblobs user delete {args.user} --yes` again to finish"
        ) from None
    except accounts.UploadsHeld as held_uploads:
        raise SystemExit(
            f"pgblobs: {held_uploads.count} upload(s) of {args.user} still held by a PATCH "
            f"in progress after {held_uploads.waited:g} s; the account is closed and its "
            f"blobs are deleted: run `pgblobs user delete {args.user} --yes` again once the "
            "PATCH ends (with its body, or when the stall clock cuts it)"
        ) from None
    resumed = " (resuming an earlier, interrupted deletion)" if removed.resumed else ""
    print(f"deleted user {args.user}{resumed}:")
    for kind, count in removed.counts().items():
        shown = f"{count} ({human_size(count)})" if kind == "bytes" else str(count)
        print(f"  {kind.replace('_', ' ')}: {shown}")
    print(COUCHDB_NOTE)


def configure_parser(commands: Subcommands) -> None:
    user = commands.add_parser("user", help="users' accounts").add_subparsers(
        dest="user_command", required=True, metavar="COMMAND"
    )
    delete = user.add_parser(
        "delete",
        help="remove everything of USER, in short batches while nodes serve",
        description="Remove every blob, tombstone, flag, large object, token, quota and usage "
        "row and every upload of USER. First the account is closed and its tokens revoked, in "
        "one commit: every node refuses the user's next request (401), and no write of the "
        "user commits from then on. Then the blob rows go a few hundred per transaction, each "
        "with its large object, so other users never wait; then the uploads in progress, with "
        "theirs (one a PATCH holds is tried again for up to --held-upload-wait seconds); the "
        "usage and quota rows go last. It prints what it removed. The account stays closed: "
        "new tokens, blobs and uploads of USER are refused (deleting its row from "
        "pgblobs.closed_accounts gives the name back). Interrupted, run it again: it finishes "
        "the job. Without --yes it asks on the terminal, and refuses when stdin is not one. A "
        "user of whom pgblobs holds nothing is said so, exit 0.",
    )
    delete.add_argument("user", metavar="USER")
    delete.add_argument(
        "--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)"
    )
    delete.add_argument(
        "--held-upload-wait",
        type=non_negative_seconds,
        default=settings.HELD_UPLOAD_WAIT,
        metavar="SECONDS",
        help="how long to wait for PATCHes in progress that hold uploads of USER (default "
        "%(default)g)",
    )
    database_options(delete)
    delete.set_defaults(run=_delete)
