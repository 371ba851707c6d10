"""Writing blobs: the one place that chooses how a blob travels (inline
through the group commit, or streamed into a large object), the prechecks
that refuse a write before its body is read, and many blobs in one
transaction.
"""

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer

from pgblobs import names, transfer
from pgblobs.db import largeobjects
from pgblobs.db.connector import Database
from pgblobs.db.small_writes import TOO_MANY_BLOBS, QuotaParams, SmallWrites
from pgblobs.errors import BlobExists, QuotaExceeded, TransferStopped
from pgblobs.interfaces import IBodyOnDemand
from pgblobs.versions import INLINE_LIMIT


def _give_up(pipes: list[transfer.UploadPipe]) -> None:
    """Stop the uploads of a failed write; raise the producer's own error
    if one failed first, since its reason is the real one."""
    for pipe in pipes:
        if pipe.error is not None:
            pipe.error.raiseException()
    for pipe in pipes:
        pipe.abort(Failure(TransferStopped("the blob could not be stored")))
        pipe.stop_producer()


class Writes:
    """Stores new blobs on the primary, ``quota()`` giving the default limits."""

    def __init__(
        self, reactor: Any, database: Database, quota: QuotaParams, small: SmallWrites
    ) -> None:
        self._reactor = reactor
        self._database = database
        self._quota = quota
        self._small = small

    async def one(self, key: names.BlobKey, producer: IBodyProducer, flags: list[str]) -> None:
        """Store what ``producer`` produces as the blob ``key``."""
        length = None if producer.length is UNKNOWN_LENGTH else int(producer.length)
        small = length is not None and length <= INLINE_LIMIT
        # A small body already on its way costs less to read than a round
        # trip to refuse it first; one the client sends only when asked
        # (IBodyOnDemand, HTTP's Expect: 100-continue) is checked first.
        if small and IBodyOnDemand.providedBy(producer) and producer.sent_on_demand:
            await self._precheck(key, length)
        if small and length is not None and self._small.fits(length):
            # Small and known: gathered on the reactor, then committed with
            # the other small writes of the moment.
            await self._small.store(key, producer, length, flags)
            return
        room = await self._precheck(key, length)
        pipe = transfer.UploadPipe(self._reactor, producer)
        try:
            await self._database.in_thread(
                largeobjects.store, pipe, key, self._quota(), room, flags, owner=key.user
            )
        except BaseException:
            _give_up([pipe])
            raise

    async def _precheck(self, key: names.BlobKey, length: int | None) -> int | None:
        """Refuse a write whose id is taken or whose known length is over
        quota before reading its body; the bytes the user may still store
        (None: no limit)."""
        precheck = (
            await self._database.fetch("write_precheck", dict(key.params(), **self._quota()))
        )[0]
        if precheck.taken:
            raise BlobExists("a live blob already has this id")
        if precheck.room_blobs is not None and precheck.room_blobs < 1:
            raise QuotaExceeded(TOO_MANY_BLOBS)
        room: int | None = precheck.room
        if length is not None and room is not None and length > room:
            raise QuotaExceeded("the blob does not fit in the user's quota")
        return room

    async def many(
        self,
        keys: list[names.BlobKey],
        blobs: Sequence[tuple[str, int, Callable[[], IBodyProducer]]],
        before_commit: Callable[[], Deferred[Any]] | None,
    ) -> None:
        """See IBlobStore.write_blobs (``keys``: the blobs' distinct keys).
        The per-user lock is taken only once all content is written, so the
        user's other writes wait milliseconds, not for the client."""
        if not keys:
            if before_commit is not None:
                await before_commit()
            return
        precheck = (
            await self._database.fetch(
                "write_many_precheck",
                dict(keys[0].params(), blob_ids=[key.blob_id for key in keys], **self._quota()),
            )
        )[0]
        room = precheck.room
        if precheck.taken:
            raise BlobExists(f"a live blob already has the id {precheck.taken}")
        if precheck.room_blobs is not None and precheck.room_blobs < len(keys):
            raise QuotaExceeded("the blobs are more than the user's quota of blobs allows")
        if room is not None and sum(size for _, size, _ in blobs) > room:
            raise QuotaExceeded("the blobs do not fit in the user's quota")
        pipes = []

        def next_pipe(index: int) -> transfer.UploadPipe:
            pipes.append(transfer.UploadPipe(self._reactor, blobs[index][2]()))
            return pipes[-1]

        def confirm() -> Deferred[Any]:
            return defer.maybeDeferred(before_commit) if before_commit else defer.succeed(None)

        try:
            await self._database.in_thread(
                largeobjects.store_all,
                self._reactor,
                next_pipe,
                confirm,
                keys,
                self._quota(),
                room,
                owner=keys[0].user,
            )
        except BaseException:
            _give_up(pipes)
            raise
