"""Writing blobs: the one place that chooses how a blob travels (inline
through the group commit, or streamed into a large object), the prechecks
that refuse a write before its body is read, the retries that repeat a live
blob's bytes (done, nothing stored), and many blobs in one transaction.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer

from pgblobs import names, transfer
from pgblobs.db import largeobjects
from pgblobs.db.connector import Database
from pgblobs.db.small_writes import TOO_MANY_BLOBS, QuotaParams, SmallWrites, TakenAtCommit
from pgblobs.errors import BlobExists, BlobReserved, QuotaExceeded
from pgblobs.interfaces import IBodyOnDemand, IStampedBody, stamp_length
from pgblobs.versions import INLINE_LIMIT

_TAKEN = "a live blob already has this id"


@dataclass(frozen=True)
class _Live:
    """The live blob an id already names, as much of it as a retry repeats."""

    size: int
    sha256: bytes

    @classmethod
    def of(cls, size: int, sha256: memoryview | bytes) -> "_Live":
        """From a row's size and sha256 (bytea)."""
        return cls(int(size), bytes(sha256))

    def repeated_by(self, digest: transfer.ContentDigest) -> bool:
        return digest.size == self.size and digest.sha256 == self.sha256


@dataclass(frozen=True)
class _Precheck:
    room: int | None  # the bytes the user may still store (None: no limit)
    live: _Live | None  # the live blob that has the id, if one has


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
        # (IBodyOnDemand, HTTP's Expect: 100-continue) is checked first, and
        # so is a stamped one, whose retry only the live blob's own stamp
        # can recognise.
        on_demand = IBodyOnDemand.providedBy(producer) and producer.sent_on_demand
        precheck = None
        if small and (on_demand or IStampedBody.providedBy(producer)):
            precheck = await self._precheck(key, length)
            if precheck.live is not None:
                return await self._repeat(key, producer, length, precheck.live)
        if small and length is not None and self._small.fits(length):
            # Small and known: gathered on the reactor, then committed with
            # the other small writes of the moment.
            try:
                await self._small.store(key, producer, length, flags)
            except TakenAtCommit as taken:
                await self._repeated_meanwhile(key, taken.digest)
            return
        if precheck is None:
            precheck = await self._precheck(key, length)
        if precheck.live is not None:
            return await self._repeat(key, producer, length, precheck.live)
        pipe = transfer.UploadPipe(self._reactor, producer)
        try:
            await self._database.in_thread(
                largeobjects.store, pipe, key, self._quota(), precheck.room, flags, owner=key.user
            )
        except BlobReserved:
            transfer.give_up([pipe])
            raise
        except BlobExists:
            # Taken meanwhile: refused by the live key once every byte had
            # passed through the pipe, so its digest is the whole body's.
            transfer.give_up([pipe])
            await self._repeated_meanwhile(key, pipe.digest)
        except BaseException:
            transfer.give_up([pipe])
            raise

    async def _precheck(self, key: names.BlobKey, length: int | None) -> _Precheck:
        """Before reading a body: the live blob that has the id, if any;
        else the write is refused when its known length is over quota."""
        precheck = (
            await self._database.fetch("write_precheck", dict(key.params(), **self._quota()))
        )[0]
        if precheck.reserved:
            raise BlobReserved("an upload in progress has reserved this id")
        live = None
        if precheck.live_size is not None:
            live = _Live.of(precheck.live_size, precheck.live_sha256)
        room: int | None = precheck.room
        # A retry stores nothing, so only a new blob must fit.
        if live is None:
            if precheck.room_blobs is not None and precheck.room_blobs < 1:
                raise QuotaExceeded(TOO_MANY_BLOBS)
            if length is not None and room is not None and length > room:
                raise QuotaExceeded("the blob does not fit in the user's quota")
        return _Precheck(room, live)

    async def _repeat(
        self, key: names.BlobKey, producer: IBodyProducer, length: int | None, live: _Live
    ) -> None:
        """A write whose id ``live`` has: done, nothing stored, when its body
        repeats that blob's bytes, else BlobExists. A body of another known
        length is refused unread; one of the same length is read and hashed,
        never held (a retry of a lost answer costs its upload, not storage)."""
        if length is not None and length != live.size:
            raise BlobExists(_TAKEN)
        stamp = stamp_length(producer)
        head = b""
        if stamp:
            rows = await self._database.fetch("live_head", dict(key.params(), length=stamp))
            if not rows:  # deleted meanwhile: nothing to repeat
                raise BlobExists(_TAKEN)
            head = bytes(rows[0].head)
        if not live.repeated_by(await transfer.digest_of(producer, head, stamp)):
            raise BlobExists(_TAKEN)

    async def _repeated_meanwhile(self, key: names.BlobKey, digest: transfer.ContentDigest) -> None:
        """A write refused at its commit, a live blob having its id by then:
        done when ``digest`` (of the whole body) is that blob's, else
        BlobExists. A stamped body matches only a twin stamped in the same
        second; its later retries go through the precheck, which compares
        the bytes after the stamp."""
        live = await self._live(key.user, key.namespace, [key.blob_id])
        if key.blob_id not in live or not live[key.blob_id].repeated_by(digest):
            raise BlobExists(_TAKEN)

    async def _live(self, user: str, namespace: str, blob_ids: list[str]) -> dict[str, _Live]:
        """The live blobs among ``blob_ids``, on the primary."""
        rows = await self._database.fetch(
            "live_digests", {"user": user, "namespace": namespace, "blob_ids": blob_ids}
        )
        return {row.blob_id: _Live.of(row.size, row.sha256) for row in rows}

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
        rows = await self._database.fetch(
            "write_many_precheck",
            dict(keys[0].params(), blob_ids=[key.blob_id for key in keys], **self._quota()),
        )
        room = rows[0].room
        live = {row.taken: _Live.of(row.size, row.sha256) for row in rows if row.taken}
        # A blob whose id a live blob of its size has must repeat that
        # blob's bytes (checked as they pass), and is not stored again.
        repeats: dict[int, bytes] = {}
        for index, (blob_id, size, _) in enumerate(blobs):
            if blob_id in live:
                if live[blob_id].size != size:
                    raise BlobExists(f"a live blob already has the id {blob_id}")
                repeats[index] = live[blob_id].sha256
        new_sizes = [size for index, (_, size, _) in enumerate(blobs) if index not in repeats]
        if rows[0].room_blobs is not None and rows[0].room_blobs < len(new_sizes):
            raise QuotaExceeded("the blobs are more than the user's quota of blobs allows")
        if room is not None and sum(new_sizes) > room:
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
                repeats,
                owner=keys[0].user,
            )
        except BlobExists as taken:
            transfer.give_up(pipes)
            # Taken meanwhile (the rollback stored none of them): done only
            # when another writer stored every one of these very blobs.
            if not await self._all_repeated(keys, pipes):
                raise taken from None
        except BaseException:
            transfer.give_up(pipes)
            raise

    async def _all_repeated(
        self, keys: list[names.BlobKey], pipes: list[transfer.UploadPipe]
    ) -> bool:
        """Whether live blobs have all of ``keys``, each with the bytes its
        pipe carried (there is a pipe for each only once every byte is in)."""
        if len(pipes) < len(keys):
            return False
        live = await self._live(keys[0].user, keys[0].namespace, [key.blob_id for key in keys])
        return all(
            key.blob_id in live and live[key.blob_id].repeated_by(pipe.digest)
            for key, pipe in zip(keys, pipes, strict=True)
        )
