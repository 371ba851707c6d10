"""The resource trees and Sites, built from a backend, a token check, a
health check and limits: nothing here needs a particular database.

The public site, for users' clients:

    /                 public JSON about the server (Soledad clients read it)
    /health           200 when the database answers, 503 otherwise
    /metrics          Prometheus text format
    /blobs/{user}/... web/blobs.py
    /stream/{user}    web/stream.py
    /changes/{user}   web/changes.py (when the store has a change feed)
    /claim/{user}     web/claims.py (for a store that provides IClaims)
    /uploads/{user}/  web/uploads.py, tus resumable uploads (for a store that
                      provides IUploads)

The services site, for the provider's own services on a local listener:

    /health                    as above
    /incoming/{user}/{blob_id} mail from an MX, web/incoming.py
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.web import http, server
from twisted.web.resource import IResource

from pgblobs import __version__, settings
from pgblobs.interfaces import IBlobStore, IChangeFeed, IClaims, IUploads
from pgblobs.web.auth import Authenticator, TokenCheck
from pgblobs.web.blobs import UserBlobs
from pgblobs.web.changes import UserChanges
from pgblobs.web.channel import BlobsChannel
from pgblobs.web.claims import UserClaims
from pgblobs.web.incoming import UserIncoming
from pgblobs.web.metrics import SiteMetrics
from pgblobs.web.refusal import Refusals
from pgblobs.web.request import StreamingRequest
from pgblobs.web.resources import Context, Handler, Missing, Users, rendered
from pgblobs.web.responses import send, send_json
from pgblobs.web.stream import MAX_STREAMED_SIZE, UserStream
from pgblobs.web.uploads import UserUploads


@dataclass(frozen=True)
class Limits:
    """The HTTP limits of one process; their defaults are settings.py's (see there)."""

    # A stream record gives a blob's size in 8 hex digits: no stored blob may need more.
    max_blob_bytes: int = MAX_STREAMED_SIZE
    max_json_bytes: int = settings.MAX_JSON_BYTES
    max_stream_ids: int = settings.MAX_STREAM_IDS
    idle_timeout: float = settings.IDLE_TIMEOUT
    header_timeout: float = settings.HEADER_TIMEOUT
    min_upload_rate: int = settings.MIN_UPLOAD_RATE
    upload_rate_window: float = settings.UPLOAD_RATE_WINDOW
    # Client connections open at once on the public listeners of one process
    # (each worker has its own), and on its services listeners apart.
    max_connections: int = field(default_factory=settings.max_connections)
    max_services_connections: int = settings.MAX_SERVICES_CONNECTIONS

    def __post_init__(self) -> None:
        if self.max_blob_bytes > MAX_STREAMED_SIZE:
            raise ValueError(
                f"a blob may have at most {MAX_STREAMED_SIZE} bytes "
                "(the most a stream download can carry)"
            )


class _About(Handler):
    route = "root"

    def getChild(self, path: bytes, request: StreamingRequest) -> IResource:
        return super().getChild(path, request) if path else self

    def render_GET(self, request: StreamingRequest) -> int:
        send_json(request, {"name": "pgblobs", "version": __version__, "blobs": True})
        return server.NOT_DONE_YET


