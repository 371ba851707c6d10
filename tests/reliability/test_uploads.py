"""Resumable uploads through real failures, with tuspy (the Python tus client,
unmodified) as a client app uses it: a connection cut mid-PATCH, a node
SIGKILLed mid-PATCH, PostgreSQL restarted mid-upload. Every acknowledged
byte survives, the client resumes from HEAD's offset, and the blob ends
byte-identical and counted everywhere as if it had been PUT."""

import json
import os
import signal
import socket

import pytest
from tusclient.exceptions import TusCommunicationError, TusUploadFailed

from tests.helpers import sql, wait_until
from tests.processes import ServeProcess
from tests.reliability.clients import Client, token_for
from tests.reliability.test_database_restart import node_on_own_cluster, wait_healthy
from tests.tus import MIB, TUS, CuttingProxy, offset_of, path_of, sha256, tuspy, uploader

pytestmark = pytest.mark.slow


@pytest.fixture
def alice(dsn):
    return token_for(dsn, "alice")


@pytest.fixture
def served(dsn):
    """Starts `pgblobs serve` nodes on the test's database, stopped after the test."""
    nodes = []

    def start():
        nodes.append(ServeProcess("--dsn", dsn, "--quota-bytes", "unlimited"))
        return nodes[-1]

    yield start
    for node in nodes:
        node.stop()


def assert_stored_as_put(client, blob_id, data):
    """GET, the listing, the count, the usage and the feed all agree on it."""
    status, headers, body = client.get(blob_id)
    assert status == 200 and sha256(body) == sha256(data)
    listing = client.request("GET", f"/blobs/{client.user}/")
    assert json.loads(listing[2]) == [blob_id]
    count = client.request("GET", f"/blobs/{client.user}/?only_count=True")
    assert json.loads(count[2]) == {"count": 1}
    changes = json.loads(client.request("GET", f"/changes/{client.user}")[2])["changes"]
    assert [(c["id"], c["change"], c["size"]) for c in changes] == [(blob_id, "stored", len(data))]
    assert changes[0]["tag"] == headers["Tag"]


def test_tuspy_resumes_64_mib_after_a_cut_in_the_middle_of_a_patch(dsn, alice, served):
    node = served()
    data = os.urandom(64 * MIB)
    # Cut the connection 3 MiB into the fourth 8 MiB PATCH (each on a
    # connection of its own through the proxy: tuspy opens one per request).
    proxy = CuttingProxy(node.port)
    try:
        first = uploader(tuspy(proxy.url, "alice", alice), data, "big")
        first.upload(stop_at=24 * MIB)
        assert first.offset == 24 * MIB
        proxy.cut_after = 3 * MIB
        with pytest.raises((TusUploadFailed, TusCommunicationError)):
            first.upload()
        assert proxy.cuts == 1
    finally:
        proxy.close()
    client = Client(node.url, "alice", alice)
    path = path_of(first.url)
    # Every body byte that reached the server is kept (once the server has
    # heard of the cut): past the last PATCH boundary, at most what passed
    # (the headers came first).
    wait_until(lambda: offset_of(client, path) > 24 * MIB, "the cut PATCH's bytes kept")
    kept = offset_of(client, path)
    assert kept <= 27 * MIB
    # The client resumes from HEAD's offset, as tuspy does given the URL.
    again = uploader(tuspy(node.url, "alice", alice), data, "big", url=node.url + path)
    assert again.offset == kept
    again.upload()
    assert_stored_as_put(client, "big", data)
    usage = sql(dsn, "SELECT live_bytes FROM pgblobs.usage WHERE user_id = 'alice'")
    assert usage == [(64 * MIB,)]
    assert sql(dsn, "SELECT count(*) FROM pgblobs.uploads") == [(0,)]


def partial_patch(node, alice_client, path, offset, body, sent):
    """A PATCH that announces ``body`` and sends ``sent`` bytes of it, left open."""
    connection = socket.create_connection(("127.0.0.1", node.port))
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {alice_client.auth}\r\n"
        f"Tus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
        "Content-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    connection.sendall(head.encode() + body[:sent])
    return connection


def test_a_node_killed_mid_patch_loses_no_acknowledged_byte_and_another_finishes(
    dsn, alice, served
):
    one, two = served(), served()
    data = os.urandom(40 * MIB)
    up = uploader(tuspy(one.url, "alice", alice), data, "killed")
    up.upload(stop_at=16 * MIB)  # two PATCHes acknowledged by node one
    acknowledged = up.offset
    path = path_of(up.url)
    on_two = Client(two.url, "alice", alice)
    # A third PATCH, 6 of its 8 MiB sent: at least one 4 MiB step commits.
    connection = partial_patch(
        one, on_two, path, acknowledged, data[acknowledged : acknowledged + 8 * MIB], 6 * MIB
    )
    wait_until(lambda: offset_of(on_two, path) >= acknowledged + 4 * MIB, "a step committed")
    one.stop(signal.SIGKILL)
    connection.close()
    # Node two sees every acknowledged byte and every committed step, and
    # takes the upload over (node one's lock went with its connection).
    survived = offset_of(on_two, path)
    assert survived >= acknowledged + 4 * MIB
    finish = uploader(tuspy(two.url, "alice", alice), data, "killed", url=two.url + path)
    assert finish.offset == survived
    finish.upload()
    assert_stored_as_put(on_two, "killed", data)


def test_a_postgresql_restart_mid_upload_loses_no_acknowledged_byte(open_tmp):
    with node_on_own_cluster(open_tmp / "pg") as (cluster, node, client):
        token = token_for(cluster.dsn, "alice")
        data = os.urandom(24 * MIB)
        up = uploader(tuspy(node.url, "alice", token), data, "restarted")
        up.upload(stop_at=16 * MIB)
        path = path_of(up.url)
        cluster.stop()  # fast shutdown, as `pg_ctl -m fast`
        wait_until(lambda: client.request("HEAD", path, headers=TUS)[0] == 503, "unavailable")
        cluster.start()
        wait_healthy(client, 20)
        assert offset_of(client, path) == 16 * MIB
        rest = uploader(tuspy(node.url, "alice", token), data, "restarted", url=node.url + path)
        rest.upload()
        assert_stored_as_put(client, "restarted", data)
        orphans = sql(
            cluster.dsn,
            "SELECT count(*) FROM pg_largeobject_metadata AS m WHERE NOT EXISTS "
            "(SELECT 1 FROM pgblobs.blobs AS b WHERE b.lo_oid = m.oid)",
        )
        assert orphans == [(0,)]
