"""The HTTP connection, with deadlines for clients that keep the server waiting.

Twisted's idle timeout restarts with every byte received and is switched off
once a request is in, for as long as its response takes. That lets a client
trickle its headers forever, or start an upload or a download and then stop,
holding a database connection and a transaction open. ``BlobsChannel``
replaces it, per connection, with two clocks:

- the header deadline: ``header_timeout`` seconds from the moment the
  connection is accepted (or the previous response ended) to the last
  header of the next request, however the bytes trickle in;
- the stall clock: ``idle_timeout`` seconds, running only while the request
  waits on the client (for body bytes its consumer asked for, or for the
  client to read a response the socket cannot take). While the request waits
  on the server, for instance queued for a database connection, no clock runs.

Either one expiring cuts the connection; what the request held is released
by its ``connectionLost``.
"""

from functools import partial
from typing import TYPE_CHECKING, cast

from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http

from pgblobs.web.request import RequestBody
from pgblobs.web.responses import send_error
from pgblobs.web.status import BodyStalled

if TYPE_CHECKING:
    from pgblobs.web.site import BlobsSite

_log = Logger()


class BlobsChannel(http.HTTPChannel):
    """An HTTPChannel with a header deadline and a stall clock (see module)."""

    site: "BlobsSite"  # set by the site that builds the channel
    _header_deadline: IDelayedCall | None = None
    _stall_clock: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.open_channels.add(self)
        self._waiting_for: set[str] = set()
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        self._header_deadline = self.callLater(
            self.site.limits.header_timeout, partial(self._cut, "its headers took too long")
        )

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None

    @property
    def request_line(self) -> tuple[bytes, bytes, bytes]:
        """(method, path, version) of the request whose headers just arrived.
        twisted.web keeps them to itself until the body is in, and requests
        here render before that: this is the one place that reads them."""
        return self._command, self._path, self._version

    def allHeadersReceived(self) -> None:
        self._cancel_header_deadline()
        # From here the stall clock stands in for the idle timeout.
        self.setTimeout(None)
        super().allHeadersReceived()

    def requestDone(self, request: http.Request) -> None:
        # Armed before the channel reads on, since it may parse a pipelined
        # request's headers (and cancel these) at once. The idle timeout
        # also ends a closing connection whose client never reads the end.
        self.setTimeout(self.site.limits.idle_timeout)
        if self.persistent:
            self._arm_header_deadline()
        self._waiting_for.clear()
        self._stop_stall_clock()
        super().requestDone(request)

    # The stall clock.

    def waiting_on_client(self, what: str) -> None:
        """The request cannot go on until the client does ``what``."""
        self._waiting_for.add(what)
        if self._stall_clock is None:
            idle = self.site.limits.idle_timeout
            self._stall_clock = self.callLater(
                idle,
                partial(
                    self._cut,
                    f"it stalled ({what})",
                    f"the request body stopped arriving for {idle:g} s",
                ),
            )

    def client_progressed(self) -> None:
        """The client did something the request waited for: the clock restarts."""
        if self._stall_clock is not None:
            self._stall_clock.reset(self.site.limits.idle_timeout)

    def not_waiting_on_client(self, what: str) -> None:
        self._waiting_for.discard(what)
        if not self._waiting_for:
            self._stop_stall_clock()

    def _stop_stall_clock(self) -> None:
        if self._stall_clock is not None:
            if self._stall_clock.active():
                self._stall_clock.cancel()
            self._stall_clock = None

    # The transport stops taking our bytes when the client stops reading.

    def pauseProducing(self) -> None:
        super().pauseProducing()
        if self.requests:
            self.waiting_on_client("reading the response")

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self.not_waiting_on_client("reading the response")

    def cut_slow_body(self, reason: str) -> None:
        """The body the request waits for comes too slowly (``reason``)."""
        self._cut("its body came too slowly", reason)

    def _cut(self, why: str, body_reason: str | None = None) -> None:
        """Cut the connection for ``why``; a client whose body is awaited is
        answered 408 with ``body_reason`` first, if it can still be told."""
        self._cancel_header_deadline()
        self._stop_stall_clock()
        if self.transport is None:
            return
        transport = cast(ITCPTransport, self.transport)
        _log.info("cutting {peer}: {why}", peer=transport.getPeer(), why=why)
        request = self.requests[-1] if self.requests else None
        if (
            body_reason is not None
            and RequestBody.WAIT in self._waiting_for
            and request is not None
            and not request.startedWriting
        ):
            # The client still reads, so it can be told why (it then goes,
            # once the answer had a moment to reach it).
            send_error(request, Failure(BodyStalled(body_reason)))
            return
        transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.open_channels.discard(self)
        self._cancel_header_deadline()
        self._stop_stall_clock()
        super().connectionLost(reason)
