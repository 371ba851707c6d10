"""A resumable upload's PATCH, on a content thread: its body appended to the
upload's large object in committed steps.

The PATCH holds the upload's advisory lock for its session from before it
reads the upload's row until it ends, so two PATCHes of one upload, on any
nodes, never interleave (the second is UploadBusy), and neither expiry nor
termination removes an upload while bytes are on their way into it.

Without a checksum, each step of ``step`` bytes commits on its own: an
offset the client heard is durable, and a PATCH cut off half-way keeps
every step that was in, and what had arrived of the last one. With a
checksum, the whole body is one transaction, kept only if it matches. The
step that brings the offset to the length makes the blob live in its own
transaction (``pgblobs.complete_upload``).
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime

import psycopg2

from pgblobs.db.queries import Row
from pgblobs.db.sync import SyncConnection
from pgblobs.errors import (
    ChecksumMismatch,
    TransferStopped,
    UploadBusy,
    UploadNotFound,
    UploadOffsetMismatch,
    UploadTooLong,
)
from pgblobs.transfer import CHUNK, UploadPipe, tag_of

_TAG_BYTES = 16


@dataclass(frozen=True)
class Checksum:
    """What a PATCH's Upload-Checksum says its body hashes to."""

    algorithm: str  # a name hashlib knows: sha1, sha256
    digest: bytes

    def matches(self, hashed: "hashlib._Hash") -> bool:
        return hashed.digest() == self.digest


@dataclass(frozen=True)
class Appended:
    """Where an upload stands after a PATCH."""

    offset: int
    expires_at: datetime
    completed: bool


@dataclass(frozen=True)
class Patch:
    """One PATCH of one upload, as the content thread carries it out."""

    upload_id: str
    user: str
    offset: int  # where the client says its body starts
    pipe: UploadPipe
    checksum: Checksum | None
    step: int  # bytes per committed step (without a checksum)
    expiry: float  # seconds the upload lives after this PATCH's last step
    # Whether the pipe's digest went on from the sha256 of every byte before ``offset``.
    carried: bool


def append(connection: SyncConnection, patch: Patch) -> Appended:
    """Worker: ``patch`` carried out on ``connection``."""
    if not _row(connection, "hold_upload", {"upload_id": patch.upload_id}).held:
        raise UploadBusy("another request is writing this upload now; try again shortly")
    try:
        return _append_held(connection, patch)
    finally:
        _release(connection, patch.upload_id)


def _row(connection: SyncConnection, name: str, params: dict[str, object]) -> Row:
    """The one row of a statement that always answers one."""
    row = connection.fetch_one(name, params)
    if row is None:
        raise RuntimeError(f"{name} answered no row")
    return row


def _release(connection: SyncConnection, upload_id: str) -> None:
    # A lost connection took the lock with it; the error that lost it is the one to tell.
    try:
        connection.fetch("release_upload", {"upload_id": upload_id})
    except psycopg2.Error:
        pass


def _append_held(connection: SyncConnection, patch: Patch) -> Appended:
    upload = connection.fetch_one(
        "upload_state", {"upload_id": patch.upload_id, "user": patch.user}
    )
    if upload is None:
        raise UploadNotFound("no such upload")
    if upload.upload_offset != patch.offset:
        raise UploadOffsetMismatch(f"Upload-Offset is {upload.upload_offset}, not {patch.offset}")
    patch.pipe.begin()
    position, length = patch.offset, int(upload.upload_length)
    step = patch.step if patch.checksum is None else length  # a checksum: one step
    checksum = patch.checksum
    checked = hashlib.new(checksum.algorithm) if checksum else None
    while True:
        with connection.transaction():
            large_object = connection.large_object(upload.lo_oid, "wb")
            large_object.seek(position)
            written, stopped = 0, None
            while written < step:
                try:
                    chunk = patch.pipe.read(min(CHUNK, step - written))
                except TransferStopped as error:
                    if checked is not None:
                        raise  # a checksum's body is kept whole or not at all
                    stopped = error
                    break
                if not chunk:
                    break
                if position + written + len(chunk) > length:
                    raise UploadTooLong(f"the upload has {length} bytes (Upload-Length)")
                large_object.write(chunk)
                if checked is not None:
                    checked.update(chunk)
                written += len(chunk)
            large_object.close()
            if checksum is not None and checked is not None and not checksum.matches(checked):
                raise ChecksumMismatch("the body does not match Upload-Checksum")
            position += written
            if position == length:
                _complete(connection, patch, upload.lo_oid, length)
                expires_at = upload.expires_at
            else:
                expires_at = _row(
                    connection,
                    "advance_upload",
                    {"upload_id": patch.upload_id, "offset": position, "expiry": patch.expiry},
                ).expires_at
        if stopped is not None:
            raise stopped
        if position == length or written < step:
            return Appended(position, expires_at, position == length)


def _complete(connection: SyncConnection, patch: Patch, lo_oid: int, length: int) -> None:
    """The upload's blob, live from this transaction's commit: its sha256 is
    the pipe's when that went on from every byte before and saw no byte
    after, else read back."""
    large_object = connection.large_object(lo_oid, "rb")
    if patch.carried and patch.pipe.digest.size == length - patch.offset:
        sha256 = patch.pipe.digest.sha256
    else:
        hashed = hashlib.sha256()
        while chunk := large_object.read(CHUNK):
            hashed.update(chunk)
        sha256 = hashed.digest()
    large_object.seek(max(0, length - _TAG_BYTES))
    tail = large_object.read(_TAG_BYTES)
    large_object.close()
    connection.fetch(
        "complete_upload",
        {"upload_id": patch.upload_id, "tag": tag_of(tail), "sha256": psycopg2.Binary(sha256)},
    )
