"""PostgresBlobsBackend: IBlobsBackend on PostgreSQL, one method per interface method.

Each method validates its names first (no database work for bad input), then
runs named statements (queries.sql) or hands content to a worker thread
(largeobjects.py). Nothing is cached in the process: every answer comes from
the database, which several server nodes may share.
"""
import functools

import psycopg2
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from pgblobs import largeobjects, names
from pgblobs.database import Database
from pgblobs.errors import BlobExists, BlobNotFound, QuotaExceeded, TransferStopped
from pgblobs.interfaces import IBlobsBackend

DEFAULT_QUOTA_BYTES = 200 * 1024 * 1024
DEFAULT_POOL_SIZE = 8


def _deferred(method):
    """Run a coroutine method as a Deferred, so every failure is a failed Deferred."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        return defer.ensureDeferred(method(*args, **kwargs))
    return wrapper


@implementer(IBlobsBackend)
class PostgresBlobsBackend:
    """Blobs in PostgreSQL large objects, their metadata in ``pgblobs.blobs``.

    ``quota_bytes`` is the default quota of every user (None: unlimited);
    a row in ``pgblobs.quotas`` overrides it for one user.
    """

    def __init__(self, database, quota_bytes=DEFAULT_QUOTA_BYTES, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.database = database
        self._reactor = reactor
        self.quota_bytes = quota_bytes

    @classmethod
    def connect(cls, dsn, quota_bytes=DEFAULT_QUOTA_BYTES, pool_size=DEFAULT_POOL_SIZE,
                reactor=None, max_waiting=None, statement_timeout=30.0):
        """A Deferred firing with a backend connected to ``dsn``.

        ``pool_size`` connections serve statements and as many serve content;
        beyond ``max_waiting`` (default 32 x pool_size) more work waiting for
        one fails at once with DatabaseUnavailable, and no statement may run
        longer than ``statement_timeout`` seconds. Fails with SchemaNotReady
        when the schema is missing or not at head.
        """
        async def connecting():
            database = await Database.connect(
                dsn, pool_size, reactor, max_waiting=max_waiting,
                statement_timeout_ms=int(statement_timeout * 1000))
            return cls(database, quota_bytes, reactor)
        return defer.ensureDeferred(connecting())

    def close(self):
        return self.database.close()

    async def _one(self, name, params):
        rows = await self.database.fetch(name, params)
        if not rows:
            raise BlobNotFound("no such blob")
        return rows[0]

    @_deferred
    async def write_blob(self, user, blob_id, producer, namespace=""):
        key = names.BlobKey.of(user, blob_id, namespace)
        taken, room = (await self.database.fetch("write_precheck", dict(
            key.params(), default_quota=self.quota_bytes)))[0]
        if taken:
            raise BlobExists("a live blob already has this id")
        length = getattr(producer, "length", UNKNOWN_LENGTH)
        if length is not UNKNOWN_LENGTH and room is not None and length > room:
            raise QuotaExceeded("the blob does not fit in the user's quota")
        if length is not UNKNOWN_LENGTH and length <= largeobjects.INLINE_LIMIT:
            # Small and known: one statement on the reactor, no thread hop.
            content, digest = await largeobjects.gather_small(producer)
            await self.database.fetch("put_small_blob", dict(
                key.params(), default_quota=self.quota_bytes, content=psycopg2.Binary(content),
                size=digest.size, tag=digest.tag, sha256=digest.sha256))
            return
        pipe = largeobjects.UploadPipe(self._reactor, producer)
        try:
            await self.database.in_thread(largeobjects.store, pipe, key, self.quota_bytes, room)
        except BaseException:
            if pipe.error is not None:
                # The producer failed first: its reason is the real one.
                pipe.error.raiseException()
            pipe.abort(Failure(TransferStopped("the blob could not be stored")))
            pipe.stop_producer()
            raise

    @_deferred
    async def read_blob(self, user, blob_id, consumer, namespace="", range=None):
        key = names.BlobKey.of(user, blob_id, namespace)
        start, end = names.byte_range(range)
        size, tag, _, content = await self._one("open_blob", dict(
            key.params(), start=start, end=end, inline_limit=largeobjects.INLINE_LIMIT))
        push = largeobjects.DownloadPush(self._reactor, consumer)
        consumer.registerProducer(push, True)
        try:
            if content is not None:
                # Small: it came with the row; no thread, no large-object calls.
                if len(content):
                    consumer.write(bytes(content))
            else:
                await self.database.in_thread(largeobjects.load, push, key, start, end)
        finally:
            consumer.unregisterProducer()

    @_deferred
    async def delete_blob(self, user, blob_id, namespace=""):
        key = names.BlobKey.of(user, blob_id, namespace)
        await self._one("delete_blob", key.params())

    @_deferred
    async def get_blob_size(self, user, blob_id, namespace=""):
        key = names.BlobKey.of(user, blob_id, namespace)
        size, _, _ = await self._one("blob_info", key.params())
        return size

    @_deferred
    async def get_tag(self, user, blob_id, namespace=""):
        key = names.BlobKey.of(user, blob_id, namespace)
        _, tag, _ = await self._one("blob_info", key.params())
        return tag

    @_deferred
    async def get_flags(self, user, blob_id, namespace=""):
        key = names.BlobKey.of(user, blob_id, namespace)
        _, _, flags = await self._one("blob_info", key.params())
        return list(flags)

    @_deferred
    async def set_flags(self, user, blob_id, flags, namespace=""):
        key = names.BlobKey.of(user, blob_id, namespace)
        flags = names.flag_list(flags)
        await self._one("set_flags", dict(key.params(), flags=flags))

    @_deferred
    async def count(self, user, namespace=""):
        params = {"user": names.user_name(user), "namespace": names.namespace_name(namespace)}
        rows = await self.database.fetch("count_live", params)
        return rows[0][0]

    @_deferred
    async def list_blobs(self, user, namespace="", order_by=None, deleted=False,
                         filter_flag=None):
        params = {"user": names.user_name(user), "namespace": names.namespace_name(namespace)}
        newest_first = names.descending(order_by)
        if filter_flag is not None:
            params["flag"] = names.flag(filter_flag)
            if deleted:
                return []  # deleting a blob drops its flags
            name = "list_flagged"
        else:
            name = "list_tombstones" if deleted else "list_live"
        ids = [blob_id for (blob_id,) in await self.database.fetch(name, params)]
        # Both orders come from one ascending index scan.
        if newest_first:
            ids.reverse()
        return ids

    @_deferred
    async def get_total_storage(self, user):
        params = {"user": names.user_name(user)}
        rows = await self.database.fetch("total_storage_kib", params)
        return int(rows[0][0])
