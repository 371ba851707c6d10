"""A database link that goes silent (issue 17, item 13): requests answer 503,
not hang, and the node serves again once the link is back."""

import os
import signal
import socket
import stat
import time

import pytest
from psycopg2.extensions import parse_dsn

from pgblobs import settings
from pgblobs.tokens import KnownTokens
from tests.helpers import create_token, deferred_test, pgblobs_cli
from tests.processes import ServeProcess
from tests.reliability.clients import Client
from tests.reliability.relay import Relay
from tests.test_tokens import listener_backend

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


def test_health_says_503_within_seconds_whatever_the_statement_timeout(dsn):
    with Relay.to(dsn) as relay:
        node = ServeProcess("--dsn", relay.dsn(dsn), "--statement-timeout", "600")
        try:
            client = Client(node.url, "alice", "no token needed", timeout=60)
            assert client.request("GET", "/health")[0] == 200
            relay.silence()
            try:
                status, _, body, seconds = timed(client.request, "GET", "/health")
            finally:
                relay.resume()
            assert status == 503, (status, body, f"{seconds:.1f}s")
            assert seconds < ANSWERED_WITHIN
        finally:
            assert node.stop() == 0


def test_a_revocation_counts_while_the_token_listener_is_stuck(dsn):
    # Remembering for an hour: the listener's liveness check alone must do.
    node = ServeProcess("--dsn", dsn, "--token-cache-seconds", "3600")
    try:
        client = Client(node.url, "alice", create_token(dsn, "alice"))
        assert client.put("blob", b"alice's")[0] == 200
        assert client.get("blob")[0] == 200
        stuck = listener_backend(dsn)
        os.kill(stuck, signal.SIGSTOP)
        try:
            done = pgblobs_cli("token", "revoke", "alice", "--dsn", dsn)
            assert done.returncode == 0, done.stderr
            deadline = time.monotonic() + ANSWERED_WITHIN
            while client.get("blob")[0] != 401:
                assert time.monotonic() < deadline, "the revoked token still works"
                time.sleep(0.1)
        finally:
            os.kill(stuck, signal.SIGCONT)
    finally:
        assert node.stop() == 0


def keepalive_options(fd):
    with socket.socket(fileno=os.dup(fd)) as connection:
        return (
            connection.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        )


def sockets_to(port):
    """The descriptors of this process's TCP connections to ``port``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as probe:
                inet = probe.family in (socket.AF_INET, socket.AF_INET6)
                if inet and probe.getpeername()[1] == port:
                    found.append(fd)
        except OSError:
            continue  # closed meanwhile, or not connected
    return found


@deferred_test
async def test_every_connection_to_postgresql_has_keepalives(backend, dsn):
    tokens = KnownTokens(backend.database)
    await tokens.start()
    try:
        await backend.database.in_thread(lambda connection: connection.fetch("ping"), owner="a")
        connections = sockets_to(int(parse_dsn(dsn)["port"]))
        # The statement pool (4), a content connection, the listener.
        assert len(connections) >= 6
        expected = (
            1,
            settings.KEEPALIVES_IDLE,
            settings.KEEPALIVES_INTERVAL,
            settings.KEEPALIVES_COUNT,
            settings.TCP_USER_TIMEOUT * 1000,
        )
        assert [keepalive_options(fd) for fd in connections] == [expected] * len(connections)
    finally:
        tokens.stop()
