"""Request bodies streamed to resources as they arrive.

twisted.web reads a whole request body (into memory or a temporary file)
before it renders anything. ``StreamingRequest`` starts processing as soon
as the headers are in, and offers the body as ``request.body``, an
``IBodyProducer`` that pauses the connection while its consumer is behind.
So an upload flows from the socket into the database with bounded memory,
and a request that auth, the path or its Content-Length already condemns is
answered before its body is read.
"""

import io
import itertools
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, cast

from twisted.internet import defer
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from pgblobs.errors import TransferStopped
from pgblobs.interfaces import IBodyOnDemand
from pgblobs.transfer import collect
from pgblobs.web.status import BodyTooLarge

if TYPE_CHECKING:
    from pgblobs.web.channel import BlobsChannel

LINGER_SECONDS = 2.0
# Request ids: a random tag per process and a counter, unique across nodes
# and restarts without drawing random bytes for every request.
_PROCESS_TAG = secrets.token_hex(3)
_REQUEST_NUMBERS = itertools.count()


class RateFloor:
    """The least pace of a body the server wants: ``min_bytes`` within every
    ``window`` seconds of wanting it, else ``too_slow(reason)``.

    The stall clock alone lets a client that sends a byte now and then hold
    a database connection for ever. Only time while the body is wanted
    counts: a window stops, without starting over, while the server pauses
    the body (waiting for a connection, or for the database to take what it
    has), so the client is never blamed for the server, and pauses cannot
    be used to escape the floor either.
    """

    def __init__(
        self,
        clock: IReactorTime,
        min_bytes: int,
        window: float,
        too_slow: Callable[[str], None],
    ) -> None:
        self._clock = clock
        self._min_bytes = min_bytes
        self._window = window
        self._too_slow = too_slow
        self._counted = 0  # bytes in the current window
        self._left = window  # wanted seconds left in the current window
        self._since = 0.0  # when the window last ran on
        self._judgement: IDelayedCall | None = None

    def arrived(self, count: int) -> None:
        self._counted += count

    def wanted(self) -> None:
        if self._judgement is None and self._min_bytes > 0:
            self._since = self._clock.seconds()
            self._judgement = self._clock.callLater(self._left, self._judge)

    def not_wanted(self) -> None:
        if self._judgement is not None:
            self._left -= self._clock.seconds() - self._since
            self._judgement.cancel()
            self._judgement = None

    def _judge(self) -> None:
        self._judgement = None
        if self._counted < self._min_bytes:
            self._too_slow(
                f"the request body arrived slower than {self._min_bytes / self._window:g} "
                f"bytes/s ({self._counted} bytes in {self._window:g} s)"
            )
            return
        self._counted, self._left = 0, self._window
        self.wanted()


@implementer(IBodyOnDemand)
class RequestBody:
    """The body of one request, produced into one consumer.

    Bytes that arrive before a consumer is attached are held (the connection
    is paused meanwhile, so that is at most one network read). ``limit``
    bounds the bytes accepted; past it production fails with BodyTooLarge.
    While its consumer wants bytes, they must keep coming: within the
    channel's stall clock, and at the site's rate floor (``RateFloor``).
    """

    WAIT = "sending the body"  # what the channel's stall clock says the request waits for

    def __init__(
        self,
        channel: "BlobsChannel",
        length: int | None,
        on_demand: Callable[[], None] | None = None,
    ) -> None:
        self.length = UNKNOWN_LENGTH if length is None else length
        self.limit: int | None = None
        self.received = 0
        self._channel = channel
        self._transport = cast(IPushProducer, channel.transport)
        self._on_demand = on_demand
        self._held: list[bytes] = []
        self._consumer: IConsumer | None = None
        self._done: defer.Deferred[None] = defer.Deferred()
        self._outcome: Failure | str | None = None  # None while bytes may still come
        limits = channel.site.limits
        self._floor = RateFloor(
            channel.site.reactor,
            int(limits.min_upload_rate * limits.upload_rate_window),
            limits.upload_rate_window,
            channel.cut_slow_body,
        )
        self._transport.pauseProducing()

    # Fed by the request: bytes as they arrive, then the end (None: complete,
    # or the Failure that cut the body short).

    def arrived(self, data: bytes) -> None:
        if self._outcome is not None:
            return
        self.received += len(data)
        self._floor.arrived(len(data))
        self._channel.client_progressed()
        if self._past_limit():
            return
        if self._consumer is None:
            self._held.append(data)
        else:
            self._consumer.write(data)

    def refuse_beyond(self, limit: int) -> None:
        """Accept at most ``limit`` bytes: past them, production fails with
        BodyTooLarge. Bytes may already be held (they came with the headers,
        before the resource chose the limit): they count too."""
        self.limit = limit
        if self.received > limit:
            self._held = []
            if self._outcome is None:
                self._past_limit()
            else:  # complete already, or cut short: refused all the same
                self._outcome = self._too_large()

    def _past_limit(self) -> bool:
        if self.limit is None or self.received <= self.limit:
            return False
        self.end(self._too_large())
        return True

    def _too_large(self) -> Failure:
        return Failure(BodyTooLarge(f"the body is larger than {self.limit} bytes"))

    def end(self, outcome: Failure | None = None) -> None:
        if self._outcome is not None:
            return
        self._outcome = outcome or "complete"
        self._floor.not_wanted()
        self._channel.not_waiting_on_client(self.WAIT)
        if outcome is None:
            # No more body: reading again lets the channel hear a client that
            # leaves (its FIN) while the request waits, a held feed request
            # say; twisted.web buffers what a client pipelines meanwhile, and
            # pauses again past its small buffer.
            self._transport.resumeProducing()
        if self._consumer is not None:
            self._settle()

    def _settle(self) -> None:
        if self._done.called:
            return
        if isinstance(self._outcome, Failure):
            self._done.errback(self._outcome)
        else:
            self._done.callback(None)

    @property
    def sent_on_demand(self) -> bool:
        """Whether the client sends the body only once asked (Expect:
        100-continue): refusing on the headers alone then saves it the upload."""
        return self._on_demand is not None

    # IBodyProducer.

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        if self._consumer is not None:
            raise RuntimeError("a request body can be produced only once")
        self._consumer = consumer
        if self._on_demand is not None:
            self._on_demand()
        held, self._held = self._held, []
        for data in held:
            consumer.write(data)
        if self._outcome is not None:
            self._settle()
        else:
            self.resumeProducing()
        return self._done

    # A consumer that pauses the body waits on the server (the database),
    # not on the client: the stall clock and the rate floor run only while
    # bytes are wanted.

    def pauseProducing(self) -> None:
        self._floor.not_wanted()
        self._channel.not_waiting_on_client(self.WAIT)
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._outcome is None:
            self._floor.wanted()
            self._channel.waiting_on_client(self.WAIT)
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        self.end(Failure(TransferStopped("the body's consumer stopped it")))

    def discard(self) -> None:
        """Let the rest of the body come, and drop it."""
        self.end(Failure(TransferStopped("the body is no longer wanted")))
        self._transport.resumeProducing()

    async def read_all(self, limit: int) -> bytes:
        """The whole body as bytes, refusing more than ``limit`` bytes."""
        if isinstance(self.length, int) and self.length > limit:  # UNKNOWN_LENGTH is a str
            raise BodyTooLarge(f"the body is larger than {limit} bytes")
        self.refuse_beyond(limit)
        return await collect(self)


