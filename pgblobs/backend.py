"""PostgresBlobsBackend: IBlobsBackend on PostgreSQL, one method per interface method.

Each method validates its names first (no database work for bad input), then
runs named statements (db/queries.sql) or hands content to a worker thread
(db/largeobjects.py, fed by the adapters of transfer.py). Nothing is cached
in the process: every answer comes from the database, which several server
nodes may share.
"""

from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

import psycopg2
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from pgblobs import names, settings, transfer
from pgblobs.db import largeobjects
from pgblobs.db.batching import Coalescer
from pgblobs.db.connector import Database
from pgblobs.db.queries import Row
from pgblobs.db.replicas import Replicas
from pgblobs.errors import (
    BlobExists,
    BlobNotFound,
    DatabaseUnavailable,
    QuotaExceeded,
    TransferStopped,
)
from pgblobs.interfaces import IBlobsBackend, deferred
from pgblobs.names import ByteRange

LOOKUP_BATCH = 100  # ids per statement when many blobs are opened at once
_Wanted = TypeVar("_Wanted", bound=Hashable)
# At or below this size a blob travels inline, in one statement: the escaped
# bytes it costs are cheaper than the round trips of the large-object calls.
INLINE_LIMIT = 256 * 1024
# Group-commit batches of small writes in flight at once; more writes wait
# and fill the next batch (see db/batching.py).
WRITES_IN_FLIGHT = 2
# A small write whose user's lock another writer holds waits outside the
# batches and tries again: first after this many seconds, doubling up to
# the second figure, for at most the third in all (then 503).
BUSY_RETRY_FIRST = 0.005
BUSY_RETRY_MOST = 0.2
BUSY_PATIENCE = settings.STATEMENT_TIMEOUT
# Page statements of listings running at once, all listings together.
PAGES_IN_FLIGHT = 2


def _give_up(pipes: list[transfer.UploadPipe]) -> None:
    """Stop the uploads of a failed write; raise the producer's own error
    if one failed first, since its reason is the real one."""
    for pipe in pipes:
        if pipe.error is not None:
            pipe.error.raiseException()
    for pipe in pipes:
        pipe.abort(Failure(TransferStopped("the blob could not be stored")))
        pipe.stop_producer()


@dataclass(frozen=True)
class _SmallWrite:
    """A small blob's whole content, on its way into a group commit."""

    key: names.BlobKey
    content: bytes
    digest: transfer.ContentDigest
    flags: list[str]


class _UserBusy(Exception):
    """Another writer holds the user's lock: this small write goes again later."""


def _write_outcome(status: str) -> BaseException | None:
    """What pgblobs.store_small_blobs_v2 says of one item, as its outcome."""
    if status == "exists":
        return BlobExists("a live blob already has this id")
    if status == "quota":
        return QuotaExceeded("the blob does not fit in the user's quota")
    if status == "blobs":
        return QuotaExceeded(_TOO_MANY_BLOBS)
    if status == "busy":
        return _UserBusy()
    return None


_TOO_MANY_BLOBS = "the user has as many blobs as the quota allows"


@dataclass(frozen=True)
class OpenBlob:
    """One version of a blob: size and tag, and its content when small.

    ``row`` is the version's row in ``pgblobs.blobs``; ``content`` is None
    when the bytes are still to be read (large blobs, or opened in a batch).
    """

    user: str
    blob_id: str
    size: int
    tag: str
    row: int
    content: bytes | None
    _backend: "PostgresBlobsBackend" = field(repr=False, compare=False)
    # The database that found this version (a replica, or the primary).
    _source: Database = field(repr=False, compare=False)

    def read(self, consumer: IConsumer, range: ByteRange | None = None) -> Deferred[None]:
        """Stream this version's bytes (``range`` as in ``read_blob``) into
        ``consumer``; BlobNotFound if it was deleted meanwhile."""
        return defer.ensureDeferred(self._backend._read_version(self, consumer, range))


