"""Deleting an account: everything pgblobs holds of a user, in short
transactions, while nodes serve.

The steps, each its own short transaction, so no other user ever waits:

1. Close the account and revoke its tokens, in one commit. Every node hears
   the revocation (tokens.py) and refuses the user's next request (401); the
   closed account (``pgblobs.closed_accounts``, revision 0012) makes every
   later statement that adds a blob row or a token of the user fail, so a
   write that passed its token check before can no longer commit.
2. Remove the user's blob rows in batches of ``BATCH``, live ones first,
   each with its flags and its large object in the same statement.
3. Remove the user's uploads in progress with their large objects
   (``pgblobs.end_uploads``; the closed account refuses new ones). One a
   PATCH holds is passed over: its bytes are on their way, and it cannot
   complete (its blob row would be refused). The PATCH ends with its body or
   when the stall clock cuts it, so the uploads left are tried again, up to
   ``held_wait`` seconds (then UploadsHeld: run it again later).
4. The end: under the user's lock (``pgblobs.lock_users``), which a writer
   holds from inserting its rows until it commits, one more batch of blob
   rows and of uploads. A write that inserted before the account was closed
   has committed by then, and this batch sees its rows: when it finds some,
   the steps go on; when it finds none, nothing can come back, and the
   usage and quota rows and the finished uploads go and the account is
   marked emptied. (No token can be left: none could be added since step 1.)

Interrupted anywhere, running it again finishes the job: the account stays
closed, each batch removed whole rows with their content, and the steps
only ever remove what is left.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, fields

from pgblobs import names, settings
from pgblobs.db.queries import Row
from pgblobs.db.sync import SyncConnection
from pgblobs.ops.batches import drain

# Blob rows per batch: each unlinks as many large objects, so a batch takes
# tens of milliseconds and holds row locks of this user only.
BATCH = 500
# How often a deletion tries again the uploads that PATCHes hold.
_HELD_RETRY = 0.1


class UploadsHeld(Exception):
    """Uploads of a user that PATCHes held for longer than the deletion waited."""

    def __init__(self, user: str, count: int, waited: float) -> None:
        super().__init__(f"{count} upload(s) of {user} held by a PATCH for {waited:g} s")
        self.user, self.count, self.waited = user, count, waited


@dataclass(frozen=True)
class Contents:
    """What pgblobs holds of a user, before a deletion."""

    blobs: int
    bytes: int
    tombstones: int
    tokens: int
    quota_rows: int
    usage_rows: int
    uploads: int  # in progress
    finished_uploads: int
    closed: bool  # a deletion began
    emptied: bool  # and finished

    @property
    def nothing(self) -> bool:
        """Nothing of the user is here (and no deletion is half done)."""
        held = (
            self.blobs,
            self.tombstones,
            self.tokens,
            self.quota_rows,
            self.usage_rows,
            self.uploads,
            self.finished_uploads,
        )
        return not any(held) and (self.emptied or not self.closed)


@dataclass
class Removed:
    """What a deletion removed, per kind."""

    blobs: int = 0
    tombstones: int = 0
    large_objects: int = 0
    bytes: int = 0
    flags: int = 0
    tokens: int = 0
    quota_rows: int = 0
    usage_rows: int = 0
    uploads: int = 0  # in progress
    finished_uploads: int = 0
    resumed: bool = False  # an earlier run had closed the account already

    def add_batch(self, row: Row) -> int:
        """Count one batch's ``delete_account_batch`` row; the blob rows it removed."""
        self.blobs += row.blobs
        self.tombstones += row.tombstones
        self.large_objects += row.large_objects
        self.bytes += row.bytes
        self.flags += row.flags
        return int(row.blobs + row.tombstones)

    def add_uploads(self, row: Row) -> tuple[int, int]:
        """Count one ``end_account_uploads`` row; the uploads it removed, and
        how many of the user's are left."""
        self.uploads += row.uploads
        self.large_objects += row.large_objects
        return int(row.uploads), int(row.remaining)

    def counts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "resumed"}


def contents(connection: SyncConnection, user: str) -> Contents:
    row = connection.fetch("account_contents", {"user": names.user_name(user)})[0]
    return Contents(
        blobs=int(row.blobs),
        bytes=int(row.bytes),
        tombstones=row.tombstones,
        tokens=row.tokens,
        quota_rows=row.quota_rows,
        usage_rows=row.usage_rows,
        uploads=row.uploads,
        finished_uploads=row.finished_uploads,
        closed=row.closed,
        emptied=row.emptied_at is not None,
    )


def delete_account(
    connection: SyncConnection, user: str, held_wait: float = settings.HELD_UPLOAD_WAIT
) -> Removed:
    """Remove every blob, tombstone, flag, large object, token, quota and
    usage row and every upload of ``user`` (the steps in the module
    docstring); what went. UploadsHeld when PATCHes held some of its uploads
    for ``held_wait`` seconds."""
    user = names.user_name(user)
    removed = Removed()
    held = contents(connection, user)
    params = {"user": user}
    with connection.transaction():
        removed.resumed = connection.execute("close_account", params) == 0
        removed.tokens = connection.fetch("revoke_tokens", params)[0].revoked

    def batch() -> int:
        row = connection.fetch("delete_account_batch", {"user": user, "batch": BATCH})[0]
        return removed.add_batch(row)

    def uploads_batch() -> tuple[int, int]:
        row = connection.fetch("end_account_uploads", {"user": user, "batch": BATCH})[0]
        return removed.add_uploads(row)

    emptied = False
    while not emptied:
        drain(batch, held.blobs + held.tombstones, f"deleting {user}", unit="rows")
        _end_uploads(uploads_batch, user, held_wait)
        with connection.transaction():
            connection.fetch("lock_users", {"users": [user]})
            # Rows and uploads here are a write's that began before the account closed.
            emptied = batch() == 0 and uploads_batch() == (0, 0)
            if emptied:
                removed.usage_rows = connection.execute("forget_usage", params)
                removed.quota_rows = connection.execute("clear_quota", params)
                removed.finished_uploads = connection.execute("forget_finished_uploads", params)
                connection.execute("mark_account_emptied", params)
    return removed


def _end_uploads(batch: Callable[[], tuple[int, int]], user: str, held_wait: float) -> None:
    """Run ``batch()`` (uploads removed, uploads left) until none is left;
    while every one left is held, try again, for ``held_wait`` seconds."""
    deadline = time.monotonic() + held_wait
    while True:
        ended, left = batch()
        if not left:
            return
        if not ended:
            if time.monotonic() >= deadline:
                raise UploadsHeld(user, left, held_wait)
            time.sleep(_HELD_RETRY)