class StreamingRequest(server.Request):
    """A Request rendered when its headers arrive; its body is ``self.body``."""

    channel: "BlobsChannel"

    gone = False
    body: RequestBody | None = None  # until the headers are in
    route = "other"  # resources name their route, for metrics
    request_id = "-"
    started_at: float | None = None  # monotonic, once the headers are in

    _lingering: IDelayedCall | None = None  # while the rest of a refused body is dropped

    def gotLength(self, length: int | None) -> None:
        self.started_at = time.monotonic()
        self.request_id = f"{_PROCESS_TAG}{next(_REQUEST_NUMBERS):06x}"
        self.setHeader(b"X-Request-Id", self.request_id.encode("ascii"))
        self.channel.site.track(self)
        self.content = io.BytesIO()  # stays empty: resources read self.body
        # "Expect: 100-continue" is answered when a resource asks for the
        # body, not at once as twisted.web would: a request refused on its
        # headers alone then never has its body sent at all.
        on_demand = None
        expect = self.requestHeaders.getRawHeaders(b"expect") or []
        command, path, version = self.channel.request_line
        if version == b"HTTP/1.1" and b"100-continue" in [value.lower() for value in expect]:
            self.requestHeaders.removeHeader(b"expect")
            on_demand = self._send_continue
        self.body = RequestBody(self.channel, length, on_demand)
        self.body_complete = False
        # Render on the next turn, after the channel has sent any
        # "100 Continue" the client waits for.
        self.channel.callLater(0, partial(self._render_early, command, path, version))

    def _send_continue(self) -> None:
        if not self.startedWriting and not self.gone:
            self.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]

    def _render_early(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.channel is None:  # the client left already
            return
        server.Request.requestReceived(self, command, path, version)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body is not None:
            self.body.arrived(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # The channel calls this once the whole body is in; rendering began
        # at gotLength, so all that is left is to tell the body.
        self.body_complete = True
        if self.body is not None:
            self.body.end()
        if self._lingering is not None:
            self._stop_lingering()

    def write(self, data: bytes) -> None:
        if self.gone:
            return
        if not self.startedWriting and not self.body_complete:
            # Answering before the body is read: the connection cannot carry
            # another request, since the rest of this body is still in it.
            self.setHeader(b"Connection", b"close")
            self.channel.persistent = False
        super().write(data)

    @property
    def answered(self) -> bool:
        """The response is complete (perhaps still lingering before the close)."""
        return bool(self.finished) or self._lingering is not None

    def finish(self) -> None:
        if self.body is None or self.body_complete or self.gone or self._lingering is not None:
            return super().finish()
        # Answered before the body was read (and the connection is marked to
        # close). Closing now, with the client still sending, would reset the
        # connection and could destroy the answer in flight; so the rest of
        # the body is read and dropped for a moment first.
        self._lingering = self.channel.callLater(LINGER_SECONDS, self._stop_lingering)
        self.body.discard()  # after: what waited on the body must see the answer as given

    def _stop_lingering(self) -> None:
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        if not self.gone and not self.finished:
            super().finish()

    def connectionLost(self, reason: Failure) -> None:
        self.gone = True
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        super().connectionLost(reason)
        if self.body is not None:
            self.body.end(Failure(TransferStopped("the client went away")))
        if self.producer is not None:
            self.producer.stopProducing()

    def abort(self) -> None:
        """Drop the connection: for a response that cannot be completed honestly."""
        if self.channel is not None and self.channel.transport is not None:
            cast(ITCPTransport, self.channel.transport).abortConnection()
