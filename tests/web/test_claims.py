"""POST /claim/{user}: PENDING blobs reserved (PROCESSING, under a lease) on two
real `pgblobs serve` nodes sharing one database, over real sockets."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import create_token, seed_pending, sql, wait_until
from tests.processes import ServeProcess
from tests.reliability.clients import Client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes(migrated_dsn):
    started = [ServeProcess("--dsn", migrated_dsn), ServeProcess("--dsn", migrated_dsn)]
    yield started
    for node in started:
        node.stop()
    # No request failed with a 500, and no round of ending leases failed.
    for node in started:
        logged = "".join(node.errors)
        assert "Traceback" not in logged and "could not end the claims" not in logged, logged


@pytest.fixture
def alice(nodes, dsn):
    """alice's client of each node."""
    token = create_token(dsn, "alice")
    return [Client(node.url, "alice", token) for node in nodes]


def claim(client, query="namespace=MX", user="alice"):
    """(status, headers, the ids claimed, or the body when the status is not 200)."""
    status, headers, body = client.request("POST", f"/claim/{user}?{query}")
    return status, headers, json.loads(body) if status == 200 else body


def flags(client, blob_id, namespace="MX"):
    status, _, body = client.request(
        "GET", f"/blobs/alice/{blob_id}?namespace={namespace}&only_flags=True"
    )
    assert status == 200, (status, body)
    return json.loads(body)


def set_flags(client, blob_id, new_flags):
    status, _, body = client.request(
        "POST", f"/blobs/alice/{blob_id}?namespace=MX", body=json.dumps(new_flags)
    )
    assert status == 200, (status, body)


def leases(dsn):
    return sql(dsn, "SELECT count(*) FROM pgblobs.claims")[0][0]


def test_eight_claimers_on_two_nodes_take_each_pending_blob_exactly_once(alice, dsn):
    pending = seed_pending(dsn, 200)
    start = threading.Barrier(8)

    def claimer(number):
        client = alice[number % 2]
        start.wait()
        batches = []
        while True:
            status, headers, claimed = claim(client, "namespace=MX&limit=7")
            assert status == 200, (status, claimed)
            assert headers["Content-Type"] == "application/json"
            if not claimed:
                return batches
            batches.append(claimed)

    with ThreadPoolExecutor(8) as pool:
        per_claimer = list(pool.map(claimer, range(8)))
    every_batch = [batch for batches in per_claimer for batch in batches]
    claimed = [blob_id for batch in every_batch for blob_id in batch]
    assert sorted(claimed) == pending  # each id exactly once
    for batch in every_batch:
        assert batch == sorted(batch) and len(batch) <= 7  # oldest first
    assert sum(1 for batches in per_claimer if batches) > 1, "the claimers did not overlap"
    assert sql(dsn, "SELECT flag, count(*) FROM pgblobs.blob_flags GROUP BY flag") == [
        ("PROCESSING", 200)
    ]
    assert leases(dsn) == 200


def test_a_lease_left_to_end_gives_the_blob_back_to_pending(alice, dsn):
    seed_pending(dsn, 3)
    first, second = alice
    sent = time.monotonic()
    assert claim(first, "namespace=MX&limit=2&lease=2")[::2] == (200, ["m001", "m002"])
    assert flags(second, "m001") == flags(second, "m002") == ["PROCESSING"]
    assert claim(second)[2] == ["m003"]  # the two leased are not claimed again
    wait_until(lambda: flags(second, "m001") == ["PENDING"], "back to PENDING", timeout=15)
    assert time.monotonic() - sent >= 1.9, "given back before its lease ended"
    assert flags(second, "m002") == ["PENDING"]
    assert flags(second, "m003") == ["PROCESSING"]  # its lease (300 s) goes on
    assert claim(second)[2] == ["m001", "m002"]  # claimed again, oldest first


