"""/stream/{user}: many blobs in one request, either way.

Download: the body is a JSON list of ids; the response carries, for each,
8 lowercase hex digits of its size, its tag padded to 24 characters, one
space, then its bytes, each header and each piece of content a chunk of its
own. Upload: the body is one line of JSON ``[[id, size], ...]`` and then the
blobs' bytes back to back; they are stored in one transaction, all or none.
"""

import functools

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from pgblobs import names
from pgblobs.errors import InvalidArgument, TransferStopped
from pgblobs.web import arguments
from pgblobs.web.responses import Handler, exactly, rendered, send
from pgblobs.web.status import BodyTooLarge, MalformedBody, NotFound, TooManyIds

_TAG_WIDTH = 24
MAX_STREAMED_SIZE = 16**8 - 1  # a record header carries the size in 8 hex digits


class UserStream(Handler):
    isLeaf = True
    route = "stream"

    def __init__(self, context, user):
        super().__init__()
        self._context = context
        self._user = user

    @rendered
    async def render_POST(self, request):
        request.route = self.route
        if request.postpath not in ([], [b""]):
            raise NotFound("no such resource")
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

    async def _download(self, request, user, namespace):
        limits = self._context.limits
        raw = await request.body.read_all(limits.max_json_bytes)
        ids = [
            names.blob_name(blob_id) if isinstance(blob_id, str) else _not_an_id(blob_id)
            for blob_id in arguments.json_body(raw, list)
        ]
        if len(ids) > limits.max_stream_ids:
            raise TooManyIds(f"at most {limits.max_stream_ids} ids per stream request")
        # Everything is looked up before the first byte, so a missing blob
        # is still a plain 404.
        opened = await self._context.backend.open_blobs(user, ids, namespace)
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
            for blob in opened:
                await blobs.writable()
                request.write(f"{blob.size:08x}{blob.tag:<{_TAG_WIDTH}} ".encode("ascii"))
                blobs.expect(blob.size)
                await blob.read(blobs)
                if not blobs.verified():
                    return
        finally:
            blobs.done()
        request.finish()

    async def _upload(self, request, user, namespace):
        limits = self._context.limits
        blobs = BlobSequence(request.body, limits.max_json_bytes)
        listing = await blobs.listing()
        for blob_id, size in listing:
            if size > limits.max_blob_bytes:
                raise BodyTooLarge(
                    f"blob {blob_id}: a blob may have at most {limits.max_blob_bytes} bytes"
                )
        # All or nothing: a failure stores none of the request's blobs, so
        # the same request can simply be sent again.
        await self._context.backend.write_blobs(
            user,
            [
                (blob_id, size, functools.partial(blobs.next_blob, size))
                for blob_id, size in listing
            ],
            namespace,
            before_commit=lambda: defer.ensureDeferred(blobs.ended()),
        )
        send(request, 200)


def _not_an_id(value):
    raise MalformedBody(f"blob ids are strings, not {value!r}")


def _parse_listing(line):
    listing = arguments.json_body(line, list)
    parsed = []
    for entry in listing:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], int)
            or isinstance(entry[1], bool)
            or entry[1] < 0
        ):
            raise MalformedBody("the first line must be a JSON list of [id, size] pairs")
        parsed.append((names.blob_name(entry[0]), entry[1]))
    return parsed


