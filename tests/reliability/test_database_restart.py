"""PostgreSQL restarted (fast shutdown) under load, and unreachable at start."""

import collections
import contextlib
import subprocess
import threading
import time

import pytest

from pgblobs.cluster import LocalCluster
from pgblobs.db import schema
from tests.helpers import pgblobs_command, wait_until
from tests.processes import ServeProcess, free_port
from tests.reliability.clients import Client, token_for

pytestmark = pytest.mark.slow


def load(client, prefix, stop, stored, statuses, retry_after):
    number = 0
    while not stop.is_set():
        number += 1
        data = f"{prefix}-{number}-".encode() * (50 + number % 2000)
        status, headers, _ = client.put(f"{prefix}-{number}", data)
        statuses[status] += 1
        if status == 200:
            stored[f"{prefix}-{number}"] = data
        elif status == 503:
            retry_after.append(headers.get("Retry-After"))
        status, headers, _ = client.request("GET", f"/blobs/{client.user}/?only_count=True")
        statuses[status] += 1
        if status == 503:
            retry_after.append(headers.get("Retry-After"))


def wait_healthy(client, seconds):
    """Until the node says it is healthy; the moment it did."""
    wait_until(lambda: client.request("GET", "/health")[0] == 200, "healthy", seconds)
    return time.monotonic()


@contextlib.contextmanager
def node_on_own_cluster(directory, *options):
    """A PostgreSQL of the test's own (to stop and start) and a node using it;
    (cluster, node, alice's client)."""
    cluster = LocalCluster(directory)
    cluster.start()
    node = None
    try:
        schema.upgrade(cluster.dsn)
        token = token_for(cluster.dsn, "alice")
        node = ServeProcess("--dsn", cluster.dsn, "--quota-bytes", "unlimited", *options)
        yield cluster, node, Client(node.url, "alice", token)
        assert node.process.poll() is None, "the server must stay up"
    finally:
        if node is not None:
            assert node.stop() == 0
        cluster.stop()


def test_a_restart_costs_503s_for_seconds_and_loses_nothing(open_tmp):
    with node_on_own_cluster(open_tmp / "pg") as (cluster, _node, client):
        stop, stored = threading.Event(), {}
        statuses, retry_after = collections.Counter(), []
        workers = [
            threading.Thread(
                target=load, args=(client, f"w{i}", stop, stored, statuses, retry_after)
            )
            for i in range(4)
        ]
        for worker in workers:
            worker.start()
        wait_until(lambda: len(stored) > 20, "storing under load")
        cluster.stop()  # fast shutdown, as `pg_ctl -m fast`
        wait_until(lambda: client.request("GET", "/health")[0] == 503, "unhealthy")
        down = client.request("GET", "/blobs/alice/?only_count=True")
        assert down[0] == 503 and down[1].get("Retry-After")
        assert client.request("GET", "/health")[0] == 503
        cluster.start()
        restarted = time.monotonic()
        recovered = wait_healthy(client, 20)
        since = len(stored)
        wait_until(lambda: len(stored) > since + 20, "storing again")
        stop.set()
        for worker in workers:
            worker.join(60)
        print(f"statuses {dict(statuses)}; healthy {recovered - restarted:.1f}s after restart")
        assert set(statuses) <= {200, 503}, statuses
        assert all(retry_after)
        assert statuses[200] > 0
        assert client.put("after-restart", b"fine")[0] == 200
        for blob_id, data in stored.items():
            status, _, body = client.get(blob_id)
            assert (status, body) == (200, data), blob_id


def test_a_database_unreachable_at_start_is_waited_for(open_tmp):
    cluster = LocalCluster(open_tmp / "pg")
    cluster.start()
    schema.upgrade(cluster.dsn)
    token = token_for(cluster.dsn, "alice")
    cluster.stop()
    starting = threading.Thread(target=cluster.start)
    try:
        port = free_port()
        process = subprocess.Popen(
            pgblobs_command(
                "serve", "--dsn", cluster.dsn, "--listen", f"tcp:{port}:interface=127.0.0.1"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)  # the scenario: a while with no database, through which it waits
        assert process.poll() is None, "it must wait, not exit"
        starting.start()
        starting.join()
        client = Client(f"http://127.0.0.1:{port}", "alice", token)
        wait_healthy(client, 40)
        assert client.put("late", b"x")[0] == 200
        process.terminate()
        _, errors = process.communicate(timeout=60)
        assert process.returncode == 0
        assert "database unreachable" in errors and "retrying" in errors
    finally:
        cluster.stop()


def test_after_an_outage_the_first_success_is_followed_by_no_503(open_tmp):
    """PostgreSQL down 5 s under load: once one request got through again,
    every pooled connection is checked or replaced, and none fails another."""
    with node_on_own_cluster(open_tmp / "pg", "--pool-size", "4") as (cluster, _node, client):
        large = b"L" * (2 * 1024 * 1024)
        assert client.put("large", large)[0] == 200
        assert client.put("small", b"s" * 1000)[0] == 200
        stop, answers = threading.Event(), []

        def requests(worker):
            number = 0
            while not stop.is_set():
                number += 1
                for method, path, body in (
                    ("GET", "/blobs/alice/large", None),
                    ("GET", "/blobs/alice/small", None),
                    ("GET", "/blobs/alice/?only_count=True", None),
                    ("PUT", f"/blobs/alice/w{worker}-{number}", b"x" * 500),
                ):
                    started = time.monotonic()
                    status, _, _ = client.request(method, path, body=body)
                    answers.append((started, time.monotonic(), method, path, status))

        workers = [threading.Thread(target=requests, args=(i,)) for i in range(4)]
        for worker in workers:
            worker.start()
        wait_until(lambda: len(answers) > 20, "answering under load")
        cluster.stop()
        time.sleep(5)  # the scenario: the database down for a while, then back for a while
        cluster.start()
        restarted = time.monotonic()
        time.sleep(6)
        stop.set()
        for worker in workers:
            worker.join(60)
        first_success = min(
            ended
            for started, ended, _, _, status in answers
            if started > restarted and status == 200
        )
        after = [
            (method, path, status)
            for started, _, method, path, status in answers
            if started > first_success
        ]
        print(
            f"first 200 {first_success - restarted:.2f}s after the restart; "
            f"{len(after)} requests after it"
        )
        assert len(after) > 50
        assert [answer for answer in after if answer[2] != 200] == []
