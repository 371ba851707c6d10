"""MemoryBlobsBackend: an IBlobStore in a dict, for tests and embedders.

It keeps the same promises as PostgresBlobsBackend (the contract tests in
tests/test_backend.py and tests/test_contract.py run against both): names
checked first, one live blob per id, tombstones, flags dropped on delete,
quotas, KiB rounded up. It has no durability and no sharing between
processes, by design.
"""

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from pgblobs import names, settings, transfer
from pgblobs.errors import BlobExists, BlobNotFound, QuotaExceeded
from pgblobs.interfaces import IBlobStore, IOpenBlob, deferred, stamp_length
from pgblobs.listings import Listing, PageOf
from pgblobs.names import ByteRange

_ORDER = itertools.count()  # creation order, as the dates PostgreSQL would give
_ONE_DATE = datetime(2000, 1, 1, tzinfo=UTC)  # of every blob's listing key (see list_blob_page)


@dataclass
class _Stored:
    content: bytes
    tag: str
    order: int
    flags: set[str] = field(default_factory=set)
    deleted: bool = False


@implementer(IOpenBlob)
@dataclass(frozen=True)
class _OpenBlob:
    """One version of a blob, its content always in hand."""

    user: str
    blob_id: str
    size: int
    tag: str
    content: bytes

    def read(self, consumer: IConsumer, range: ByteRange | None = None) -> Deferred[None]:
        start, end = names.byte_range(range)
        if self.content[start:end]:
            consumer.write(self.content[start:end])
        return defer.succeed(None)


