"""Reads from a streaming replica (issue 12): `--replica-dsn` takes reads off
the primary, an acknowledged blob is never a 404 because the replica lags,
and with the primary down reads go on while writes answer 503."""

import os
import time

import pytest

from tests.helpers import sql
from tests.processes import ServeProcess
from tests.reliability.clients import Client, token_for

pytestmark = pytest.mark.slow


MAX_LAG = 2.0  # --replica-max-lag, the default


def node_with_replica(primary, standby):
    """A node reading from ``standby``, and alice's client of it."""
    token = token_for(primary.dsn, "alice")
    node = ServeProcess("--dsn", primary.dsn, "--replica-dsn", standby.dsn)
    return node, Client(node.url, "alice", token)


def test_reads_go_to_the_replica_and_never_miss_an_acknowledged_blob(replicated):
    primary, standby = replicated
    node, client = node_with_replica(primary, standby)
    try:
        time.sleep(1.5)  # the replica has been checked and found close behind
        written = {}
        for number in range(100):
            written[f"r{number}"] = os.urandom(500 + number)
            assert client.put(f"r{number}", written[f"r{number}"])[0] == 200
            # Read at once: if the replica has not replayed it yet, the primary answers.
            status, _, body = client.get(f"r{number}")
            assert (status, body) == (200, written[f"r{number}"])
        status, _, listing = client.request("GET", "/blobs/alice/")
        assert status == 200 and len(listing) > 2

        # Freeze the replica, then delete a blob on the primary: the replica
        # still serves it (it answers reads), until it is more than
        # --replica-max-lag behind; then the primary answers, 404.
        sql(standby.dsn, "SELECT pg_wal_replay_pause()")
        try:
            assert client.request("DELETE", "/blobs/alice/r0")[0] == 200
            deleted = time.monotonic()
            assert client.get("r0")[0] == 200, "the read did not come from the replica"
            while client.get("r0")[0] != 404:
                assert time.monotonic() - deleted < MAX_LAG + 1 + 1, "served past the bound"
                time.sleep(0.05)
        finally:
            sql(standby.dsn, "SELECT pg_wal_replay_resume()")
    finally:
        node.stop()


def test_with_the_primary_down_reads_go_on_and_writes_answer_503(replicated):
    primary, standby = replicated
    node, client = node_with_replica(primary, standby)
    try:
        written = {f"d{n}": os.urandom(3000 + n) for n in range(20)}
        for blob_id, data in written.items():
            assert client.put(blob_id, data)[0] == 200
        primary._process.kill()
        primary._process.wait()
        deadline = time.monotonic() + 10
        while client.get("d0")[0] != 200:
            assert time.monotonic() < deadline, "reads did not move to the replica"
            time.sleep(0.1)
        for blob_id, data in written.items():
            status, _, body = client.get(blob_id)
            assert (status, body) == (200, data)
        status, headers, _ = client.put("after", b"x")
        assert status == 503 and "Retry-After" in headers
        assert node.process.poll() is None
    finally:
        node.stop()
