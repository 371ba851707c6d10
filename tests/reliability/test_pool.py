"""More requests than connections: a bounded queue, then 503; stuck queries time out."""

import select
import socket
import time

import psycopg2
import pytest

from tests.helpers import wait_until
from tests.processes import ServeProcess
from tests.reliability.clients import Client, token_for

pytestmark = pytest.mark.slow


def test_pool_exhaustion_queues_then_refuses(migrated_dsn, dsn):
    node = ServeProcess(
        "--dsn",
        migrated_dsn,
        "--pool-size",
        "1",
        "--max-waiting",
        "3",
        "--quota-bytes",
        "unlimited",
    )
    sockets = []
    try:
        client = Client(node.url, "alice", token_for(dsn, "alice"))
        assert client.put("big", b"b" * (32 * 1024 * 1024))[0] == 200
        baseline = node.rss_kib()
        # Readers that never read: each holds (or waits for) the content connection.
        for _ in range(12):
            held = socket.create_connection(("127.0.0.1", node.port))
            held.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            held.sendall(
                b"GET /blobs/alice/big HTTP/1.1\r\nHost: x\r\nAuthorization: "
                + client.auth.encode()
                + b"\r\n\r\n"
            )
            sockets.append(held)
        # Settled once one reader streams the blob and eight were refused
        # (the other three wait for the connection, and hear nothing).
        wait_until(lambda: len(select.select(sockets, [], [], 0)[0]) >= 9, "settled")
        status, headers, _ = client.get("big")
        assert status == 503 and headers.get("Retry-After")
        # Statements have their own pool: metadata still answers.
        assert client.request("GET", "/blobs/alice/?only_count=True")[0] == 200
        assert node.rss_kib() - baseline < 100 * 1024
        for held in sockets:
            held.close()
        sockets.clear()
        wait_until(lambda: client.get("big")[0] == 200, "back to serving", timeout=20)
    finally:
        for held in sockets:
            held.close()
        assert node.stop() == 0


def test_a_stuck_statement_times_out(migrated_dsn, dsn):
    node = ServeProcess("--dsn", migrated_dsn, "--statement-timeout", "1")
    locker = psycopg2.connect(dsn)
    try:
        client = Client(node.url, "alice", token_for(dsn, "alice"))
        assert client.put("x", b"x")[0] == 200
        with locker.cursor() as cursor:
            cursor.execute("LOCK TABLE pgblobs.blobs IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        status, headers, _ = client.request("GET", "/blobs/alice/")  # reads pgblobs.blobs
        assert status == 503 and headers.get("Retry-After")
        assert time.monotonic() - started < 5
        locker.rollback()
        assert client.request("GET", "/blobs/alice/")[0] == 200
    finally:
        locker.close()
        assert node.stop() == 0
