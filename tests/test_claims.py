"""pgblobs/claims.py on a real PostgreSQL: claims, and the loop that ends their
leases, driven by a Clock; a lease's end is brought forward in the table
rather than waited for."""

import threading

import psycopg2
import pytest
from twisted.internet import task
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from pgblobs import InvalidArgument, InvalidName, PostgresBlobsBackend
from pgblobs.claims import Claims
from pgblobs.db import queries, schema
from pgblobs.interfaces import IClaims
from tests.helpers import LISTED_SEED, deferred_test, seed_pending, sql, until, wait_until

# The ids of the blobs under a lease.
LEASED = "SELECT b.blob_id FROM pgblobs.claims JOIN pgblobs.blobs AS b ON b.id = blob_row"
# Sessions running delete_blob (its "tombstone" step) that wait for a lock.
DELETES_WAITING = """
    SELECT count(*) FROM pg_stat_activity
    WHERE wait_event_type = 'Lock' AND query LIKE '%%delete_blob%%'
"""


def flags_of(dsn):
    """Each blob's flags, by blob id (tombstones too)."""
    rows = sql(
        dsn,
        "SELECT b.blob_id, ARRAY(SELECT f.flag FROM pgblobs.blob_flags AS f "
        "WHERE f.blob_row = b.id ORDER BY f.flag) FROM pgblobs.blobs AS b ORDER BY b.id",
    )
    return dict(rows)


def end_lease(dsn, blob_id):
    """The lease of ``blob_id`` ends now, as if its time had passed."""
    sql(
        dsn,
        "UPDATE pgblobs.claims SET lease_until = now() - interval '1 second' "
        "WHERE blob_row = (SELECT id FROM pgblobs.blobs WHERE blob_id = %s)",
        (blob_id,),
    )


def test_the_backend_provides_claims(backend):
    assert verifyObject(IClaims, backend)


@deferred_test
async def test_the_loop_gives_back_what_ran_out_each_round_of_its_clock(backend, dsn):
    seed_pending(dsn, 3)
    assert await backend.claim_blobs("alice", "MX", limit=3, lease=3600) == ["m001", "m002", "m003"]
    clock = task.Clock()
    claims = Claims(backend.database, clock)
    end_lease(dsn, "m001")
    claims.start_expiring(every=1.0)  # a first round at once
    await until(lambda: flags_of(dsn)["m001"] == ["PENDING"], "m001 back to PENDING")
    end_lease(dsn, "m002")
    await until(clock.getDelayedCalls, "the next round scheduled")  # once this one is over
    clock.advance(1.0)
    await until(lambda: flags_of(dsn)["m002"] == ["PENDING"], "m002 back to PENDING")
    assert flags_of(dsn)["m003"] == ["PROCESSING"]  # its lease goes on
    await claims.stop_expiring()
    assert clock.getDelayedCalls() == []
    assert await backend.claim_blobs("alice", "MX") == ["m001", "m002"]


@deferred_test
async def test_a_round_counts_what_went_back_and_drops_the_leases_other_flags_ended(backend, dsn):
    seed_pending(dsn, 4)
    assert await backend.claim_blobs("alice", "MX", limit=4) == ["m001", "m002", "m003", "m004"]
    await backend.set_flags("alice", "m001", ["PROCESSED"], "MX")
    await backend.set_flags("alice", "m002", ["FAILED"], "MX")
    for blob_id in ("m001", "m002", "m003"):
        end_lease(dsn, blob_id)
    claims = Claims(backend.database, task.Clock())
    assert await claims.expire() == 1
    assert flags_of(dsn) == {
        "m001": ["PROCESSED"],
        "m002": ["FAILED"],
        "m003": ["PENDING"],
        "m004": ["PROCESSING"],
    }
    assert sql(dsn, LEASED) == [("m004",)]
    assert await claims.expire() == 0


