"""Blob content crossing from the reactor to worker threads and back, with
backpressure, and what is worked out of it on the way (size, sha256, tag).
No SQL here: the workers' side is pgblobs/db/largeobjects.py.

Content is moved by worker threads on synchronous connections (see
db/sync.py). The reactor side of each direction is a small adapter:

- ``UploadPipe`` is the consumer a body producer writes into. It buffers a
  bounded number of bytes for the worker and pauses the producer above a
  high-water mark, resuming it once the worker has drained the buffer.
- ``DownloadPush`` is the push producer registered on a consumer. The worker
  hands it chunks; it forwards them on the reactor thread, at most a couple
  in flight, and blocks the worker while the consumer is paused.

Small blobs skip the threads: the backend gathers one (``gather_small``)
and stores it with one asynchronous statement.
"""

import base64
import hashlib
import threading
from collections import deque
from typing import Any, cast

from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from pgblobs.errors import TransferStopped

CHUNK = 1024 * 1024  # bytes a worker reads or writes at a time
_TAG_BYTES = 16
_WAIT = 1.0  # seconds between checks for a stopped transfer while blocked


def tag_of(tail: bytes) -> str:
    """The tag of content ending in ``tail``: urlsafe base64 of its last 16
    bytes (the AES-GCM tag of Soledad blobs)."""
    return base64.urlsafe_b64encode(tail[-_TAG_BYTES:]).decode("ascii")


class ContentDigest:
    """Size, sha256 and tag of content seen chunk by chunk; ``carried`` goes
    on from the sha256 of content seen before (a resumed upload's)."""

    def __init__(self, carried: "hashlib._Hash | None" = None) -> None:
        self.size = 0
        self._sha256 = carried or hashlib.sha256()
        self._tail = b""

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._sha256.update(chunk)
        self._tail = (self._tail + bytes(chunk[-_TAG_BYTES:]))[-_TAG_BYTES:]

    @property
    def sha256(self) -> bytes:
        return self._sha256.digest()

    def sha256_state(self) -> "hashlib._Hash":
        """A copy of the sha256 so far, to go on from later."""
        return self._sha256.copy()

    @property
    def tag(self) -> str:
        return tag_of(self._tail)


@implementer(IConsumer)
class UploadPipe:
    """Carries a producer's bytes to a worker thread, pausing the producer
    while more than ``HIGH_WATER`` bytes wait.

    The producer is started only once a worker (and so a connection) has
    taken the upload on: an upload queued for a connection buffers nothing.
    When the producer fails, the worker hears it at once, unless
    ``keeps_arrived``: then it is given what had arrived first (a resumable
    upload keeps every byte that reached it).
    """

    HIGH_WATER = 4 * CHUNK
    LOW_WATER = CHUNK

    def __init__(
        self,
        reactor: Any,
        producer: IBodyProducer,
        digest: ContentDigest | None = None,
        keeps_arrived: bool = False,
    ) -> None:
        self._reactor = reactor
        self._ready = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._ended = False
        self.error: Failure | None = None
        self._keeps_arrived = keeps_arrived
        self.begun = False  # touched on the worker thread only: bytes were asked for
        self._paused = False  # touched on the reactor thread only
        self._started = False
        self._source = producer
        # What pause and resume go to: the source, unless another producer registers.
        self.producer: IPushProducer | None = producer
        # Hashed here on the reactor thread, which is otherwise idle during
        # an upload: sha256 then overlaps the worker's database writes.
        self.digest = digest or ContentDigest()

    def _start(self) -> None:
        if self._ended:
            return
        self._started = True
        produced = self._source.startProducing(self)
        produced.addCallbacks(self.finish, self.abort)

    def stop_producer(self) -> None:
        """Stop a producer whose bytes are no longer wanted."""
        if self._started:
            self._source.stopProducing()

    # Reactor side.

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if not streaming:
            raise TypeError("an upload is fed by push producers only")
        self.producer = cast(IPushProducer, producer)

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        with self._ready:
            if self._ended:
                return
            self.digest.update(data)
            self._chunks.append(data)
            self._buffered += len(data)
            over = self._buffered >= self.HIGH_WATER
            self._ready.notify()
        if over and not self._paused and self.producer is not None:
            self._paused = True
            self.producer.pauseProducing()

    def finish(self, _: object = None) -> None:
        """The producer is done: what is buffered is the whole content."""
        with self._ready:
            self._ended = True
            self._ready.notify()

    def abort(self, reason: Failure) -> None:
        """The producer failed (``reason``, a Failure) or we gave up: the worker must stop."""
        with self._ready:
            self._ended = True
            if self.error is None:
                self.error = reason
            if not self._keeps_arrived:
                self._chunks.clear()
            self._ready.notify()

    def _drained(self) -> None:
        if self._paused and not self._ended and self.producer is not None:
            self._paused = False
            self.producer.resumeProducing()

    # Worker side.

    def begin(self) -> None:
        """The worker has its connection: let the bytes come."""
        self.begun = True
        self._reactor.callFromThread(self._start)

    def read(self, limit: int = CHUNK) -> bytes:
        """Up to ``limit`` bytes, blocking for some; b"" at the end."""
        with self._ready:
            while not self._chunks and not self._ended:
                self._ready.wait()
            if self.error is not None and not self._chunks:
                raise TransferStopped("the upload was aborted")
            parts, taken = [], 0
            while self._chunks and taken < limit:
                part = self._chunks.popleft()
                if taken + len(part) > limit:
                    self._chunks.appendleft(part[limit - taken :])
                    part = part[: limit - taken]
                parts.append(part)
                taken += len(part)
            self._buffered -= taken
            low = self._buffered <= self.LOW_WATER
        if low:
            self._reactor.callFromThread(self._drained)
        return b"".join(parts)


