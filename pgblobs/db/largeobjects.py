"""Blob content in large objects: what the content threads do.

Each function here runs in a worker thread on a ``SyncConnection`` and moves
bytes between a large object and a transfer adapter (pgblobs/transfer.py):
an ``UploadPipe`` to read from, a ``DownloadPush`` to deliver to.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred

from pgblobs.db.sync import SyncConnection
from pgblobs.errors import BlobExists, BlobNotFound, QuotaExceeded
from pgblobs.names import BlobKey
from pgblobs.transfer import CHUNK, ContentDigest, DownloadPush, UploadPipe


class _Allowance:
    """Reads pipes while the bytes stay within ``room`` (None: no limit), so
    an upload is stopped early; ``pgblobs.store_blobs_v2`` makes the
    final, race-free check."""

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


def _commit_rows(
    connection: SyncConnection,
    written: Sequence[tuple[BlobKey, int, ContentDigest]],
    quota: dict[str, int | None],
    flags: Sequence[str] = (),
) -> None:
    """The rows of one user's blobs ``written`` (key, oid, digest), each with
    ``flags``, in one statement; ``quota`` holds the default limits."""
    keys = [key for key, _, _ in written]
    connection.fetch(
        "put_blobs",
        dict(
            quota,
            user=keys[0].user,
            namespace=keys[0].namespace,
            blob_ids=[key.blob_id for key in keys],
            oids=[oid for _, oid, _ in written],
            sizes=[digest.size for _, _, digest in written],
            tags=[digest.tag for _, _, digest in written],
            sha256s=[digest.sha256 for _, _, digest in written],
            flags=[",".join(flags)] * len(written),
        ),
    )


def store(
    connection: SyncConnection,
    pipe: UploadPipe,
    key: BlobKey,
    quota: dict[str, int | None],
    room: int | None,
    flags: Sequence[str],
) -> None:
    """Worker: what ``pipe`` carries as the blob ``key`` with ``flags``, in
    one transaction."""
    pipe.begin()
    with connection.transaction():
        oid = _write(connection, pipe, _Allowance(room))
        _commit_rows(connection, [(key, oid, pipe.digest)], quota, flags)


def _repeat(pipe: UploadPipe, key: BlobKey, sha256: bytes) -> None:
    """Everything ``pipe`` carries, read and dropped; BlobExists unless it
    is the live blob's very bytes (its sha256 ``sha256``)."""
    while pipe.read():
        pass
    if pipe.digest.sha256 != sha256:
        raise BlobExists(f"a live blob already has the id {key.blob_id}")


def store_all(
    connection: SyncConnection,
    reactor: Any,
    next_pipe: Callable[[int], UploadPipe],
    confirm: Callable[[], Deferred[Any]],
    keys: list[BlobKey],
    quota: dict[str, int | None],
    room: int | None,
    repeats: Mapping[int, bytes],
) -> None:
    """Worker: the blobs ``keys`` (of one user and namespace), their bytes
    from ``next_pipe(index)`` (run on the reactor), in one transaction
    committed only if ``confirm()`` (run on the reactor too) succeeds once
    every byte is in. ``repeats`` maps the index of a blob whose id a live
    blob of the same size has to that blob's sha256: its bytes must be the
    same (else BlobExists), and are not stored again.

    Content is written first and the rows last, in one statement, so the
    per-user lock is held only for that statement and the commit.
    """
    allowance = _Allowance(room)
    with connection.transaction():
        written = []
        for index, key in enumerate(keys):
            pipe = threads.blockingCallFromThread(reactor, next_pipe, index)
            pipe.begin()
            if index in repeats:
                _repeat(pipe, key, repeats[index])
            else:
                written.append((key, _write(connection, pipe, allowance), pipe.digest))
        threads.blockingCallFromThread(reactor, confirm)
        if written:
            _commit_rows(connection, written, quota)


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