class BlobSequence:
    """Splits an upload-stream body into its listing and one producer per blob.

    It consumes the request body, holding bytes that arrive while no blob is
    being stored (the body is paused meanwhile), and feeds each blob's bytes
    to the ``_BlobSlice`` the backend is consuming.
    """

    def __init__(self, body, max_listing_bytes):
        self._body = body
        self._max_listing = max_listing_bytes
        self._line = bytearray()
        self._listing: defer.Deferred[list[tuple[str, int]]] = defer.Deferred()
        self._held = b""
        self._slice: _BlobSlice | None = None
        self._end: Failure | bool | None = None  # None while the body flows
        self._end_waiters: list[defer.Deferred[None]] = []
        body.startProducing(self).addBoth(self._body_ended)

    def listing(self):
        return self._listing

    def next_blob(self, size):
        self._slice = _BlobSlice(self, size)
        return self._slice

    async def ended(self):
        """The body must end exactly after the last blob."""
        if self._held:
            raise MalformedBody("the body is longer than its listing says")
        if self._end is None:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._end_waiters.append(waiter)
            self._body.resumeProducing()
            await waiter
        if self._held:
            raise MalformedBody("the body is longer than its listing says")
        if isinstance(self._end, Failure):
            self._end.raiseException()

    # IConsumer of the request body.

    def write(self, data):
        if not self._listing.called:
            newline = data.find(b"\n")
            if newline < 0:
                self._line += data
                if len(self._line) > self._max_listing:
                    self._fail_listing(BodyTooLarge("the listing line is too long"))
                return
            self._line += data[:newline]
            data = data[newline + 1 :]
            try:
                listing = _parse_listing(bytes(self._line))
            except Exception as error:
                self._fail_listing(error)
                return
            self._listing.callback(listing)
        self._route(data)

    def _fail_listing(self, error):
        self._listing.errback(Failure(error))
        self._body.stopProducing()

    def _route(self, data):
        current = self._slice
        while data and current is not None and current.started and current.remaining:
            data = current.feed(data)
        if data:
            self._held += data
            self._body.pauseProducing()

    def _cut_short(self):
        """Why a blob cannot be completed once the body has ended."""
        if isinstance(self._end, Failure):
            return self._end
        return Failure(MalformedBody("the body ended before the last blob was complete"))

    def _body_ended(self, outcome):
        self._end = outcome if isinstance(outcome, Failure) else True
        if not self._listing.called:
            self._listing.errback(
                self._end
                if isinstance(self._end, Failure)
                else Failure(MalformedBody("the body ended before its listing line"))
            )
        if self._slice is not None and self._slice.started and self._slice.remaining:
            self._slice.fail(self._cut_short())
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # Used by the slices.

    def start_slice(self, blob: "_BlobSlice") -> None:
        held, self._held = self._held, b""
        self._route(held)
        if not blob.remaining:
            return
        if self._end is not None:
            blob.fail(self._cut_short())
        elif not self._held:
            self._body.resumeProducing()

    def pause_body(self):
        self._body.pauseProducing()

    def resume_body(self):
        self._body.resumeProducing()


@implementer(IBodyProducer)
class _BlobSlice:
    """The next ``length`` bytes of an upload stream, as an IBodyProducer."""

    def __init__(self, sequence, length):
        self.length = length
        self.remaining = length
        self._sequence = sequence
        self._consumer: IConsumer | None = None
        self._done: defer.Deferred[None] = defer.Deferred()

    @property
    def started(self):
        return self._consumer is not None

    def startProducing(self, consumer):
        self._consumer = consumer
        if self.remaining == 0:
            self._done.callback(None)
        else:
            self._sequence.start_slice(self)
        return self._done

    def feed(self, data):
        """Take what belongs to this blob; return the rest."""
        mine, rest = data[: self.remaining], data[self.remaining :]
        self.remaining -= len(mine)
        if self._consumer is not None:
            self._consumer.write(mine)
        if self.remaining == 0 and not self._done.called:
            self._done.callback(None)
        return rest

    def fail(self, failure):
        if not self._done.called:
            self._done.errback(failure)

    def pauseProducing(self):
        self._sequence.pause_body()

    def resumeProducing(self):
        if self.remaining:
            self._sequence.resume_body()

    def stopProducing(self):
        self.fail(Failure(TransferStopped("the blob's consumer stopped it")))


@implementer(IPushProducer, IConsumer)
class _PacedBlobs:
    """The consumer of every blob of one stream download, in turn.

    It is the one producer registered on the request for the whole
    response: it relays the client's pause and resume to whichever blob is
    being read, and lets the next record wait while the client is behind,
    so a long stream holds no more than a chunk or two in memory.
    """

    def __init__(self, request):
        self._request = request
        self._paused = False
        self._stopped = False
        self._blob_producer = None
        self._waiters = []
        self._expected = 0
        self._written = 0
        request.registerProducer(self, True)

    # What the request asks of its producer.

    def pauseProducing(self):
        self._paused = True
        if self._blob_producer is not None:
            self._blob_producer.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        if self._blob_producer is not None:
            self._blob_producer.resumeProducing()
        self._wake()

    def stopProducing(self):
        self._stopped = True
        if self._blob_producer is not None:
            self._blob_producer.stopProducing()
        self._wake()

    # What the backend asks of a consumer.

    def registerProducer(self, producer, streaming):
        self._blob_producer = producer
        if self._paused:
            producer.pauseProducing()

    def unregisterProducer(self):
        self._blob_producer = None

    def write(self, data):
        self._written += len(data)
        self._request.write(data)

    # The stream's own pace.

    async def writable(self):
        """Wait while the client is behind; TransferStopped once it is gone."""
        while self._paused and not self._stopped:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(waiter)
            await waiter
        if self._stopped:
            raise TransferStopped("the client went away")

    def _wake(self):
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def expect(self, size):
        self._expected, self._written = size, 0

    def verified(self):
        """Whether the blob just read had exactly its size (if not, the
        connection is cut)."""
        return exactly(self._request, self._written, self._expected)

    def done(self):
        self._request.unregisterProducer()
