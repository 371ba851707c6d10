"""Failover (issue 12): a primary and a synchronous streaming standby made
with pg_basebackup -R, two `pgblobs serve` nodes on libpq's multi-host DSN,
a steady write load; the primary is SIGKILLed and the standby promoted with
pg_ctl, as a failover manager would. The nodes find the new primary by
themselves and nothing acknowledged is lost."""

import json
import os
import threading
import time

import pytest

from pgblobs.cluster import find_program
from tests.helpers import wait_until
from tests.processes import ServeProcess
from tests.reliability.clients import Client, token_for
from tests.reliability.conftest import as_postgres

pytestmark = pytest.mark.slow


def multi_host(primary, standby):
    return (
        f"host={primary.socket_dir},{standby.socket_dir} port={primary.PORT},{standby.PORT} "
        "user=postgres dbname=pgblobs target_session_attrs=read-write"
    )


def test_killing_the_primary_and_promoting_the_standby_loses_nothing(replicated):
    primary, standby = replicated
    dsn = multi_host(primary, standby)
    token = token_for(dsn, "alice")
    nodes = [ServeProcess("--dsn", dsn), ServeProcess("--dsn", dsn)]
    acknowledged, answers = {}, []
    stop = threading.Event()

    def write_steadily(node_index):
        client = Client(nodes[node_index].url, "alice", token, timeout=10)
        number = 0
        while not stop.is_set():
            blob_id = f"n{node_index}-{number}"
            data = os.urandom(2000 + number % 5000)
            status, headers, _ = client.put(blob_id, data)
            answers.append((time.monotonic(), status, headers))
            if status == 200:
                acknowledged[blob_id] = data
            number += 1
            time.sleep(0.005)  # the pace of the load, not a wait for anything

    writers = [threading.Thread(target=write_steadily, args=(i,)) for i in (0, 1)]
    try:
        for writer in writers:
            writer.start()
        wait_until(lambda: len(acknowledged) > 20, "writing steadily")
        primary._process.kill()  # SIGKILL the postmaster
        primary._process.wait()
        killed = time.monotonic()
        wait_until(
            lambda: any(t > killed and status != 200 for t, status, _ in answers),
            "refusing writes without a primary",
        )
        as_postgres(find_program("pg_ctl"), "promote", "-w", "-D", str(standby.data))
        promoted = time.monotonic()
        wait_until(
            lambda: any(t > promoted and status == 200 for t, status, _ in answers),
            "writing after the promotion",
            timeout=10,
        )
        recovered = min(t for t, status, _ in answers if t > promoted and status == 200)
        print(f"first write {recovered - promoted:.2f} s after the promotion")
        written = len(acknowledged)
        wait_until(lambda: len(acknowledged) > written + 20, "writing steadily again")
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)
    try:
        for node in nodes:
            assert node.process.poll() is None, "a node exited"
        failures = [(status, headers) for _, status, headers in answers if status != 200]
        # Whatever failed said so as a 503 with Retry-After (or the
        # connection was cut while its request was in flight).
        for status, headers in failures:
            assert status in (0, 503), status
            if status == 503:
                assert "Retry-After" in headers
        reader = Client(nodes[0].url, "alice", token)
        for blob_id, data in acknowledged.items():
            status, _, body = reader.get(blob_id)
            assert (status, body) == (200, data), blob_id
        print(f"{len(acknowledged)} acknowledged, {len(failures)} refused during the failover")
    finally:
        for node in nodes:
            node.stop()


def test_feed_cursors_stay_valid_across_a_failover(replicated):
    """A cursor handed out by the old primary goes on, on the promoted
    standby, to exactly the changes made there: change numbers never go back
    (a sequence's values are in the WAL ahead of their use)."""
    primary, standby = replicated
    dsn = multi_host(primary, standby)
    token = token_for(dsn, "alice")
    node = ServeProcess("--dsn", dsn)
    try:
        client = Client(node.url, "alice", token, timeout=10)
        for i in range(5):
            assert client.put(f"before-{i}", os.urandom(100))[0] == 200
        status, _, body = client.request("GET", "/changes/alice")
        assert status == 200
        cursor = json.loads(body)["cursor"]
        primary._process.kill()
        primary._process.wait()
        as_postgres(find_program("pg_ctl"), "promote", "-w", "-D", str(standby.data))
        wait_until(lambda: client.put("after-0", b"on the new primary")[0] == 200, "writing")
        assert client.put("after-1", b"and again")[0] == 200
        status, _, body = client.request("GET", f"/changes/alice?since={cursor}")
        assert status == 200, body
        assert [c["id"] for c in json.loads(body)["changes"]] == ["after-0", "after-1"]
    finally:
        assert node.stop() == 0
        primary.stop()
