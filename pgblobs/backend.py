"""PostgresBlobsBackend: IBlobStore on PostgreSQL, the facade over the rooms
that do the work.

Each method validates its names first (no database work for bad input),
then hands over: writes.py chooses how a blob travels and prechecks it
(db/small_writes.py commits small ones together, db/largeobjects.py streams
the rest on worker threads); versions.py opens versions and reads them;
listings.py lists ids; feed.py reads and holds the change feed; claims.py
claims PENDING blobs and ends their leases; uploads.py keeps resumable
uploads;
db/replicas.py decides which database answers a read.
The few single statements left (delete, flags, counts) run here. Nothing is
cached in the process: every answer comes from the database, which several
server nodes may share.
"""

from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from pgblobs import names, settings
from pgblobs.claims import Claims
from pgblobs.db.connector import Database
from pgblobs.db.queries import Row
from pgblobs.db.replicas import Replicas
from pgblobs.db.small_writes import SmallWrites
from pgblobs.db.upload_steps import Checksum
from pgblobs.errors import BlobNotFound
from pgblobs.feed import ChangeFeed, ChangesPage
from pgblobs.interfaces import (
    IBlobStore,
    IChangeFeed,
    IClaims,
    IOpenBlob,
    IUploads,
    deferred,
)
from pgblobs.listings import Listing, Listings, PageOf
from pgblobs.names import ByteRange
from pgblobs.uploads import Uploads, UploadState
from pgblobs.versions import OpenBlob, Versions, load_small
from pgblobs.writes import Writes


