"""Stream upload bodies split into their blobs, fed by hand: the listing line
in any number of pieces, each blob exactly its size wherever the network cut
the bytes, the body paused while no blob takes its bytes, and each way a body
can be wrong."""

import pytest
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure

from pgblobs.errors import InvalidName, TransferStopped
from pgblobs.web.status import BodyTooLarge, MalformedBody
from pgblobs.web.stream_body import BlobSequence
from tests.fast.wire import result_of
from tests.helpers import Collector


class _Body:
    """A request body fed by the test: what it was asked (paused, stopped)."""

    def __init__(self) -> None:
        self.paused = True  # RequestBody starts paused, until its consumer asks
        self.stopped = False
        self._consumer: IConsumer | None = None
        self._done: defer.Deferred[None] = defer.Deferred()

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        self._consumer = consumer
        self.paused = False
        return self._done

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True

    def arrive(self, *pieces: bytes) -> None:
        assert self._consumer is not None
        for piece in pieces:
            self._consumer.write(piece)

    def end(self, failure: Failure | None = None) -> None:
        if failure is None:
            self._done.callback(None)
        else:
            self._done.errback(failure)


def _sequence(max_listing_bytes: int = 1000) -> tuple[_Body, BlobSequence]:
    body = _Body()
    return body, BlobSequence(body, max_listing_bytes)


def _store(blobs: BlobSequence, size: int) -> tuple[Collector, defer.Deferred[None]]:
    """Start storing the next blob as the backend does; its consumer and its end."""
    consumer = Collector()
    return consumer, blobs.next_blob(size).startProducing(consumer)


def test_a_body_cut_anywhere_gives_each_blob_exactly_its_bytes():
    body, blobs = _sequence()
    body.arrive(b'[["a", 3], ', b'["b", 0], ["c", 5]]', b"\nab", b"cCC", b"CCC")
    assert result_of(blobs.listing()) == [("a", 3), ("b", 0), ("c", 5)]
    assert body.paused  # bytes arrived that no blob takes yet
    stored = []
    for size in (3, 0, 5):
        consumer, done = _store(blobs, size)
        result_of(done)
        stored.append(consumer.data)
    assert stored == [b"abc", b"", b"CCCCC"]
    ended = defer.ensureDeferred(blobs.ended())
    assert not body.paused and not ended.called  # the body must still say it ended
    body.end()
    result_of(ended)


def test_bytes_arriving_while_a_blob_is_stored_go_straight_to_it():
    body, blobs = _sequence()
    body.arrive(b'[["a", 6]]\n')
    assert not body.paused  # nothing is held: the body goes on
    consumer, done = _store(blobs, 6)
    body.arrive(b"12", b"34")
    assert consumer.data == b"1234" and not done.called
    body.arrive(b"56")
    result_of(done)
    assert consumer.data == b"123456"


def test_the_blob_consumer_pausing_pauses_the_body():
    body, blobs = _sequence()
    body.arrive(b'[["a", 4]]\n')
    slice_ = blobs.next_blob(4)
    slice_.startProducing(Collector())
    slice_.pauseProducing()
    assert body.paused
    slice_.resumeProducing()
    assert not body.paused


@pytest.mark.parametrize(
    "line, error",
    [
        (b"not json", MalformedBody),
        (b'{"a": 1}', MalformedBody),
        (b'[["a", -1]]', MalformedBody),
        (b'[["a", true]]', MalformedBody),
        (b'[["a", 1, 2]]', MalformedBody),
        (b"[[1, 1]]", MalformedBody),
        (b'[["a.b", 1]]', InvalidName),
    ],
)
def test_a_bad_listing_fails_the_listing_and_stops_the_body(line, error):
    body, blobs = _sequence()
    body.arrive(line + b"\n")
    with pytest.raises(error):
        result_of(blobs.listing())
    assert body.stopped


def test_a_listing_line_longer_than_allowed_fails_before_its_end():
    body, blobs = _sequence(max_listing_bytes=10)
    body.arrive(b'[["a", 1],', b' ["b", 2]')
    with pytest.raises(BodyTooLarge):
        result_of(blobs.listing())
    assert body.stopped


def test_a_body_ending_before_its_listing_line_is_malformed():
    body, blobs = _sequence()
    body.arrive(b'[["a", 1]]')
    body.end()
    with pytest.raises(MalformedBody, match="before its listing line"):
        result_of(blobs.listing())


@pytest.mark.parametrize(
    "ending, error, reason",
    [
        (None, MalformedBody, "before the last blob was complete"),  # complete, but short
        (Failure(TransferStopped("the client went away")), TransferStopped, "went away"),
    ],
)
def test_a_body_ending_inside_a_blob_fails_that_blob_saying_why(ending, error, reason):
    body, blobs = _sequence()
    body.arrive(b'[["a", 5]]\nab')
    _, done = _store(blobs, 5)
    body.end(ending)
    with pytest.raises(error, match=reason):
        result_of(done)


def test_a_blob_started_after_the_body_ended_short_fails_at_once():
    body, blobs = _sequence()
    body.arrive(b'[["a", 1], ["b", 1]]\nx')
    body.end()
    result_of(_store(blobs, 1)[1])
    with pytest.raises(MalformedBody):
        result_of(_store(blobs, 1)[1])


def test_a_body_longer_than_its_listing_says_is_malformed():
    body, blobs = _sequence()
    body.arrive(b'[["a", 1]]\nxy')
    result_of(_store(blobs, 1)[1])
    body.end()
    with pytest.raises(MalformedBody, match="longer than its listing"):
        result_of(blobs.ended())