class _Health(Handler):
    """200 when ``check()`` succeeds within ``deadline`` seconds, else 503:
    a load balancer hears of a silent database in seconds, whatever the
    statement timeout."""

    isLeaf = True
    route = "health"

    def __init__(
        self,
        check: Callable[[], defer.Deferred[Any]],
        deadline: float = settings.HEALTH_DEADLINE,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self._check = check
        self._deadline = deadline
        self._clock = clock

    @rendered
    async def render_GET(self, request: StreamingRequest) -> None:
        answer: defer.Deferred[object] = defer.Deferred()
        # The check is left to finish (or fail) on its own: cancelling a
        # statement would make txpostgres ask the server, which may be silent.
        defer.maybeDeferred(self._check).chainDeferred(answer)
        timer = self._clock.callLater(self._deadline, answer.cancel)
        try:
            await answer
        except defer.CancelledError:
            send(
                request,
                503,
                f"database unavailable: no answer within {self._deadline:g}s\n".encode(),
            )
            return
        except Exception as error:
            send(request, 503, f"database unavailable: {type(error).__name__}\n".encode())
            return
        finally:
            if timer.active():
                timer.cancel()
        send(request, 200, b"ok\n")


class BlobsSite(server.Site):
    # HTTPFactory's default wraps an HTTPChannel to negotiate HTTP/2; these
    # sites speak HTTP/1.1 through BlobsChannel's deadlines.
    protocol = BlobsChannel  # type: ignore[assignment]
    requestFactory = StreamingRequest

    def __init__(
        self,
        root: IResource,
        metrics: SiteMetrics,
        limits: Limits,
        max_connections: int,
        access_log: bool = False,
        reactor: Any = None,
    ) -> None:
        # ``reactor`` (default: the global one) drives every connection's clocks.
        super().__init__(root, timeout=limits.idle_timeout, reactor=reactor)
        self.limits = limits
        self.access_log = access_log
        self.metrics = metrics
        self.in_flight: set[StreamingRequest] = set()
        self.open_channels: set[BlobsChannel] = set()  # kept by BlobsChannel
        self.max_connections = max_connections
        self._refusals = Refusals()

    # A refused connection gets a plain Protocol, not an HTTP channel.
    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        # Counted here rather than in the channel, so that a refused
        # connection never becomes one; a channel joins open_channels as
        # soon as it is built.
        if len(self.open_channels) >= self.max_connections:
            return self._refusals.refuse(len(self.open_channels))
        return super().buildProtocol(addr)

    def track(self, request: StreamingRequest) -> None:
        """Count ``request`` as in flight until it is finished or abandoned."""
        self.in_flight.add(request)
        request.notifyFinish().addBoth(lambda _: self.in_flight.discard(request))

    def log(self, request: http.Request) -> None:
        # A line per request through the logger costs about a sixth of a
        # small GET's CPU (measured under wrk): off unless asked for, since
        # /metrics counts requests anyway.
        if self.access_log:
            super().log(request)
        self.metrics.record(cast(StreamingRequest, request))  # this site's requestFactory


def build_site(
    store: IBlobStore,
    token_is_valid: TokenCheck,
    health: Callable[[], defer.Deferred[Any]],
    limits: Limits = Limits(),
    pool_usage: Callable[[], dict[str, int]] | None = None,
    access_log: bool = False,
) -> BlobsSite:
    """The public Site serving ``store`` (any IBlobStore).

    ``token_is_valid(user, token)`` is a coroutine function (users' tokens),
    ``health()`` returns a Deferred that fails while the store cannot
    answer, and ``pool_usage()`` (optional) the connections in use, for
    /metrics. ``access_log``: log a line per request.
    """
    context = Context(store, Authenticator(token_is_valid), limits)
    metrics = SiteMetrics(pool_usage)
    root = _About()
    root.putChild(b"blobs", Users(context, UserBlobs))
    root.putChild(b"stream", Users(context, UserStream))
    if IChangeFeed.providedBy(store):
        root.putChild(b"changes", Users(context, UserChanges))
        metrics.held_changes(lambda: cast(IChangeFeed, store).held_changes)
    if IClaims.providedBy(store):
        root.putChild(b"claim", Users(context, UserClaims))
    if IUploads.providedBy(store):
        root.putChild(b"uploads", Users(context, UserUploads))
    root.putChild(b"health", _Health(health))
    root.putChild(b"metrics", metrics.resource())
    return BlobsSite(root, metrics, limits, limits.max_connections, access_log)


def build_services_site(
    store: IBlobStore,
    token_is_valid: TokenCheck,
    health: Callable[[], defer.Deferred[Any]],
    limits: Limits = Limits(),
    metrics: SiteMetrics | None = None,
    access_log: bool = False,
) -> BlobsSite:
    """The services Site: only tokens that ``token_is_valid(service, token)``
    accepts (services', never users') open it, and it serves only deliveries
    and health. Its requests count in ``metrics`` (give the public site's,
    so one /metrics shows both; default: metrics of its own)."""
    context = Context(store, Authenticator(token_is_valid), limits)
    root = _ServicesRoot()
    root.putChild(b"incoming", Users(context, UserIncoming))
    root.putChild(b"health", _Health(health))
    return BlobsSite(
        root, metrics or SiteMetrics(), limits, limits.max_services_connections, access_log
    )


class _ServicesRoot(Handler):
    def getChild(self, path: bytes, request: StreamingRequest) -> IResource:
        return Missing()

    def render(self, request: StreamingRequest) -> int | bytes:
        return Missing().render(request)
