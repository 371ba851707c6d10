"""Resumable uploads: a blob's bytes arriving over many requests, to any node,
into a large object that becomes the blob when its last byte is in.

Everything about an upload lives in the database (``pgblobs.uploads``, the
functions of revision 0015), so any node serves any request of any upload,
and every node sweeps the expired ones. A PATCH's body goes to a content
thread (db/upload_steps.py), which appends it in committed steps under the
upload's advisory lock.

The blob's sha256 goes on from PATCH to PATCH in this process while they
follow one another here: a PATCH that starts where this process's last
one ended carries its sha256 on. One that starts elsewhere (another node
or worker took the previous PATCH, or it was cut off) does not, and the
step that completes such an upload reads its bytes back to hash them.
"""

import hashlib
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer

from pgblobs import names, settings, transfer
from pgblobs.db import upload_steps
from pgblobs.db.connector import Database
from pgblobs.db.queries import Row
from pgblobs.db.small_writes import QuotaParams
from pgblobs.db.sweeps import Sweep
from pgblobs.errors import (
    InvalidArgument,
    UploadBusy,
    UploadNotFound,
    UploadOffsetMismatch,
    UploadTooLong,
)

# The sha256 states this process keeps for uploads it may see again: one per
# upload in flight here, and a bounded few more.
_KEPT_STATES = 1024


@dataclass(frozen=True)
class UploadState:
    """Where an upload stands. A finished upload is remembered until its
    expiry, so that a client that lost the answer to its last PATCH hears
    that every byte is in."""

    upload_id: str
    length: int
    offset: int
    expires_at: datetime
    metadata: str = ""

    @property
    def completed(self) -> bool:
        """Whether every byte is in: the blob is live."""
        return self.offset == self.length

    @classmethod
    def of(cls, row: Row) -> "UploadState":
        """From a row of upload_state (a finished upload's offset is its length)."""
        return cls(
            row.upload_id,
            int(row.upload_length),
            int(row.upload_offset),
            row.expires_at,
            row.upload_metadata,
        )


class _Sha256States:
    """Per upload, the sha256 of its bytes up to an offset (shared by the
    reactor and content threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: OrderedDict[str, tuple[int, hashlib._Hash]] = OrderedDict()

    def take(self, upload_id: str, offset: int) -> "hashlib._Hash | None":
        """The sha256 of the first ``offset`` bytes, if this process has it."""
        if offset == 0:
            return hashlib.sha256()
        with self._lock:
            kept = self._states.pop(upload_id, None)
        return kept[1] if kept is not None and kept[0] == offset else None

    def keep(self, upload_id: str, offset: int, state: "hashlib._Hash") -> None:
        with self._lock:
            self._states[upload_id] = (offset, state)
            while len(self._states) > _KEPT_STATES:
                self._states.popitem(last=False)


class Uploads:
    """The uploads of ``database``; ``quota()`` gives the default limits.
    An upload lives ``expiry`` seconds after its creation or its last PATCH
    step; a user may have ``max_per_user`` in progress."""

    def __init__(
        self,
        reactor: Any,
        database: Database,
        quota: QuotaParams,
        expiry: float = settings.UPLOAD_EXPIRY,
        max_per_user: int = settings.MAX_UPLOADS_PER_USER,
        step: int = settings.UPLOAD_STEP,
    ) -> None:
        self._reactor = reactor
        self._database = database
        self._quota = quota
        self._expiry = expiry
        self._max_per_user = max_per_user
        self._step = step
        self._sha256s = _Sha256States()
        self._sweep = Sweep(
            database,
            reactor,
            "expire_uploads",
            {"batch": settings.UPLOAD_EXPIRY_BATCH},
            "removed",
            "remove the uploads past their expiry",
        )

    async def create(
        self, user: str, blob_id: str, length: int, namespace: str, metadata: str
    ) -> UploadState:
        key = names.BlobKey.of(user, blob_id, namespace)
        if length < 0:
            raise InvalidArgument("an upload's length is 0 or more bytes")
        upload_id = secrets.token_urlsafe(16)
        rows = await self._database.fetch(
            "create_upload",
            dict(
                key.params(),
                upload_id=upload_id,
                metadata=metadata,
                length=length,
                expiry=self._expiry,
                max_uploads=self._max_per_user,
                **self._quota(),
            ),
        )
        return UploadState(upload_id, length, length if length == 0 else 0, rows[0].expires_at)

    async def state(self, user: str, upload_id: str) -> UploadState:
        params = {"user": names.user_name(user), "upload_id": names.upload_name(upload_id)}
        rows = await self._database.fetch("upload_state", params)
        if not rows:
            raise UploadNotFound("no such upload")
        return UploadState.of(rows[0])

    async def reserving(self, user: str, blob_id: str, namespace: str) -> UploadState | None:
        """The upload in progress that has reserved the blob's id, if one has."""
        key = names.BlobKey.of(user, blob_id, namespace)
        rows = await self._database.fetch("upload_of_blob", key.params())
        return UploadState.of(rows[0]) if rows else None

    async def append(
        self,
        user: str,
        upload_id: str,
        offset: int,
        producer: IBodyProducer,
        checksum: upload_steps.Checksum | None,
    ) -> UploadState:
        # Refused here, on a statement connection, what can be refused
        # before a content connection is taken; the content thread checks
        # again under the upload's lock.
        before = await self.state(user, upload_id)
        if offset != before.offset:
            raise UploadOffsetMismatch(f"Upload-Offset is {before.offset}, not {offset}")
        # A body of unknown length is stopped where the upload ends (the content thread).
        known = producer.length is not UNKNOWN_LENGTH
        if (known and offset + producer.length > before.length) or (before.completed and not known):
            raise UploadTooLong(f"the upload has {before.length} bytes (Upload-Length)")
        if before.completed:  # a retry of the PATCH whose answer was lost: nothing to add
            return before
        carried = self._sha256s.take(upload_id, offset)
        pipe = transfer.UploadPipe(
            self._reactor, producer, transfer.ContentDigest(carried), keeps_arrived=True
        )
        patch = upload_steps.Patch(
            upload_id, user, offset, pipe, checksum, self._step, self._expiry, carried is not None
        )
        try:
            # A connection found lost before the body was asked for (the
            # first use after a database restart, say) is replaced, once.
            appended = await self._database.in_thread(
                upload_steps.append, patch, owner=user, retry=lambda: not pipe.begun
            )
        except BaseException:
            transfer.give_up([pipe])
            raise
        # Only a sha256 of exactly the bytes before the new offset goes on.
        if (
            carried is not None
            and not appended.completed
            and pipe.digest.size == (appended.offset - offset)
        ):
            self._sha256s.keep(upload_id, appended.offset, pipe.digest.sha256_state())
        return UploadState(
            upload_id, before.length, appended.offset, appended.expires_at, before.metadata
        )

    async def terminate(self, user: str, upload_id: str) -> None:
        params = {"user": names.user_name(user), "upload_id": names.upload_name(upload_id)}
        rows = await self._database.fetch("terminate_upload", params)
        if not rows[0].ended:
            await self.state(user, upload_id)  # UploadNotFound, if it is not held
            raise UploadBusy("another request is writing this upload now; try again shortly")

    @property
    def expired(self) -> int:
        """Uploads this process's sweeps removed."""
        return self._sweep.done

    def start_expiring(self, every: float = settings.UPLOAD_EXPIRY_EVERY) -> None:
        """Remove expired uploads now and every ``every`` seconds, until ``stop_expiring``."""
        self._sweep.start(every)

    def stop_expiring(self) -> Deferred[object]:
        return self._sweep.stop()
