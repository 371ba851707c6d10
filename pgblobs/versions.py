"""Versions of blobs: finding them (one at a time, coalesced, or many in
batches), their small contents in one statement, and reading them.

A row of ``pgblobs.blobs`` never changes but to become a tombstone, so an
``OpenBlob`` (one row) read later gives the content of this very version or
``BlobNotFound``, never another blob's bytes under its size and tag. Reads
may be answered by a replica (db/replicas.py); a version remembers the
database that found it, and is read there.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from pgblobs import names, transfer
from pgblobs.db import largeobjects
from pgblobs.db.batching import Coalescer
from pgblobs.db.connector import Database
from pgblobs.db.queries import Row
from pgblobs.db.replicas import Replicas
from pgblobs.errors import BlobNotFound
from pgblobs.interfaces import IOpenBlob
from pgblobs.names import ByteRange

# At or below this size a blob travels inline, in one statement: the escaped
# bytes it costs are cheaper than the round trips of the large-object calls.
INLINE_LIMIT = 256 * 1024
LOOKUP_BATCH = 100  # ids per statement when many blobs are opened at once


@implementer(IOpenBlob)
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
    # The database that found this version (a replica, or the primary).
    source: Database = field(repr=False, compare=False)
    reactor: Any = field(repr=False, compare=False)

    def read(self, consumer: IConsumer, range: ByteRange | None = None) -> Deferred[None]:
        """See IOpenBlob.read."""
        return defer.ensureDeferred(self._read(consumer, range))

    async def _read(self, consumer: IConsumer, range: ByteRange | None) -> None:
        start, end = names.byte_range(range)
        stop = self.size if end is None else min(end, self.size)
        start = min(start, stop)
        if self.content is not None or self.size <= INLINE_LIMIT:
            # Small: bytes in hand or one statement away, written in one go;
            # no thread, no producer to pace.
            content = await self._small_content(start, stop)
            if content:
                consumer.write(content)
            return
        push = transfer.DownloadPush(self.reactor, consumer)
        consumer.registerProducer(push, True)
        try:
            await self.source.in_thread(
                largeobjects.load,
                push,
                self.row,
                start,
                stop,
                owner=self.user,
                retry=lambda: push.delivered == 0,
            )
        finally:
            consumer.unregisterProducer()

    async def _small_content(self, start: int, stop: int) -> bytes:
        if self.content is not None:
            return self.content[start:stop]
        rows = await self.source.fetch(
            "version_bytes", dict(row=self.row, start=start, length=stop - start)
        )
        if not rows:
            raise BlobNotFound(f"no such blob: {self.blob_id}")
        return bytes(rows[0].content)


class Versions:
    """Finds the live versions of blobs, through ``reading`` (replicas, then
    the primary)."""

    def __init__(self, reactor: Any, reading: Replicas) -> None:
        self._reactor = reactor
        self._reading = reading
        # Single opens of the moment (many users' small GETs) share one statement.
        self._opens = Coalescer(reactor, self._open_together)

    async def open(self, key: names.BlobKey) -> OpenBlob:
        """The live version of ``key``, a small one with its content, looked
        up in one statement with the other opens of the moment."""
        row, source = await self._opens.submit(key)
        content = None if row.content is None else bytes(row.content)
        return OpenBlob(
            key.user, key.blob_id, row.size, row.tag, row.id, content, source, self._reactor
        )

    async def _open_together(
        self, keys: list[names.BlobKey]
    ) -> list[tuple[Row, Database] | BaseException]:
        found, unavailable = await self._reading.read_through(self._look_up, keys)
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

    async def open_many(self, user: str, blob_ids: Iterable[str], namespace: str) -> list[OpenBlob]:
        """The live versions of ``blob_ids`` (in their order), without their
        content, looked up a batch at a time; BlobNotFound naming the first
        id with no live blob."""
        params = {"user": names.user_name(user), "namespace": names.namespace_name(namespace)}
        ids = [names.blob_name(blob_id) for blob_id in blob_ids]

        async def look_up(database: Database, wanted: list[str]) -> dict[str, Row]:
            rows: dict[str, Row] = {}
            for first in range(0, len(wanted), LOOKUP_BATCH):
                batch = wanted[first : first + LOOKUP_BATCH]
                for row in await database.fetch("open_blobs", dict(params, blob_ids=batch)):
                    rows[row.blob_id] = row
            return rows

        rows, unavailable = await self._reading.read_through(look_up, sorted(set(ids)))
        found = {
            blob_id: OpenBlob(
                params["user"], blob_id, row.size, row.tag, row.id, None, source, self._reactor
            )
            for blob_id, (row, source) in rows.items()
        }
        for blob_id in ids:
            if blob_id not in found:
                raise unavailable or BlobNotFound(f"no such blob: {blob_id}")
        return [found[blob_id] for blob_id in ids]


async def load_small(opened: Sequence[OpenBlob]) -> list[OpenBlob]:
    """The same versions, the small ones carrying their content, read in one
    statement per database that found them: a stream of many small blobs
    costs a statement per batch, not one per blob. A version deleted
    meanwhile stays without content, so reading it is the usual BlobNotFound."""
    contents: dict[int, bytes] = {}
    for source in {blob.source for blob in opened}:
        rows = [
            blob.row
            for blob in opened
            if blob.source is source and blob.content is None and blob.size <= INLINE_LIMIT
        ]
        if rows:
            found = await source.fetch("versions_content", {"rows": rows})
            contents.update({row.id: bytes(row.content) for row in found})
    return [
        replace(blob, content=contents[blob.row]) if blob.row in contents else blob
        for blob in opened
    ]
