"""Small writes, gathered in memory and committed together: one statement
and one WAL flush for the small blobs of the moment (group commit), with
the bytes held at once bounded, and a user's busy lock waited out apart.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2
from twisted.internet import task
from twisted.web.iweb import IBodyProducer

from pgblobs import names, settings, transfer
from pgblobs.db.batching import Coalescer
from pgblobs.db.connector import Database
from pgblobs.errors import BlobExists, BlobReserved, DatabaseUnavailable, QuotaExceeded

# Group-commit batches of small writes in flight at once; more writes wait
# and fill the next batch (see db/batching.py).
WRITES_IN_FLIGHT = 2
# A small write whose user's lock another writer holds waits outside the
# batches and tries again: first after this many seconds, doubling up to
# the second figure, for at most the third in all (then 503).
BUSY_RETRY_FIRST = 0.005
BUSY_RETRY_MOST = 0.2
BUSY_PATIENCE = settings.STATEMENT_TIMEOUT
TOO_MANY_BLOBS = "the user has as many blobs as the quota allows"

# The default quota limits, as the write statements take them (asked anew
# for every write: they may change while the store runs).
QuotaParams = Callable[[], dict[str, int | None]]


@dataclass(frozen=True)
class _SmallWrite:
    """A small blob's whole content, on its way into a group commit."""

    key: names.BlobKey
    content: bytes
    digest: transfer.ContentDigest
    flags: list[str]


class TakenAtCommit(BlobExists):
    """A live blob had the id when the write's batch committed; ``digest``
    is that of the refused bytes, so the writer can tell whether they
    repeat the live blob's."""

    def __init__(self, digest: transfer.ContentDigest) -> None:
        super().__init__("a live blob already has this id")
        self.digest = digest


class _UserBusy(Exception):
    """Another writer holds the user's lock: this small write goes again later."""


def _write_outcome(status: str) -> BaseException | None:
    """What pgblobs.store_small_blobs_v2 says of one item, as its outcome."""
    if status == "exists":
        return BlobExists("a live blob already has this id")
    if status == "quota":
        return QuotaExceeded("the blob does not fit in the user's quota")
    if status == "blobs":
        return QuotaExceeded(TOO_MANY_BLOBS)
    if status == "busy":
        return _UserBusy()
    return None


class SmallWrites:
    """The group commit of small bodies of known length.

    Bodies held at once, gathering or waiting for their batch, are bounded
    to ``max_buffered_bytes``: past that a write is not taken here (``fits``
    says so), and goes the streamed way, which holds nothing while it waits
    for a connection.
    """

    def __init__(
        self, reactor: Any, database: Database, quota: QuotaParams, max_buffered_bytes: int
    ) -> None:
        self._reactor = reactor
        self._database = database
        self._quota = quota
        self._buffer_limit = max_buffered_bytes
        self.buffered = 0  # bytes of small bodies gathered or waiting for their batch
        self._batches = Coalescer(reactor, self._store_small, max_in_flight=WRITES_IN_FLIGHT)

    def fits(self, length: int) -> bool:
        """Whether a body of ``length`` bytes may be held now."""
        return self.buffered + length <= self._buffer_limit

    async def store(
        self, key: names.BlobKey, producer: IBodyProducer, length: int, flags: list[str]
    ) -> None:
        """Gather ``producer``'s ``length`` bytes on the reactor, then commit
        them with the other small writes of the moment; TakenAtCommit when a
        live blob has the id."""
        self.buffered += length
        try:
            content, digest = await transfer.gather_small(producer)
            try:
                await self._commit(_SmallWrite(key, content, digest, flags))
            except BlobReserved:
                raise
            except BlobExists:
                raise TakenAtCommit(digest) from None
        finally:
            self.buffered -= length

    async def _commit(self, write: _SmallWrite) -> None:
        """``write`` through the group commit. While another writer holds its
        user's lock, it waits here, outside the batches, so other users'
        writes never queue behind that lock."""
        delay, give_up = BUSY_RETRY_FIRST, self._reactor.seconds() + BUSY_PATIENCE
        while True:
            try:
                return await self._batches.submit(write)
            except _UserBusy:
                if self._reactor.seconds() >= give_up:
                    raise DatabaseUnavailable(
                        "the user's other writes hold up this one; try again shortly"
                    ) from None
            await task.deferLater(self._reactor, delay, lambda: None)
            delay = min(2 * delay, BUSY_RETRY_MOST)

    async def _store_small(self, writes: list[_SmallWrite]) -> list[BaseException | None]:
        """One outcome per write, whatever happens to the others: a batch
        refused as a whole (a name another kind of writer took meanwhile, say)
        is sent again one write at a time, so only the culprit fails."""
        try:
            return await self._store_batch(writes)
        except DatabaseUnavailable:
            raise  # not stored, any of them: each caller hears it
        except Exception:
            if len(writes) == 1:
                raise
        outcomes: list[BaseException | None] = []
        for done, write in enumerate(writes):
            try:
                outcomes += await self._store_batch([write])
            except DatabaseUnavailable as error:
                # The database, not this write: the rest would only wait for
                # the same answer, one deadline each.
                return outcomes + [error] * (len(writes) - done)
            except Exception as error:
                outcomes.append(error)
        return outcomes

    async def _store_batch(self, writes: list[_SmallWrite]) -> list[BaseException | None]:
        rows = await self._database.fetch(
            "put_small_blobs",
            {
                "users": [write.key.user for write in writes],
                "namespaces": [write.key.namespace for write in writes],
                "blob_ids": [write.key.blob_id for write in writes],
                "contents": [psycopg2.Binary(write.content) for write in writes],
                "tags": [write.digest.tag for write in writes],
                "sha256s": [psycopg2.Binary(write.digest.sha256) for write in writes],
                "flags": [",".join(write.flags) for write in writes],
                **self._quota(),
            },
        )
        return [_write_outcome(status) for status in rows[0].statuses]