@deferred_test
async def test_a_delete_that_waits_for_a_claim_takes_its_flags_and_the_lease_goes(backend, dsn):
    """The delete takes the user's lock before it reads the row, so it sees the
    PROCESSING the claim added once the claim commits; and it ends the lease."""
    seed_pending(dsn, 1)
    claiming = psycopg2.connect(dsn)
    try:
        with claiming.cursor() as cursor:
            cursor.execute("SELECT pgblobs.claim_blobs('alice', 'MX', 1, 1)")
            assert cursor.fetchone() == (["m001"],)
        params = {"user": "alice", "namespace": "MX", "blob_id": "m001"}
        deleting = threading.Thread(target=sql, args=(dsn, queries.SQL["delete_blob"], params))
        deleting.start()
        wait_until(lambda: sql(dsn, DELETES_WAITING)[0][0], "deleting, waiting for the claim")
        claiming.commit()
        deleting.join(30)
    finally:
        claiming.close()
    assert flags_of(dsn) == {"m001": []}
    assert sql(dsn, "SELECT count(*) FROM pgblobs.claims") == [(0,)]


@deferred_test
async def test_a_failed_round_is_logged_and_the_next_one_runs(backend, dsn):
    seed_pending(dsn, 1)
    assert await backend.claim_blobs("alice", "MX") == ["m001"]
    end_lease(dsn, "m001")
    logged = []
    globalLogPublisher.addObserver(logged.append)
    clock = task.Clock()
    claims = Claims(backend.database, clock)
    sql(dsn, "ALTER FUNCTION pgblobs.expire_claims(int) RENAME TO expire_claims_away")
    try:
        claims.start_expiring(every=1.0)
        await until(
            lambda: any("could not end the claims" in formatEvent(e) for e in logged),
            "a failure logged",
        )
    finally:
        sql(dsn, "ALTER FUNCTION pgblobs.expire_claims_away(int) RENAME TO expire_claims")
        globalLogPublisher.removeObserver(logged.append)
    await until(clock.getDelayedCalls, "the next round scheduled")
    clock.advance(1.0)
    await until(lambda: flags_of(dsn)["m001"] == ["PENDING"], "m001 back to PENDING")
    await claims.stop_expiring()


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"limit": 0}, InvalidArgument),
        ({"limit": 1001}, InvalidArgument),
        ({"limit": True}, InvalidArgument),
        ({"limit": "5"}, InvalidArgument),
        ({"lease": 0}, InvalidArgument),
        ({"lease": 3601}, InvalidArgument),
        ({"namespace": "a b"}, InvalidName),
        ({"user": "../x"}, InvalidName),
    ],
)
@deferred_test
async def test_out_of_domain_arguments_fail_before_any_database_work(arguments, error):
    backend = PostgresBlobsBackend(database=None)  # any database work would crash
    with pytest.raises(error):
        await backend.claim_blobs(**{"user": "alice", **arguments})


def test_claims_and_their_end_read_a_few_index_entries_of_large_tables(scratch_dsn):
    """100,000 PENDING blobs of one user and 100,000 leases running, never
    analysed: a claim of ten and a round of ending leases scan no table."""
    schema.upgrade(scratch_dsn)
    for table in ("blobs", "blob_flags", "claims"):
        sql(scratch_dsn, f"ALTER TABLE pgblobs.{table} SET (autovacuum_enabled = off)")
    sql(scratch_dsn, LISTED_SEED, {"count": 200_000})  # rows only, of "heavy"
    sql(
        scratch_dsn,
        "INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id, created_at, flag) "
        "SELECT id, user_id, namespace, blob_id, created_at, "
        "CASE WHEN id % 2 = 0 THEN 'PENDING' ELSE 'PROCESSING' END FROM pgblobs.blobs",
    )
    sql(
        scratch_dsn,
        "INSERT INTO pgblobs.claims (blob_row, user_id, lease_until) "
        "SELECT id, user_id, now() + interval '1 hour' FROM pgblobs.blobs WHERE id % 2 = 1",
    )
    node = psycopg2.connect(scratch_dsn)
    with node.cursor() as cursor:
        params = {"user": "heavy", "namespace": "default", "limit": 10, "lease": 60}
        cursor.execute(queries.SQL["claim_blobs"], params)
        assert cursor.fetchone()[0] == [f"listed-{i}" for i in range(2, 22, 2)]
        cursor.execute(queries.SQL["expire_claims"], {"batch": 1000})
        assert cursor.fetchone()[0] == 0
        cursor.execute(
            "SELECT relname, seq_scan, idx_tup_fetch FROM pg_stat_xact_user_tables "
            "WHERE relname IN ('blobs', 'blob_flags', 'claims') ORDER BY relname"
        )
        read = cursor.fetchall()
        node.rollback()
    node.close()
    assert len(read) == 3
    assert all(scans == 0 and fetched < 1000 for _, scans, fetched in read), read