@implementer(IBlobsBackend)
class PostgresBlobsBackend:
    """Blobs in PostgreSQL large objects, their metadata in ``pgblobs.blobs``.

    ``quota_bytes`` is the default quota of every user (None: unlimited);
    a row in ``pgblobs.quotas`` overrides it for one user. ``quota_blobs``
    bounds every user's number of live blobs (None: no limit).
    """

    def __init__(
        self,
        database: Database,
        quota_bytes: int | None = settings.QUOTA_BYTES,
        reactor: Any = None,
        max_buffered_bytes: int = settings.MAX_BUFFERED_BYTES,
        replica_max_lag: float = settings.REPLICA_MAX_LAG,
        quota_blobs: int | None = settings.QUOTA_BLOBS,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.database = database
        # Which database answers a read: replicas may (see ``reading.join``),
        # writes never go there.
        self.reading = Replicas(reactor, database, replica_max_lag)
        self._reactor = reactor
        self.quota_bytes = quota_bytes
        self.quota_blobs = quota_blobs
        self._buffer_limit = max_buffered_bytes
        self._buffered = 0  # bytes of small bodies gathered or waiting for their batch
        self._reads = Coalescer(reactor, self._open_together)
        self._small_writes = Coalescer(reactor, self._store_small, max_in_flight=WRITES_IN_FLIGHT)
        self._page_turns = defer.DeferredSemaphore(PAGES_IN_FLIGHT)

    @classmethod
    def connect(
        cls,
        dsn: str,
        quota_bytes: int | None = settings.QUOTA_BYTES,
        pool_size: int = settings.POOL_SIZE,
        reactor: Any = None,
        max_waiting: int | None = None,
        statement_timeout: float = settings.STATEMENT_TIMEOUT,
        max_transfers_per_user: int | None = None,
        max_buffered_bytes: int = settings.MAX_BUFFERED_BYTES,
        replica_dsn: Sequence[str] = (),
        replica_max_lag: float = settings.REPLICA_MAX_LAG,
        quota_blobs: int | None = settings.QUOTA_BLOBS,
    ) -> Deferred["PostgresBlobsBackend"]:
        """A Deferred firing with a backend connected to ``dsn``.

        ``pool_size`` connections serve statements and as many serve content;
        beyond ``max_waiting`` (default: settings.WAITING_PER_CONNECTION per
        connection) more work waiting for
        one fails at once with DatabaseUnavailable, and no statement may run
        longer than ``statement_timeout`` seconds. One user runs at most
        ``max_transfers_per_user`` content transfers at once (default: half of
        ``pool_size``; see Database.in_thread). Small bodies are gathered in
        memory up to ``max_buffered_bytes`` at once, counted until their batch has
        committed. Every user may keep ``quota_blobs`` live blobs. Reads may
        be served by the streaming replicas at ``replica_dsn`` while they are at most
        ``replica_max_lag`` seconds behind (db/replicas.py); they are
        connected in the background, so a replica that is down delays
        nothing. Fails with SchemaNotReady when the schema is missing or not
        at head.
        """

        def connect_to(target: str) -> Awaitable[Database]:
            return Database.connect(
                target,
                pool_size,
                reactor,
                max_waiting=max_waiting,
                statement_timeout=statement_timeout,
                max_transfers_per_user=max_transfers_per_user,
            )

        async def connecting() -> "PostgresBlobsBackend":
            backend = cls(
                await connect_to(dsn),
                quota_bytes,
                reactor,
                max_buffered_bytes,
                replica_max_lag=replica_max_lag,
                quota_blobs=quota_blobs,
            )
            for target in replica_dsn:
                backend.reading.join(target, partial(connect_to, target))
            return backend

        return defer.ensureDeferred(connecting())

    def close(self) -> Deferred[None]:
        return defer.gatherResults([self.reading.close(), self.database.close()]).addCallback(
            lambda _: None
        )

    @property
    def buffered_bytes(self) -> int:
        """Bytes of small bodies held in memory now: being gathered, or
        waiting for their batch to commit."""
        return self._buffered

    def _quota(self) -> dict[str, int | None]:
        """The default limits, as the write statements take them."""
        return {"default_quota": self.quota_bytes, "default_quota_blobs": self.quota_blobs}

    async def _one(self, name: str, params: dict[str, Any]) -> Row:
        rows = await self.database.fetch(name, params)
        if not rows:
            raise BlobNotFound("no such blob")
        return rows[0]

    async def _read_through(
        self,
        look_up: Callable[[Database, list[_Wanted]], Awaitable[dict[_Wanted, Row]]],
        wanted: list[_Wanted],
    ) -> tuple[dict[_Wanted, tuple[Row, Database]], DatabaseUnavailable | None]:
        """What ``look_up(database, wanted)`` finds, with the database that
        found it: a replica's answers, and the primary's for whatever the
        replica lacks (it may not have replayed it yet), so an acknowledged
        blob is never missing because a replica lags. And why the primary
        could not be asked, if it could not: that concerns only what was not
        found (whether it exists is unknown); what the replica found stands."""
        reader = self.reading.reader()
        found: dict[_Wanted, tuple[Row, Database]] = {}
        if reader is not self.database:
            try:
                found = {
                    item: (row, reader) for item, row in (await look_up(reader, wanted)).items()
                }
            except DatabaseUnavailable:
                pass  # gone since its last check: the primary answers for all
        missing = [item for item in wanted if item not in found]
        if missing:
            try:
                again = await look_up(self.database, missing)
            except DatabaseUnavailable as error:
                return found, error
            found.update({item: (row, self.database) for item, row in again.items()})
        return found, None

    async def _read_one(self, name: str, params: dict[str, Any]) -> Row:
        """``_one`` for a read, through ``_read_through``."""

        async def look_up(database: Database, _: list[None]) -> dict[None, Row]:
            rows = await database.fetch(name, params)
            return {None: rows[0]} if rows else {}

        found, unavailable = await self._read_through(look_up, [None])
        if not found:
            raise unavailable or BlobNotFound("no such blob")
        return found[None][0]

    @deferred
    async def write_blob(
        self,
        user: str,
        blob_id: str,
        producer: IBodyProducer,
        namespace: str = "",
        flags: Iterable[str] = (),
    ) -> None:
        key = names.BlobKey.of(user, blob_id, namespace)
        flags = names.flag_list(flags)
        declared = getattr(producer, "length", UNKNOWN_LENGTH)
        length = None if declared is UNKNOWN_LENGTH else int(declared)
        # The one place that chooses how a blob travels: inline when its
        # length is known and small, else streamed into a large object.
        small = length is not None and length <= INLINE_LIMIT
        # A small body already on its way costs less to read than a round
        # trip to refuse it first; one the client sends only when asked
        # (``sent_on_demand``, HTTP's Expect: 100-continue) is checked first.
        if small and getattr(producer, "sent_on_demand", False):
            await self._precheck(key, length)
        if small and length is not None and self._buffered + length <= self._buffer_limit:
            # Small and known: gathered on the reactor, then committed with
            # the other small writes of the moment (one statement, one WAL
            # flush). Bodies held at once, gathering or waiting for their
            # batch, are bounded in bytes: past that, small ones take the
            # streamed path below, which holds nothing while it waits for a
            # connection.
            self._buffered += length
            try:
                content, digest = await transfer.gather_small(producer)
                await self._commit_small(_SmallWrite(key, content, digest, flags))
            finally:
                self._buffered -= length
            return
        room = await self._precheck(key, length)
        pipe = transfer.UploadPipe(self._reactor, producer)
        try:
            await self.database.in_thread(
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
            await self.database.fetch("write_precheck", dict(key.params(), **self._quota()))
        )[0]
        if precheck.taken:
            raise BlobExists("a live blob already has this id")
        if precheck.room_blobs is not None and precheck.room_blobs < 1:
            raise QuotaExceeded(_TOO_MANY_BLOBS)
        room: int | None = precheck.room
        if length is not None and room is not None and length > room:
            raise QuotaExceeded("the blob does not fit in the user's quota")
        return room

    async def _commit_small(self, write: _SmallWrite) -> None:
        """``write`` through the group commit. While another writer holds its
        user's lock, it waits here, outside the batches, so other users'
        writes never queue behind that lock."""
        delay, give_up = BUSY_RETRY_FIRST, self._reactor.seconds() + BUSY_PATIENCE
        while True:
            try:
                return await self._small_writes.submit(write)
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
        rows = await self.database.fetch(
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

    @deferred
    async def write_blobs(
        self,
        user: str,
        blobs: Sequence[tuple[str, int, Callable[[], IBodyProducer]]],
        namespace: str = "",
        before_commit: Callable[[], Deferred[Any]] | None = None,
    ) -> None:
        """Store several blobs in one transaction: all of them, or none.

        ``blobs`` lists ``(blob_id, size, producer_factory)``; each factory is
        called, on the reactor, when its blob's turn comes, and returns the
        IBodyProducer of exactly ``size`` bytes. ``before_commit`` (a
        callable returning a Deferred) may still refuse the whole lot once
        every byte is in. The per-user lock is taken only once all content
        is written, so the user's other writes wait milliseconds, not for
        the client.
        """
        keys = [names.BlobKey.of(user, blob_id, namespace) for blob_id, _, _ in blobs]
        if len({key.blob_id for key in keys}) != len(keys):
            raise BlobExists("the same id is listed twice")
        if not keys:
            if before_commit is not None:
                await before_commit()
            return
        precheck = (
            await self.database.fetch(
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
            await self.database.in_thread(
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

    @deferred
    async def open_blob(self, user: str, blob_id: str, namespace: str = "") -> OpenBlob:
        """The blob's size and tag, and a way to read the bytes they describe.

        A row of ``pgblobs.blobs`` never changes but to become a tombstone, so
        reading through the returned ``OpenBlob`` gives the content of this
        very version or ``BlobNotFound``, never another blob's bytes under
        this size and tag. A small blob's content comes with it, looked up
        in one statement with the other reads of the moment.
        """
        key = names.BlobKey.of(user, blob_id, namespace)
        row, source = await self._reads.submit(key)
        content = None if row.content is None else bytes(row.content)
        return OpenBlob(key.user, key.blob_id, row.size, row.tag, row.id, content, self, source)

    async def _open_together(
        self, keys: list[names.BlobKey]
    ) -> list[tuple[Row, Database] | BaseException]:
        found, unavailable = await self._read_through(self._look_up, keys)
        return [found.get(key, unavailable or BlobNotFound("no such blob")) for key in keys]

    async def _look_up(
        self, database: Database, keys: list[names.BlobKey]
    ) -> dict[names.BlobKey, Row]:
        rows = await database.fetch(
            "open_blob_batch",
            {
                "users": [key.user for key in keys],
                "namespaces": [key.namespace for key in keys],
                "blob_ids": [key.blob_id for key in keys],
                "inline_limit": INLINE_LIMIT,
            },
        )
        return {keys[row.position - 1]: row for row in rows}

    @deferred
    async def open_blobs(
        self, user: str, blob_ids: Iterable[str], namespace: str = ""
    ) -> list[OpenBlob]:
        """``open_blob`` for many ids, in their order, looked up a batch at a
        time; fails with BlobNotFound naming the first id with no live blob."""
        params = {"user": names.user_name(user), "namespace": names.namespace_name(namespace)}
        ids = [names.blob_name(blob_id) for blob_id in blob_ids]

        async def look_up(database: Database, wanted: list[str]) -> dict[str, Row]:
            rows: dict[str, Row] = {}
            for first in range(0, len(wanted), LOOKUP_BATCH):
                batch = wanted[first : first + LOOKUP_BATCH]
                for row in await database.fetch("open_blobs", dict(params, blob_ids=batch)):
                    rows[row.blob_id] = row
            return rows

        rows, unavailable = await self._read_through(look_up, sorted(set(ids)))
        found = {
            blob_id: OpenBlob(
                params["user"], blob_id, row.size, row.tag, row.id, None, self, source
            )
            for blob_id, (row, source) in rows.items()
        }
        for blob_id in ids:
            if blob_id not in found:
                raise unavailable or BlobNotFound(f"no such blob: {blob_id}")
        return [found[blob_id] for blob_id in ids]

    @deferred
    async def load_small(self, opened: Sequence[OpenBlob]) -> list[OpenBlob]:
        """The same versions, the small ones carrying their content, read in
        one statement: a stream of many small blobs costs a statement per
        batch, not one per blob. A version deleted meanwhile stays without
        content, so reading it is the usual BlobNotFound."""
        contents: dict[int, bytes] = {}
        for source in {blob._source for blob in opened}:
            rows = [
                blob.row
                for blob in opened
                if blob._source is source and blob.content is None and blob.size <= INLINE_LIMIT
            ]
            if rows:
                found = await source.fetch("versions_content", {"rows": rows})
                contents.update({row.id: bytes(row.content) for row in found})
        return [
            replace(blob, content=contents[blob.row]) if blob.row in contents else blob
            for blob in opened
        ]

    @deferred
    async def read_blob(
        self,
        user: str,
        blob_id: str,
        consumer: IConsumer,
        namespace: str = "",
        range: ByteRange | None = None,
    ) -> None:
        opened = await self.open_blob(user, blob_id, namespace)
        await opened.read(consumer, range)

    async def _read_version(
        self, opened: OpenBlob, consumer: IConsumer, range: ByteRange | None
    ) -> None:
        start, end = names.byte_range(range)
        stop = opened.size if end is None else min(end, opened.size)
        start = min(start, stop)
        if opened.content is not None or opened.size <= INLINE_LIMIT:
            # Small: bytes in hand or one statement away, written in one go;
            # no thread, no producer to pace.
            content = opened.content
            if content is None:
                rows = await opened._source.fetch(
                    "version_bytes", dict(row=opened.row, start=start, length=stop - start)
                )
                if not rows:
                    raise BlobNotFound(f"no such blob: {opened.blob_id}")
                content = bytes(rows[0].content)
            else:
                content = content[start:stop]
            if content:
                consumer.write(content)
            return
        push = transfer.DownloadPush(self._reactor, consumer)
        consumer.registerProducer(push, True)
        try:
            await opened._source.in_thread(
                largeobjects.load,
                push,
                opened.row,
                start,
                stop,
                owner=opened.user,
                retry=lambda: push.delivered == 0,
            )
        finally:
            consumer.unregisterProducer()

    @deferred
    async def delete_blob(self, user: str, blob_id: str, namespace: str = "") -> None:
        key = names.BlobKey.of(user, blob_id, namespace)
        await self._one("delete_blob", key.params())

    @deferred
    async def get_blob_size(self, user: str, blob_id: str, namespace: str = "") -> int:
        key = names.BlobKey.of(user, blob_id, namespace)
        return (await self._read_one("blob_info", key.params())).size

    @deferred
    async def get_tag(self, user: str, blob_id: str, namespace: str = "") -> str:
        key = names.BlobKey.of(user, blob_id, namespace)
        return (await self._read_one("blob_info", key.params())).tag

    @deferred
    async def get_flags(self, user: str, blob_id: str, namespace: str = "") -> list[str]:
        key = names.BlobKey.of(user, blob_id, namespace)
        return list((await self._read_one("blob_info", key.params())).flags)

    @deferred
    async def set_flags(
        self, user: str, blob_id: str, flags: Iterable[str], namespace: str = ""
    ) -> None:
        key = names.BlobKey.of(user, blob_id, namespace)
        flags = names.flag_list(flags)
        await self._one("set_flags", dict(key.params(), flags=flags))

    @deferred
    async def count(self, user: str, namespace: str = "") -> int:
        params = {"user": names.user_name(user), "namespace": names.namespace_name(namespace)}
        rows = await self.reading.reader().fetch("count_live", params)
        return rows[0].live_blobs

    @deferred
    async def list_blobs(
        self,
        user: str,
        namespace: str = "",
        order_by: str | None = None,
        deleted: bool = False,
        filter_flag: str | None = None,
    ) -> list[str]:
        name, params = _listing(user, namespace, deleted, filter_flag)
        newest_first = names.descending(order_by)
        if name is None:
            return []
        ids: list[str] = (await self.reading.reader().fetch(name, params))[0].blob_ids
        # Both orders come from one ascending index scan.
        if newest_first:
            ids.reverse()
        return ids

    @deferred
    async def get_total_storage(self, user: str) -> int:
        params = {"user": names.user_name(user)}
        rows = await self.reading.reader().fetch("total_storage_kib", params)
        return int(rows[0].kib)

    @deferred
    async def list_blob_pages(
        self,
        user: str,
        each_page: Callable[[list[str]], Deferred[None] | None],
        namespace: str = "",
        order_by: str | None = None,
        deleted: bool = False,
        filter_flag: str | None = None,
        page_size: int = settings.LISTING_PAGE,
    ) -> None:
        """See IBlobsBackend.list_blob_pages: a statement per page, each an
        index range scan that goes on from the key of the last row listed,
        so a page costs the same however deep into the listing it is. The
        next page is read while the consumer takes the last one."""
        listing, params = _listing(user, namespace, deleted, filter_flag)
        newest_first = names.descending(order_by)
        if listing is None:
            return
        name = _PAGE_STATEMENTS[listing][newest_first]

        async def read_page(after: tuple[Any, int]) -> Row:
            # Listings take turns for a few connections: however many run,
            # the rest of the pool stays free for everyone else's statements.
            # Each page asks anew which database may answer, so a replica
            # that falls behind mid-listing answers no further page (the
            # keys go on the same on the primary and every replica).
            async with self._page_turns:
                rows = await self.reading.reader().fetch(
                    name, dict(params, after_date=after[0], after_row=after[1], page_size=page_size)
                )
            return rows[0]

        # Before the first row in the listing's order.
        first = ("infinity", _LAST_ROW) if newest_first else ("-infinity", 0)
        next_page = defer.ensureDeferred(read_page(first))
        while True:
            page = await next_page
            more = len(page.blob_ids) == page_size
            if more:
                next_page = defer.ensureDeferred(read_page((page.last_date, page.last_row)))
            try:
                if page.blob_ids:
                    await defer.maybeDeferred(each_page, page.blob_ids)
            except BaseException:
                if more:
                    next_page.addErrback(lambda _: None)  # no longer wanted, whatever it does
                raise
            if not more:
                return


# A listing's statement -> its page statements, (oldest first, newest first).
_PAGE_STATEMENTS = {
    "list_live": ("list_live_page", "list_live_page_desc"),
    "list_tombstones": ("list_tombstones_page", "list_tombstones_page_desc"),
    "list_flagged": ("list_flagged_page", "list_flagged_page_desc"),
}
_LAST_ROW = 2**63 - 1  # past any row id (bigint)


def _listing(
    user: str, namespace: str, deleted: bool, filter_flag: str | None
) -> tuple[str | None, dict[str, str]]:
    """The statement of a whole listing (None: no rows, by definition) and
    the parameters that select its rows."""
    params = {"user": names.user_name(user), "namespace": names.namespace_name(namespace)}
    if filter_flag is None:
        return ("list_tombstones" if deleted else "list_live"), params
    params["flag"] = names.flag(filter_flag)
    if deleted:
        return None, params  # deleting a blob drops its flags
    return "list_flagged", params
