"""A database link that goes silent (issue 17, item 13): requests answer 503,
not hang, and the node serves again once the link is back."""

import time

import pytest

from tests.helpers import create_token
from tests.processes import ServeProcess
from tests.reliability.clients import Client
from tests.reliability.relay import Relay

pytestmark = pytest.mark.slow

# Far beyond the node's deadlines (statement: 2 s + margin; /health: its own,
# a few seconds), far below the client's patience: a hung request exceeds it.
ANSWERED_WITHIN = 20.0


def timed(request, *args):
    started = time.monotonic()
    status, headers, body = request(*args)
    return status, headers, body, time.monotonic() - started


def test_a_silent_link_costs_503s_not_hangs(dsn):
    with Relay.to(dsn) as relay:
        node = ServeProcess("--dsn", relay.dsn(dsn), "--statement-timeout", "2")
        try:
            client = Client(node.url, "alice", create_token(dsn, "alice"), timeout=60)
            assert client.put("before", b"stored before the silence")[0] == 200
            assert client.get("before")[0] == 200  # the token is remembered now

            relay.silence()
            try:
                for request, args in (
                    (client.get, ("before",)),
                    (client.put, ("during", b"written while the link is silent")),
                    (client.request, ("GET", "/health")),
                    (client.request, ("GET", "/blobs/alice/?only_count=True")),
                ):
                    status, headers, body, seconds = timed(request, *args)
                    assert status == 503, (request, args, status, body, f"{seconds:.1f}s")
                    assert seconds < ANSWERED_WITHIN
                    if args[0] != "GET" or args[1] != "/health":
                        assert "Retry-After" in headers, (args, headers)
            finally:
                relay.resume()

            deadline = time.monotonic() + 30
            while client.get("before")[0] != 200:
                assert time.monotonic() < deadline, "the node never served again"
                time.sleep(0.1)
            assert client.request("GET", "/health")[0] == 200
            assert client.put("after", b"written after the link came back")[0] == 200
        finally:
            assert node.stop() == 0