def test_processed_ends_the_lease(alice, dsn):
    seed_pending(dsn, 2)
    first, second = alice
    assert claim(first, "namespace=MX&limit=2&lease=1")[2] == ["m001", "m002"]
    set_flags(second, "m001", ["PROCESSED"])
    set_flags(second, "m002", ["FAILED"])
    # Past the lease: the node that ends leases has looked at both.
    wait_until(lambda: leases(dsn) == 0, "without leases", timeout=15)
    assert flags(first, "m001") == ["PROCESSED"]
    assert flags(first, "m002") == ["FAILED"]
    assert claim(first)[2] == []


def test_deleting_ends_the_lease(alice, dsn):
    seed_pending(dsn, 1)
    first, second = alice
    assert claim(first, "namespace=MX&lease=1")[2] == ["m001"]
    assert second.request("DELETE", "/blobs/alice/m001?namespace=MX")[0] == 200
    wait_until(lambda: leases(dsn) == 0, "without leases", timeout=15)
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blob_flags") == [(0,)]
    assert second.request("GET", "/blobs/alice/m001?namespace=MX")[0] == 404
    # Written again, the id is a new blob that no lease touches.
    assert second.request("PUT", "/blobs/alice/m001?namespace=MX", body=b"again")[0] == 200
    assert flags(first, "m001") == []
    assert claim(first)[2] == []


def test_defaults_are_the_default_namespace_ten_blobs_and_five_minutes(alice, dsn):
    seed_pending(dsn, 12, namespace="default")
    seed_pending(dsn, 1, namespace="MX")
    before = sql(dsn, "SELECT now()")[0][0]
    status, headers, claimed = claim(alice[0], "")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert claimed == [f"m{i:03d}" for i in range(1, 11)]
    [(shortest, longest)] = sql(
        dsn,
        "SELECT min(lease_until) - %s, max(lease_until) - %s FROM pgblobs.claims",
        (before,) * 2,
    )
    assert 299 <= shortest.total_seconds() <= longest.total_seconds() <= 301
    assert flags(alice[0], "m001") == ["PENDING"]  # MX's own is left alone
    assert claim(alice[1], "limit=1000")[2] == ["m011", "m012"]
    assert claim(alice[1], "namespace=&limit=1000")[2] == []


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "limit=1.5",
        "limit=%C2%B2",
        "lease=0",
        "lease=3601",
        "lease=",
        "namespace=no%20spaces",
    ],
)
def test_parameters_out_of_their_domain_are_400_and_claim_nothing(alice, dsn, query):
    seed_pending(dsn, 1, namespace="default")
    status, _, body = claim(alice[0], query)
    assert status == 400, (status, body)
    assert body.startswith(b"invalid ") and len(body) < 200
    assert flags(alice[0], "m001", namespace="default") == ["PENDING"]


def test_a_user_name_out_of_its_domain_is_400(alice):
    assert claim(alice[0], "", user="no.dots")[0] == 400


def test_only_a_valid_token_of_the_user_claims(nodes, alice, dsn):
    seed_pending(dsn, 1)
    node = nodes[0]
    status, headers, _ = Client(node.url, "alice", "not-a-token").request(
        "POST", "/claim/alice?namespace=MX"
    )
    assert status == 401 and headers["WWW-Authenticate"] == "Token"
    assert alice[0].request("POST", "/claim/alice", headers={"Authorization": ""})[0] == 401
    bob = Client(node.url, "bob", create_token(dsn, "bob"))
    status, _, body = claim(bob, "namespace=MX", user="alice")
    assert (status, body) == (403, b"this token is for another user\n")
    assert flags(alice[0], "m001") == ["PENDING"]


def test_claim_answers_only_post(alice):
    for method in ("GET", "PUT", "DELETE"):
        status, headers, _ = alice[0].request(method, "/claim/alice?namespace=MX")
        assert (status, headers["Allow"]) == (405, "POST")
    assert alice[0].request("POST", "/claim/alice/more")[0] == 404
    assert alice[0].request("POST", "/claim/")[0] == 404
