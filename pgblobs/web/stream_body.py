"""The body of a stream upload, split into its blobs.

One line of JSON ``[[id, size], ...]``, then the blobs' bytes back to back:
``BlobSequence`` reads the listing and hands out one IBodyProducer per blob,
each producing exactly its size, with the request body's backpressure.
"""

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from pgblobs import names
from pgblobs.errors import TransferStopped
from pgblobs.web import arguments
from pgblobs.web.status import BodyTooLarge, MalformedBody


def _parse_listing(line: bytes) -> list[tuple[str, int]]:
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

    def __init__(self, body: IBodyProducer, max_listing_bytes: int) -> None:
        self._body = body
        self._max_listing = max_listing_bytes
        self._line = bytearray()
        self._listing: defer.Deferred[list[tuple[str, int]]] = defer.Deferred()
        self._held = b""
        self._slice: _BlobSlice | None = None
        self._end: Failure | bool | None = None  # None while the body flows
        self._end_waiters: list[defer.Deferred[None]] = []
        body.startProducing(self).addBoth(self._body_ended)

    def listing(self) -> defer.Deferred[list[tuple[str, int]]]:
        return self._listing

    def next_blob(self, size: int) -> "_BlobSlice":
        self._slice = _BlobSlice(self, size)
        return self._slice

    async def ended(self) -> None:
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

    def write(self, data: bytes) -> None:
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

    def _fail_listing(self, error: Exception) -> None:
        self._listing.errback(Failure(error))
        self._body.stopProducing()

    def _route(self, data: bytes) -> None:
        current = self._slice
        while data and current is not None and current.started and current.remaining:
            data = current.feed(data)
        if data:
            self._held += data
            self._body.pauseProducing()

    def _cut_short(self) -> Failure:
        """Why a blob cannot be completed once the body has ended."""
        if isinstance(self._end, Failure):
            return self._end
        return Failure(MalformedBody("the body ended before the last blob was complete"))

    def _body_ended(self, outcome: Failure | None) -> None:
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

    def pause_body(self) -> None:
        self._body.pauseProducing()

    def resume_body(self) -> None:
        self._body.resumeProducing()


@implementer(IBodyProducer)
class _BlobSlice:
    """The next ``length`` bytes of an upload stream, as an IBodyProducer."""

    def __init__(self, sequence: BlobSequence, length: int) -> None:
        self.length = length
        self.remaining = length
        self._sequence = sequence
        self._consumer: IConsumer | None = None
        self._done: defer.Deferred[None] = defer.Deferred()

    @property
    def started(self) -> bool:
        return self._consumer is not None

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        self._consumer = consumer
        if self.remaining == 0:
            self._done.callback(None)
        else:
            self._sequence.start_slice(self)
        return self._done

    def feed(self, data: bytes) -> bytes:
        """Take what belongs to this blob; return the rest."""
        mine, rest = data[: self.remaining], data[self.remaining :]
        self.remaining -= len(mine)
        if self._consumer is not None:
            self._consumer.write(mine)
        if self.remaining == 0 and not self._done.called:
            self._done.callback(None)
        return rest

    def fail(self, failure: Failure) -> None:
        if not self._done.called:
            self._done.errback(failure)

    def pauseProducing(self) -> None:
        self._sequence.pause_body()

    def resumeProducing(self) -> None:
        if self.remaining:
            self._sequence.resume_body()

    def stopProducing(self) -> None:
        self.fail(Failure(TransferStopped("the blob's consumer stopped it")))