def give_up(pipes: list[UploadPipe]) -> None:
    """Stop the uploads of a failed write; raise the producer's own error
    if one failed first, since its reason is the real one."""
    for pipe in pipes:
        if pipe.error is not None:
            pipe.error.raiseException()
    for pipe in pipes:
        pipe.abort(Failure(TransferStopped("the blob could not be stored")))
        pipe.stop_producer()


@implementer(IPushProducer)
class DownloadPush:
    """Forwards a worker's chunks to a consumer on the reactor thread."""

    IN_FLIGHT = 2

    def __init__(self, reactor: Any, consumer: IConsumer) -> None:
        self._reactor = reactor
        self._consumer = consumer
        self._resumed = threading.Event()
        self._resumed.set()
        self._slots = threading.Semaphore(self.IN_FLIGHT)
        self.stopped = False
        self.delivered = 0  # chunks handed over; touched by the worker only

    # Reactor side (IPushProducer).

    def pauseProducing(self) -> None:
        self._resumed.clear()

    def resumeProducing(self) -> None:
        self._resumed.set()

    def stopProducing(self) -> None:
        self.stopped = True
        self._resumed.set()

    def _write(self, chunk: bytes) -> None:
        try:
            if not self.stopped:
                self._consumer.write(chunk)
        finally:
            self._slots.release()

    # Worker side.

    def _check_stopped(self) -> None:
        if self.stopped:
            raise TransferStopped("the consumer stopped the download")

    def deliver(self, chunk: bytes) -> None:
        while not self._slots.acquire(timeout=_WAIT):
            self._check_stopped()
        while not self._resumed.wait(timeout=_WAIT):
            self._check_stopped()
        if self.stopped:
            self._slots.release()
            self._check_stopped()
        self.delivered += 1
        self._reactor.callFromThread(self._write, chunk)


class _Collected:
    """A consumer keeping what it is given."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)


async def collect(producer: IBodyProducer) -> bytes:
    """The whole output of an IBodyProducer, as bytes (for bodies known to be small)."""
    collected = _Collected()
    await producer.startProducing(collected)
    return b"".join(collected.parts)


async def gather_small(producer: IBodyProducer) -> tuple[bytes, ContentDigest]:
    """The whole body of a producer already known to be small, and its digest."""
    content = await collect(producer)
    digest = ContentDigest()
    digest.update(content)
    return content, digest


@implementer(IConsumer)
class _Digesting:
    """A consumer keeping nothing but the digest of what it is given, its
    first ``skip`` bytes left out."""

    def __init__(self, skip: int) -> None:
        self.digest = ContentDigest()
        self._skip = skip

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        pass  # nothing is held, so nothing is ever paused

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        skipped = min(self._skip, len(data))
        self._skip -= skipped
        self.digest.update(data[skipped:])


async def digest_of(producer: IBodyProducer, head: bytes = b"", skip: int = 0) -> ContentDigest:
    """The digest of ``head`` followed by what ``producer`` produces after its
    first ``skip`` bytes; the bytes are read and dropped, never stored."""
    digesting = _Digesting(skip)
    digesting.digest.update(head)
    await producer.startProducing(digesting)
    return digesting.digest
