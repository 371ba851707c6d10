"""HTTP on a fake clock and an in-memory transport: a site's connections
without a socket, PostgreSQL or a real second (twisted's own way of testing
timeouts: a ``Clock`` and a ``StringTransport``)."""

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet import address, defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from pgblobs import MemoryBlobsBackend
from pgblobs.web.channel import BlobsChannel
from pgblobs.web.metrics import SiteMetrics
from pgblobs.web.site import BlobsSite, Limits, build_site
from tests.helpers import token_header

_T = TypeVar("_T")
TOKEN = "secret"  # alice's, and only hers
ALICE = b"Authorization: " + token_header("alice", TOKEN).encode()


async def alice_only(user: str, token: str) -> bool:
    return (user, token) == ("alice", TOKEN)


@dataclass
class Connection:
    """One client connection to a site: what it was sent, and the clock."""

    clock: Clock
    channel: BlobsChannel
    transport: StringTransport

    def send(self, data: bytes) -> None:
        """The client sends ``data``; what it triggers for this turn runs."""
        self.channel.dataReceived(data)
        self.clock.advance(0)  # a request renders on the turn after its headers

    @property
    def answer(self) -> bytes:
        return self.transport.value()

    @property
    def status(self) -> int | None:
        """The status of the first answer, once its status line is out."""
        answer = self.answer
        if not answer.startswith(b"HTTP/1.1 "):
            return None
        return int(answer.split(b" ", 2)[1])

    @property
    def cut(self) -> bool:
        """Whether the server closed the connection (or aborted it)."""
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        """Whether the server aborted the connection, unsent bytes and all
        (StringTransport's abortConnection says so as ``disconnected``)."""
        return bool(self.transport.disconnected)


def connect(site: BlobsSite, clock: Clock) -> Connection:
    """A new connection to ``site``, whose clocks run on ``clock``."""
    # HTTPFactory gives every channel it builds its reactor's callLater.
    site.reactor = clock
    channel = site.buildProtocol(address.IPv4Address("TCP", "127.0.0.1", 1234))
    assert isinstance(channel, BlobsChannel)
    transport = StringTransport()
    channel.makeConnection(transport)
    return Connection(clock, channel, transport)


def site_of(root: Resource, limits: Limits) -> BlobsSite:
    """A site serving ``root`` through pgblobs' channel and request."""
    return BlobsSite(root, SiteMetrics(), limits, limits.max_connections)


def memory_site(
    limits: Limits = Limits(),
    backend: MemoryBlobsBackend | None = None,
    token_is_valid: Callable[[str, str], Awaitable[bool]] = alice_only,
) -> BlobsSite:
    """The public site over an in-memory backend, where only alice's token is valid."""
    return build_site(
        backend or MemoryBlobsBackend(), token_is_valid, lambda: defer.succeed(None), limits
    )


def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    """The bytes of an HTTP/1.1 request of alice's."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: x", ALICE]
    lines += [header.encode() for header in headers]
    if body and not any(header.lower().startswith("content-length") for header in headers):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def result_of(work: "defer.Deferred[_T] | Coroutine[Any, Any, _T]") -> _T:
    """The outcome of ``work`` that has nothing to wait for (the memory backend's)."""
    outcomes: list[_T | Failure] = []
    defer.ensureDeferred(work).addBoth(outcomes.append)
    assert outcomes, f"{work!r} is still waiting"
    if isinstance(outcomes[0], Failure):
        outcomes[0].raiseException()
    return outcomes[0]
