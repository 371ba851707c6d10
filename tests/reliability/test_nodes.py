"""Two `pgblobs serve` nodes on one database: kills, races and deletes mid-read."""

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import pgblobs_cli, sql, wait_until
from tests.processes import ServeProcess
from tests.reliability.clients import Client, token_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes(migrated_dsn):
    started = [ServeProcess("--dsn", migrated_dsn), ServeProcess("--dsn", migrated_dsn)]
    yield started
    for node in started:
        node.stop()


def clients(nodes, dsn, user="alice"):
    token = token_for(dsn, user)
    return [Client(node.url, user, token) for node in nodes]


def open_transactions(dsn):
    """Transactions open in the database, but the one asking."""
    return sql(
        dsn,
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()",
    )[0][0]


def wait_for_no_transactions(dsn, seconds=20):
    wait_until(lambda: open_transactions(dsn) == 0, "without open transactions", seconds)


def test_a_node_killed_mid_upload_leaves_nothing(migrated_dsn, dsn):
    victim = ServeProcess("--dsn", migrated_dsn)
    survivor = ServeProcess("--dsn", migrated_dsn)
    try:
        token = token_for(dsn, "alice")
        auth = Client(victim.url, "alice", token).auth.encode()
        upload = socket.create_connection(("127.0.0.1", victim.port))
        upload.sendall(
            b"PUT /blobs/alice/cut HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + auth
            + b"\r\nContent-Length: 50000000\r\n\r\n"
        )
        for _ in range(40):
            upload.sendall(b"k" * 250_000)
        # Mid upload: its transaction is writing the large object.
        wait_until(lambda: open_transactions(dsn) > 0, "uploading")
        victim.stop(signal.SIGKILL)
        upload.close()
        wait_for_no_transactions(dsn)
        assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs") == [(0,)]
        assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata") == [(0,)]
        other = Client(survivor.url, "alice", token)
        assert other.put("cut", b"written again")[0] == 200
        status, _, body = other.get("cut")
        assert (status, body) == (200, b"written again")
    finally:
        victim.stop()
        survivor.stop()


def test_concurrent_writes_of_one_id_on_two_nodes(nodes, dsn):
    a, b = clients(nodes, dsn)
    with ThreadPoolExecutor(10) as pool:
        results = list(
            pool.map(lambda i: (a if i % 2 else b).put("contended", b"v%d" % i * 9000), range(10))
        )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] + [409] * 9
    winner = next(i for i, r in enumerate(results) if r[0] == 200)
    assert a.get("contended")[2] == b"v%d" % winner * 9000


def test_concurrent_writes_near_the_quota_on_two_nodes(nodes, dsn):
    sql(dsn, "INSERT INTO pgblobs.quotas VALUES ('alice', 1000000)")
    a, b = clients(nodes, dsn)
    with ThreadPoolExecutor(12) as pool:
        results = list(
            pool.map(lambda i: (a if i % 2 else b).put(f"q{i}", bytes([i]) * 300_000), range(12))
        )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 3 + [507] * 9
    used = sql(dsn, "SELECT sum(size) FROM pgblobs.blobs WHERE deleted_at IS NULL")[0][0]
    assert used <= 1_000_000


def test_delete_racing_a_read_gives_all_or_404(nodes, dsn):
    a, b = clients(nodes, dsn)
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB
    outcomes = []
    with ThreadPoolExecutor(1) as reader:
        for attempt in range(6):
            blob_id = f"racy{attempt}"
            assert a.put(blob_id, data)[0] == 200
            reading = reader.submit(a.get, blob_id)
            time.sleep(0.02 * attempt)  # the scenario: the delete later into each read
            assert b.request("DELETE", f"/blobs/alice/{blob_id}")[0] == 200
            status, _, body = reading.result(60)
            outcomes.append(status)
            assert (status, body) == (200, data) or (
                status == 404 and body.startswith(b"no such blob")
            ), (status, body[:80])
    print("read outcomes", outcomes)


def test_a_revoked_token_is_refused_by_every_node_within_a_second(nodes, dsn):
    carol = clients(nodes, dsn, user="carol")
    assert carol[0].put("note", b"hello")[0] == 200
    for client in carol:  # each node now knows the token
        assert client.get("note")[0] == 200
    done = pgblobs_cli("token", "revoke", "carol", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    revoked = time.monotonic()
    for client in carol:
        while client.get("note")[0] != 401:
            assert time.monotonic() - revoked < 1.0, "a node still accepts a revoked token"
            time.sleep(0.01)
