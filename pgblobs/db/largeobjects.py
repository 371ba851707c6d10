"""Blob content in large objects: what the content threads do.

Each function here runs in a worker thread on a ``SyncConnection`` and moves
bytes between a large object and a transfer adapter (pgblobs/transfer.py):
an ``UploadPipe`` to read from, a ``DownloadPush`` to deliver to.
"""

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred

from pgblobs.db.connector import SyncConnection
from pgblobs.errors import BlobNotFound, QuotaExceeded
from pgblobs.names import BlobKey
from pgblobs.transfer import CHUNK, ContentDigest, DownloadPush, UploadPipe


class _Allowance:
    """Reads pipes while the bytes stay within ``room`` (None: no limit), so
    an upload is stopped early; ``pgblobs.put_blob`` makes the final,
    race-free check."""

    def __init__(self, room: int | None) -> None:
        self._room = room
        self._received = 0

    def take(self, pipe: UploadPipe) -> bytes:
        chunk = pipe.read()
        self._received += len(chunk)
        if self._room is not None and self._received > self._room:
            raise QuotaExceeded("the blob does not fit in the user's quota")
        return chunk


def _write(connection: SyncConnection, pipe: UploadPipe, allowance: _Allowance) -> int:
    """Everything ``pipe`` carries, as a new large object; its oid."""
    large_object = connection.large_object(0, "wb")
    while chunk := allowance.take(pipe):
        large_object.write(chunk)
    large_object.close()
    return large_object.oid


def _commit_row(
    connection: SyncConnection,
    key: BlobKey,
    default_quota: int | None,
    oid: int,
    digest: ContentDigest,
    flags: Sequence[str] = (),
) -> None:
    connection.fetch(
        "put_blob",
        dict(
            key.params(),
            default_quota=default_quota,
            oid=oid,
            size=digest.size,
            tag=digest.tag,
            sha256=digest.sha256,
            flags=list(flags),
        ),
    )


def store(
    connection: SyncConnection,
    pipe: UploadPipe,
    key: BlobKey,
    default_quota: int | None,
    room: int | None,
    flags: Sequence[str],
) -> None:
    """Worker: what ``pipe`` carries as the blob ``key`` with ``flags``, in
    one transaction."""
    pipe.begin()
    with connection.transaction():
        oid = _write(connection, pipe, _Allowance(room))
        _commit_row(connection, key, default_quota, oid, pipe.digest, flags)


def store_all(
    connection: SyncConnection,
    reactor: Any,
    next_pipe: Callable[[int], UploadPipe],
    confirm: Callable[[], Deferred[Any]],
    keys: list[BlobKey],
    default_quota: int | None,
    room: int | None,
) -> None:
    """Worker: the blobs ``keys``, their bytes from ``next_pipe(index)`` (run
    on the reactor), in one transaction committed only if ``confirm()``
    (run on the reactor too) succeeds once every byte is in.

    Content is written first and the rows last, so ``put_blob``'s per-user
    lock is held only for the few statements before the commit.
    """
    allowance = _Allowance(room)
    with connection.transaction():
        written = []
        for index, key in enumerate(keys):
            pipe = threads.blockingCallFromThread(reactor, next_pipe, index)
            pipe.begin()
            written.append((key, _write(connection, pipe, allowance), pipe.digest))
        threads.blockingCallFromThread(reactor, confirm)
        for key, oid, digest in written:
            _commit_row(connection, key, default_quota, oid, digest)


def load(connection: SyncConnection, push: DownloadPush, row: int, start: int, stop: int) -> None:
    """Worker: deliver bytes ``start:stop`` of the blob version ``row`` through ``push``.

    The read runs in one snapshot: the row and every page of its content
    come from it, so a delete committed meanwhile cannot cut it short.
    """
    with connection.transaction(snapshot=True, commit=False):
        found = connection.fetch_one("version_large_object", {"row": row})
        if found is None:
            raise BlobNotFound("no such blob: it was deleted meanwhile")
        large_object = connection.large_object(found.lo_oid, "rb")
        position = start
        large_object.seek(position)
        while position < stop:
            chunk = large_object.read(min(CHUNK, stop - position))
            push.deliver(chunk)
            position += len(chunk)
