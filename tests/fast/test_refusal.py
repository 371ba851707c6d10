"""Connections past a site's max_connections: each is answered one 503 and
closed, whatever it sends, and a flood is one log line per ten seconds."""

from twisted.internet import address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from pgblobs.web.refusal import Refusals
from pgblobs.web.site import Limits
from tests.fast.wire import connect, memory_site


def test_past_max_connections_a_connection_is_answered_503_and_closed():
    site = memory_site(Limits(max_connections=2))
    clock = Clock()
    kept = [connect(site, clock) for _ in range(2)]
    refused = site.buildProtocol(address.IPv4Address("TCP", "127.0.0.1", 1))
    assert refused is not None
    transport = StringTransport()
    refused.makeConnection(transport)
    assert transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 1\r\n" in transport.value()
    assert transport.disconnecting
    assert not any(client.cut for client in kept)
    kept[0].channel.connectionLost(Failure(ConnectionDone()))  # one goes: the next is served
    assert connect(site, clock).answer == b""


def test_a_flood_of_refusals_is_one_log_line_per_ten_seconds():
    clock = Clock()
    refusals = Refusals(now=clock.seconds)
    with capturedLogs() as events:
        for _ in range(3):  # at once: one line
            refusals.refuse(open_connections=5)
        clock.advance(9.9)
        refusals.refuse(open_connections=5)
        assert len(events) == 1 and events[0]["count"] == 1
        clock.advance(0.1)
        refusals.refuse(open_connections=5)
    assert [event["count"] for event in events] == [1, 4]  # the refusals since the last line
