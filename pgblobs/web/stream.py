"""/stream/{user}: many blobs in one request, either way.

Download: the body is a JSON list of ids; the response carries, for each,
8 lowercase hex digits of its size, its tag padded to 24 characters, one
space, then its bytes. Upload: the body is one line of JSON ``[[id, size],
...]`` and then the blobs' bytes back to back; each blob is stored as soon as
its bytes are in, so a failure part-way leaves the earlier blobs stored.
"""
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from pgblobs import names
from pgblobs.errors import InvalidArgument, TransferStopped
from pgblobs.web import arguments
from pgblobs.web.responses import ExactBody, Handler, gathered, rendered, send
from pgblobs.web.status import BodyTooLarge, MalformedBody, NotFound

_SIZE_DIGITS = 8
_TAG_WIDTH = 24
_LOOKUPS_AT_ONCE = 8


class StreamRoot(Handler):
    """/stream: its children are users."""

    def __init__(self, context):
        super().__init__()
        self._context = context

    def getChild(self, path, request):
        return UserStream(self._context, arguments.segment(path))


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
        raw = await request.body.read_all(self._context.limits.max_json_bytes)
        ids = [names.blob_name(blob_id) if isinstance(blob_id, str) else _not_an_id(blob_id)
               for blob_id in arguments.json_body(raw, list)]
        backend = self._context.backend
        # Everything is looked up before the first byte, so a missing blob
        # is still a plain 404; a few lookups at a time, so a long list
        # neither waits on one round trip per id nor floods the pool.
        lanes = defer.DeferredSemaphore(_LOOKUPS_AT_ONCE)
        lookups = []
        for blob_id in ids:
            lookups += [lanes.run(backend.get_blob_size, user, blob_id, namespace),
                        lanes.run(backend.get_tag, user, blob_id, namespace)]
        found = await gathered(lookups)
        listed = list(zip(ids, found[0::2], found[1::2]))
        for blob_id, size, _ in listed:
            if size >= 16 ** _SIZE_DIGITS:
                raise InvalidArgument(f"blob {blob_id} is too large for a stream")
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", b"%d" % sum(
            _SIZE_DIGITS + _TAG_WIDTH + 1 + size for _, size, _ in listed))
        for blob_id, size, tag in listed:
            request.write(f"{size:08x}{tag:<{_TAG_WIDTH}} ".encode("ascii"))
            body = ExactBody(request, size)
            await backend.read_blob(user, blob_id, body, namespace)
            if not body.verified():
                return
        request.finish()

    async def _upload(self, request, user, namespace):
        limits = self._context.limits
        blobs = BlobSequence(request.body, limits.max_json_bytes)
        listing = await blobs.listing()
        for blob_id, size in listing:
            if size > limits.max_blob_bytes:
                raise BodyTooLarge(f"blob {blob_id}: a blob may have at most "
                                   f"{limits.max_blob_bytes} bytes")
        for blob_id, size in listing:
            await self._context.backend.write_blob(user, blob_id, blobs.next_blob(size), namespace)
        await blobs.ended()
        send(request, 200)


def _not_an_id(value):
    raise MalformedBody(f"blob ids are strings, not {value!r}")


def _parse_listing(line):
    listing = arguments.json_body(line, list)
    parsed = []
    for entry in listing:
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str)
                or not isinstance(entry[1], int) or isinstance(entry[1], bool) or entry[1] < 0):
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
        self._listing = defer.Deferred()
        self._held = b""
        self._slice = None
        self._end = None  # None while the body flows; then True or a Failure
        self._end_waiters = []
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
            waiter = defer.Deferred()
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
            data = data[newline + 1:]
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
                self._end if isinstance(self._end, Failure)
                else Failure(MalformedBody("the body ended before its listing line")))
        if self._slice is not None and self._slice.started and self._slice.remaining:
            self._slice.fail(self._cut_short())
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # Used by the slices.

    def _start_slice(self):
        held, self._held = self._held, b""
        self._route(held)
        if not self._slice.remaining:
            return
        if self._end is not None:
            self._slice.fail(self._cut_short())
        elif not self._held:
            self._body.resumeProducing()

    def _pause(self):
        self._body.pauseProducing()

    def _resume(self):
        self._body.resumeProducing()


@implementer(IBodyProducer)
class _BlobSlice:
    """The next ``length`` bytes of an upload stream, as an IBodyProducer."""

    def __init__(self, sequence, length):
        self.length = length
        self.remaining = length
        self._sequence = sequence
        self._consumer = None
        self._done = defer.Deferred()

    @property
    def started(self):
        return self._consumer is not None

    def startProducing(self, consumer):
        self._consumer = consumer
        if self.remaining == 0:
            self._done.callback(None)
        else:
            self._sequence._start_slice()
        return self._done

    def feed(self, data):
        """Take what belongs to this blob; return the rest."""
        mine, rest = data[:self.remaining], data[self.remaining:]
        self.remaining -= len(mine)
        self._consumer.write(mine)
        if self.remaining == 0 and not self._done.called:
            self._done.callback(None)
        return rest

    def fail(self, failure):
        if not self._done.called:
            self._done.errback(failure)

    def pauseProducing(self):
        self._sequence._pause()

    def resumeProducing(self):
        if self.remaining:
            self._sequence._resume()

    def stopProducing(self):
        self.fail(Failure(TransferStopped("the blob's consumer stopped it")))