@implementer(IBlobStore)
class MemoryBlobsBackend:
    """Blobs in memory. ``quota_bytes`` is every user's quota (None: unlimited),
    ``quota_blobs`` the live blobs each may keep (None: no limit)."""

    def __init__(
        self,
        quota_bytes: int | None = settings.QUOTA_BYTES,
        quota_blobs: int | None = settings.QUOTA_BLOBS,
    ) -> None:
        self.quota_bytes = quota_bytes
        self.quota_blobs = quota_blobs
        # BlobKey -> the live blob or the tombstone of that name
        self._blobs: dict[names.BlobKey, _Stored] = {}

    def close(self) -> Deferred[None]:
        return defer.succeed(None)

    def _live(self, key: names.BlobKey) -> _Stored:
        stored = self._blobs.get(key)
        if stored is None or stored.deleted:
            raise BlobNotFound("no such blob")
        return stored

    def _taken(self, key: names.BlobKey) -> bool:
        return key in self._blobs and not self._blobs[key].deleted

    def _size(self, key: names.BlobKey) -> int:
        return len(self._blobs[key].content)

    def _repeats(self, key: names.BlobKey, content: bytes, stamp: int) -> bool:
        """Whether the live blob ``key`` has ``content``, its first ``stamp``
        bytes aside (see IStampedBody)."""
        live = self._blobs[key].content
        return len(live) == len(content) and live[stamp:] == content[stamp:]

    def _used(self, user: str) -> int:
        return sum(
            len(stored.content)
            for key, stored in self._blobs.items()
            if key.user == user and not stored.deleted
        )

    def _check_count(self, user: str, more: int) -> None:
        if self.quota_blobs is None:
            return
        live = sum(1 for key in self._blobs if key.user == user and self._taken(key))
        if live + more > self.quota_blobs:
            raise QuotaExceeded("the user has as many blobs as the quota allows")

    def _store(self, key: names.BlobKey, content: bytes, flags: Iterable[str] = ()) -> None:
        """A new live blob; replaces a tombstone of the same name, as put_blob does."""
        if self.quota_bytes is not None and self._used(key.user) + len(content) > self.quota_bytes:
            raise QuotaExceeded("the blob does not fit in the user's quota")
        self._check_count(key.user, 1)
        digest = transfer.ContentDigest()
        digest.update(content)
        self._blobs[key] = _Stored(content, digest.tag, next(_ORDER), set(flags))

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
        if self._taken(key) and producer.length not in (UNKNOWN_LENGTH, self._size(key)):
            raise BlobExists("a live blob already has this id")  # unread: it cannot repeat it
        content = await transfer.collect(producer)
        if self._taken(key):  # before, or written meanwhile
            if self._repeats(key, content, stamp_length(producer)):
                return
            raise BlobExists("a live blob already has this id")
        self._store(key, content, flags)

    @deferred
    async def write_blobs(
        self,
        user: str,
        blobs: Sequence[tuple[str, int, Callable[[], IBodyProducer]]],
        namespace: str = "",
        before_commit: Callable[[], Deferred[Any]] | None = None,
    ) -> None:
        keys = names.distinct_keys(user, [blob_id for blob_id, _, _ in blobs], namespace)
        for key, (_, size, _) in zip(keys, blobs, strict=True):
            if self._taken(key) and self._size(key) != size:
                raise BlobExists(f"a live blob already has the id {key.blob_id}")
        contents = [await transfer.collect(make()) for _, _, make in blobs]
        if before_commit is not None:
            await before_commit()
        # A blob repeating the live one of its id (before, or written
        # meanwhile) is done already; the others are new.
        fresh = [
            (key, content)
            for key, content in zip(keys, contents, strict=True)
            if not (self._taken(key) and self._repeats(key, content, 0))
        ]
        for key, _ in fresh:
            if self._taken(key):
                raise BlobExists(f"a live blob already has the id {key.blob_id}")
        total = sum(len(content) for _, content in fresh)
        if self.quota_bytes is not None and self._used(user) + total > self.quota_bytes:
            raise QuotaExceeded("the blobs do not fit in the user's quota")
        self._check_count(user, len(fresh))
        for key, content in fresh:
            self._store(key, content)

    @deferred
    async def open_blob(self, user: str, blob_id: str, namespace: str = "") -> IOpenBlob:
        key = names.BlobKey.of(user, blob_id, namespace)
        stored = self._live(key)
        return _OpenBlob(key.user, key.blob_id, len(stored.content), stored.tag, stored.content)

    @deferred
    async def open_blobs(
        self, user: str, blob_ids: Iterable[str], namespace: str = ""
    ) -> list[IOpenBlob]:
        opened = []
        for blob_id in blob_ids:
            try:
                opened.append(await self.open_blob(user, blob_id, namespace))
            except BlobNotFound:
                raise BlobNotFound(f"no such blob: {blob_id}") from None
        return opened

    @deferred
    async def load_small(self, opened: Sequence[IOpenBlob]) -> list[IOpenBlob]:
        return list(opened)  # the content is always there

    @deferred
    async def read_blob(
        self,
        user: str,
        blob_id: str,
        consumer: IConsumer,
        namespace: str = "",
        range: ByteRange | None = None,
    ) -> None:
        names.byte_range(range)
        await (await self.open_blob(user, blob_id, namespace)).read(consumer, range)

    @deferred
    async def delete_blob(self, user: str, blob_id: str, namespace: str = "") -> None:
        stored = self._live(names.BlobKey.of(user, blob_id, namespace))
        stored.deleted, stored.content, stored.flags = True, b"", set()

    @deferred
    async def get_blob_size(self, user: str, blob_id: str, namespace: str = "") -> int:
        return len(self._live(names.BlobKey.of(user, blob_id, namespace)).content)

    @deferred
    async def get_tag(self, user: str, blob_id: str, namespace: str = "") -> str:
        return self._live(names.BlobKey.of(user, blob_id, namespace)).tag

    @deferred
    async def get_flags(self, user: str, blob_id: str, namespace: str = "") -> list[str]:
        return sorted(self._live(names.BlobKey.of(user, blob_id, namespace)).flags)

    @deferred
    async def set_flags(
        self, user: str, blob_id: str, flags: Iterable[str], namespace: str = ""
    ) -> None:
        key = names.BlobKey.of(user, blob_id, namespace)
        flags = names.flag_list(flags)
        self._live(key).flags = set(flags)

    def _latest(self, user: str, namespace: str) -> list[tuple[str, _Stored]]:
        user, namespace = names.user_name(user), names.namespace_name(namespace)
        return [
            (key.blob_id, stored)
            for key, stored in self._blobs.items()
            if key.user == user and key.namespace == namespace
        ]

    @deferred
    async def count(self, user: str, namespace: str = "") -> int:
        return sum(not stored.deleted for _, stored in self._latest(user, namespace))

    def _listed(
        self,
        user: str,
        namespace: str,
        order_by: str | None,
        deleted: bool,
        filter_flag: str | None,
    ) -> list[tuple[str, _Stored]]:
        """What list_blobs lists, in its order."""
        newest_first = names.descending(order_by)
        chosen = self._latest(user, namespace)
        if filter_flag is not None:
            flag = names.flag(filter_flag)
            chosen = [(i, s) for i, s in chosen if flag in s.flags and not deleted]
        chosen = [(i, s) for i, s in chosen if s.deleted == deleted]
        chosen.sort(key=lambda pair: pair[1].order, reverse=newest_first)
        return chosen

    @deferred
    async def list_blobs(
        self,
        user: str,
        namespace: str = "",
        order_by: str | None = None,
        deleted: bool = False,
        filter_flag: str | None = None,
    ) -> list[str]:
        return [
            blob_id for blob_id, _ in self._listed(user, namespace, order_by, deleted, filter_flag)
        ]

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
        wanted = PageOf(
            Listing(user, namespace, deleted, filter_flag), names.descending(order_by), limit, page
        )
        # The key of PostgreSQL's rows, (date, row): here one date for all,
        # the creation order for the row.
        following = [
            (blob_id, (_ONE_DATE, stored.order))
            for blob_id, stored in self._listed(user, namespace, order_by, deleted, filter_flag)
            if wanted.follows((_ONE_DATE, stored.order))
        ]
        ids = [blob_id for blob_id, _ in following[:limit]]
        if len(following) <= limit:
            return ids, None
        return ids, wanted.next_token(following[limit][1])

    @deferred
    async def get_total_storage(self, user: str) -> int:
        return (self._used(names.user_name(user)) + 1023) // 1024

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
        ids = await self.list_blobs(user, namespace, order_by, deleted, filter_flag)
        for first in range(0, len(ids), page_size):
            await defer.maybeDeferred(each_page, ids[first : first + page_size])
