"""/stream/{user}: many blobs in one request, either way.

Download: the body is a JSON list of ids; the response carries, for each,
8 lowercase hex digits of its size, its tag padded to 24 characters, one
space, then its bytes, each header and each piece of content a chunk of its
own. Upload: the body is one line of JSON ``[[id, size], ...]`` and then the
blobs' bytes back to back; they are stored in one transaction, all or none.
"""

import functools
from typing import NoReturn, cast

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from zope.interface import implementer

from pgblobs import names
from pgblobs.errors import InvalidArgument, TransferStopped
from pgblobs.web import arguments
from pgblobs.web.request import StreamingRequest
from pgblobs.web.resources import UserLeaf, body_of, rendered
from pgblobs.web.responses import exactly, send
from pgblobs.web.status import BodyTooLarge, MalformedBody, TooManyIds
from pgblobs.web.stream_body import BlobSequence

_TAG_WIDTH = 24
MAX_STREAMED_SIZE = 16**8 - 1  # a record header carries the size in 8 hex digits
# Blobs whose small contents are fetched together (one statement) and held at once.
_WINDOW = 25


class UserStream(UserLeaf):
    route = "stream"

    @rendered
    async def render_POST(self, request: StreamingRequest) -> None:
        user = names.user_name(self._user)
        namespace = names.namespace_name(arguments.text(request, "namespace", ""))
        direction = arguments.text(request, "direction")
        if direction not in ("download", "upload"):
            raise InvalidArgument("direction must be download or upload")
        await self._context.auth.require(request, user)
        if direction == "download":
            await self._download(request, user, namespace)
        else:
            await self._upload(request, user, namespace)

    async def _download(self, request: StreamingRequest, user: str, namespace: str) -> None:
        limits = self._context.limits
        raw = await body_of(request).read_all(limits.max_json_bytes)
        ids = [
            names.blob_name(blob_id) if isinstance(blob_id, str) else _not_an_id(blob_id)
            for blob_id in arguments.json_body(raw, list)
        ]
        if len(ids) > limits.max_stream_ids:
            raise TooManyIds(f"at most {limits.max_stream_ids} ids per stream request")
        # Everything is looked up before the first byte, so a missing blob
        # is still a plain 404.
        store = self._context.store
        opened = await store.open_blobs(user, ids, namespace)
        for blob in opened:
            if blob.size > MAX_STREAMED_SIZE:
                raise InvalidArgument(f"blob {blob.blob_id} is too large for a stream")
        # No Content-Length: the answer is chunked, and every record header
        # and every piece of content is a chunk of its own, as Soledad's
        # client (which splits what it reads on spaces) needs.
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        blobs = _PacedBlobs(request)
        try:
            # A batch's small contents come in one statement, and only one
            # batch of them is held at a time.
            for first in range(0, len(opened), _WINDOW):
                for blob in await store.load_small(opened[first : first + _WINDOW]):
                    await blobs.writable()
                    request.write(f"{blob.size:08x}{blob.tag:<{_TAG_WIDTH}} ".encode("ascii"))
                    blobs.expect(blob.size)
                    await blob.read(blobs)
                    if not blobs.verified():
                        return
        finally:
            blobs.done()
        request.finish()

    async def _upload(self, request: StreamingRequest, user: str, namespace: str) -> None:
        limits = self._context.limits
        blobs = BlobSequence(body_of(request), limits.max_json_bytes)
        listing = await blobs.listing()
        # The rows of one upload commit in one transaction under the user's
        # lock: bounded, so the user's other writes never wait long for it.
        if len(listing) > limits.max_stream_ids:
            raise TooManyIds(f"at most {limits.max_stream_ids} blobs per stream request")
        for blob_id, size in listing:
            if size > limits.max_blob_bytes:
                raise BodyTooLarge(
                    f"blob {blob_id}: a blob may have at most {limits.max_blob_bytes} bytes"
                )
        # All or nothing: a failure stores none of the request's blobs, so
        # the same request can simply be sent again.
        await self._context.store.write_blobs(
            user,
            [
                (blob_id, size, functools.partial(blobs.next_blob, size))
                for blob_id, size in listing
            ],
            namespace,
            before_commit=lambda: defer.ensureDeferred(blobs.ended()),
        )
        send(request, 200)


def _not_an_id(value: object) -> NoReturn:
    raise MalformedBody(f"blob ids are strings, not {value!r}")


@implementer(IPushProducer, IConsumer)
class _PacedBlobs:
    """The consumer of every blob of one stream download, in turn.

    It is the one producer registered on the request for the whole
    response: it relays the client's pause and resume to whichever blob is
    being read, and lets the next record wait while the client is behind,
    so a long stream holds no more than a chunk or two in memory.
    """

    def __init__(self, request: StreamingRequest) -> None:
        self._request = request
        self._paused = False
        self._stopped = False
        self._blob_producer: IPushProducer | None = None
        self._waiters: list[defer.Deferred[None]] = []
        self._expected = 0
        self._written = 0
        request.registerProducer(self, True)

    # What the request asks of its producer.

    def pauseProducing(self) -> None:
        self._paused = True
        if self._blob_producer is not None:
            self._blob_producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._blob_producer is not None:
            self._blob_producer.resumeProducing()
        self._wake()

    def stopProducing(self) -> None:
        self._stopped = True
        if self._blob_producer is not None:
            self._blob_producer.stopProducing()
        self._wake()

    # What the store asks of a consumer.

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        # A store reads a version through a push producer (streaming).
        self._blob_producer = cast(IPushProducer, producer)
        if self._paused:
            self._blob_producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._blob_producer = None

    def write(self, data: bytes) -> None:
        self._written += len(data)
        self._request.write(data)

    # The stream's own pace.

    async def writable(self) -> None:
        """Wait while the client is behind; TransferStopped once it is gone."""
        while self._paused and not self._stopped:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(waiter)
            await waiter
        if self._stopped:
            raise TransferStopped("the client went away")

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def expect(self, size: int) -> None:
        self._expected, self._written = size, 0

    def verified(self) -> bool:
        """Whether the blob just read had exactly its size (if not, the
        connection is cut)."""
        return exactly(self._request, self._written, self._expected)

    def done(self) -> None:
        self._request.unregisterProducer()