@implementer(IBlobStore, IChangeFeed, IClaims, IUploads)
class PostgresBlobsBackend:
    """Blobs in PostgreSQL large objects, their metadata in ``pgblobs.blobs``.

    ``quota_bytes`` is the default quota of every user (None: unlimited);
    a row in ``pgblobs.quotas`` overrides it for one user. ``quota_blobs``
    bounds every user's number of live blobs (None: no limit). A
    resumable upload lives ``upload_expiry`` seconds after its creation or
    its last PATCH step, and a user may have ``max_uploads_per_user`` in
    progress.
    """

    def __init__(
        self,
        database: Database,
        quota_bytes: int | None = settings.QUOTA_BYTES,
        reactor: Any = None,
        max_buffered_bytes: int = settings.MAX_BUFFERED_BYTES,
        replica_max_lag: float = settings.REPLICA_MAX_LAG,
        quota_blobs: int | None = settings.QUOTA_BLOBS,
        max_held_changes_per_user: int = settings.HELD_CHANGES_PER_USER,
        max_held_changes: int = settings.HELD_CHANGES,
        upload_expiry: float = settings.UPLOAD_EXPIRY,
        max_uploads_per_user: int = settings.MAX_UPLOADS_PER_USER,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.database = database
        # Which database answers a read: replicas may (see ``reading.join``),
        # writes never go there.
        self.reading = Replicas(reactor, database, replica_max_lag)
        self.quota_bytes = quota_bytes
        self.quota_blobs = quota_blobs
        self._small_writes = SmallWrites(reactor, database, self._quota, max_buffered_bytes)
        self._writes = Writes(reactor, database, self._quota, self._small_writes)
        self._versions = Versions(reactor, self.reading)
        self._listings = Listings(self.reading)
        self._feed = ChangeFeed(reactor, database, max_held_changes_per_user, max_held_changes)
        self._claims = Claims(database, reactor)
        self._uploads = Uploads(reactor, database, self._quota, upload_expiry, max_uploads_per_user)

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
        max_held_changes_per_user: int = settings.HELD_CHANGES_PER_USER,
        max_held_changes: int = settings.HELD_CHANGES,
        upload_expiry: float = settings.UPLOAD_EXPIRY,
        max_uploads_per_user: int = settings.MAX_UPLOADS_PER_USER,
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
        nothing. Change feed requests are held at most
        ``max_held_changes_per_user`` per user and ``max_held_changes`` in
        all (feed.py). Resumable uploads: see the class. Fails with
        SchemaNotReady when the schema is missing or not at head.
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
                max_held_changes_per_user=max_held_changes_per_user,
                max_held_changes=max_held_changes,
                upload_expiry=upload_expiry,
                max_uploads_per_user=max_uploads_per_user,
            )
            await backend._feed.start()
            for target in replica_dsn:
                backend.reading.join(target, partial(connect_to, target))
            return backend

        return defer.ensureDeferred(connecting())

    def start_sweeps(self) -> None:
        """Until ``close``, what every serving node does: give claimed blobs
        whose lease ended back to PENDING, and remove uploads past their
        expiry, each every second or so."""
        self._claims.start_expiring()
        self._uploads.start_expiring()

    @deferred
    async def close(self) -> None:
        # A round of a sweep in flight ends before its connection goes.
        await defer.gatherResults([self._claims.stop_expiring(), self._uploads.stop_expiring()])
        self._feed.close()
        await defer.gatherResults([self.reading.close(), self.database.close()])

    def release_held(self) -> None:
        """Answer every held change feed request now, and hold no more (the
        node is draining)."""
        self._feed.release()

    @property
    def held_changes(self) -> int:
        """Change feed requests held now, waiting for a change."""
        return self._feed.held

    @property
    def buffered_bytes(self) -> int:
        """Bytes of small bodies held in memory now: being gathered, or
        waiting for their batch to commit."""
        return self._small_writes.buffered

    def _quota(self) -> dict[str, int | None]:
        """The default limits, as the write statements take them."""
        return {"default_quota": self.quota_bytes, "default_quota_blobs": self.quota_blobs}

    async def _change(self, name: str, params: dict[str, Any]) -> None:
        """Run the statement ``name`` that changes a live blob; BlobNotFound
        when there was none."""
        if not await self.database.fetch(name, params):
            raise BlobNotFound("no such blob")

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
        await self._writes.one(key, producer, names.flag_list(flags))

    @deferred
    async def write_blobs(
        self,
        user: str,
        blobs: Sequence[tuple[str, int, Callable[[], IBodyProducer]]],
        namespace: str = "",
        before_commit: Callable[[], Deferred[Any]] | None = None,
    ) -> None:
        keys = names.distinct_keys(user, [blob_id for blob_id, _, _ in blobs], namespace)
        await self._writes.many(keys, blobs, before_commit)

    @deferred
    async def open_blob(self, user: str, blob_id: str, namespace: str = "") -> IOpenBlob:
        """See IBlobStore.open_blob: a small blob's content comes with it,
        looked up in one statement with the other reads of the moment."""
        return await self._versions.open(names.BlobKey.of(user, blob_id, namespace))

    @deferred
    async def open_blobs(
        self, user: str, blob_ids: Iterable[str], namespace: str = ""
    ) -> list[IOpenBlob]:
        return list(await self._versions.open_many(user, blob_ids, namespace))

    @deferred
    async def load_small(self, opened: Sequence[IOpenBlob]) -> list[IOpenBlob]:
        return list(await load_small([_ours(blob) for blob in opened]))

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

    @deferred
    async def delete_blob(self, user: str, blob_id: str, namespace: str = "") -> None:
        key = names.BlobKey.of(user, blob_id, namespace)
        await self._change("delete_blob", key.params())

    async def _blob_info(self, user: str, blob_id: str, namespace: str) -> Row:
        key = names.BlobKey.of(user, blob_id, namespace)
        row = await self.reading.first_row("blob_info", key.params())
        if row is None:
            raise BlobNotFound("no such blob")
        return row

    @deferred
    async def get_blob_size(self, user: str, blob_id: str, namespace: str = "") -> int:
        return int((await self._blob_info(user, blob_id, namespace)).size)

    @deferred
    async def get_tag(self, user: str, blob_id: str, namespace: str = "") -> str:
        return str((await self._blob_info(user, blob_id, namespace)).tag)

    @deferred
    async def get_flags(self, user: str, blob_id: str, namespace: str = "") -> list[str]:
        return list((await self._blob_info(user, blob_id, namespace)).flags)

    @deferred
    async def set_flags(
        self, user: str, blob_id: str, flags: Iterable[str], namespace: str = ""
    ) -> None:
        key = names.BlobKey.of(user, blob_id, namespace)
        await self._change("set_flags", dict(key.params(), flags=names.flag_list(flags)))

    @deferred
    async def claim_blobs(
        self,
        user: str,
        namespace: str = "",
        limit: int = settings.CLAIM_LIMIT,
        lease: int = settings.CLAIM_LEASE,
    ) -> list[str]:
        return await self._claims.claim(user, namespace, limit, lease)

    @deferred
    async def create_upload(
        self, user: str, blob_id: str, length: int, namespace: str = "", metadata: str = ""
    ) -> UploadState:
        return await self._uploads.create(user, blob_id, length, namespace, metadata)

    @deferred
    async def upload_state(self, user: str, upload_id: str) -> UploadState:
        return await self._uploads.state(user, upload_id)

    @deferred
    async def reserving_upload(
        self, user: str, blob_id: str, namespace: str = ""
    ) -> UploadState | None:
        return await self._uploads.reserving(user, blob_id, namespace)

    @deferred
    async def append_upload(
        self,
        user: str,
        upload_id: str,
        offset: int,
        producer: IBodyProducer,
        checksum: Checksum | None = None,
    ) -> UploadState:
        return await self._uploads.append(user, upload_id, offset, producer, checksum)

    @deferred
    async def terminate_upload(self, user: str, upload_id: str) -> None:
        await self._uploads.terminate(user, upload_id)

    @deferred
    async def count(self, user: str, namespace: str = "") -> int:
        params = {"user": names.user_name(user), "namespace": names.namespace_name(namespace)}
        rows = await self.reading.reader().fetch("count_live", params)
        return int(rows[0].live_blobs)

    @deferred
    async def get_total_storage(self, user: str) -> int:
        params = {"user": names.user_name(user)}
        rows = await self.reading.reader().fetch("total_storage_kib", params)
        return int(rows[0].kib)

    @deferred
    async def list_blobs(
        self,
        user: str,
        namespace: str = "",
        order_by: str | None = None,
        deleted: bool = False,
        filter_flag: str | None = None,
    ) -> list[str]:
        listing = Listing(user, namespace, deleted, filter_flag)
        return await self._listings.whole(listing, names.descending(order_by))

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
        """See IBlobsBackend.list_blob_pages: a statement per page, each as
        cheap as the first (listings.py)."""
        listing = Listing(user, namespace, deleted, filter_flag)
        await self._listings.pages(listing, names.descending(order_by), each_page, page_size)

    @deferred
    async def changes(
        self,
        user: str,
        since: str | None = None,
        namespace: str | None = None,
        limit: int = settings.CHANGES_LIMIT,
        wait: float = 0,
        abandoned: Deferred[Any] | None = None,
    ) -> ChangesPage:
        """See IChangeFeed.changes (feed.py): read from the primary."""
        return await self._feed.read(user, since, namespace, limit, wait, abandoned)

    @deferred
    async def list_blob_page(
        self,
        user: str,
        limit: int,
        page: str | None = None,
        namespace: str = "",
        order_by: str | None = None,
        deleted: bool = False,
        filter_flag: str | None = None,
    ) -> tuple[list[str], str | None]:
        """See IBlobStore.list_blob_page: one statement, as cheap at any
        depth as list_blob_pages' (listings.py)."""
        listing = Listing(user, namespace, deleted, filter_flag)
        return await self._listings.page(PageOf(listing, names.descending(order_by), limit, page))


def _ours(blob: IOpenBlob) -> OpenBlob:
    """A version this store opened (its row and source say where to read it)."""
    if not isinstance(blob, OpenBlob):
        raise TypeError(f"not a version a PostgresBlobsBackend opened: {blob!r}")
    return blob
