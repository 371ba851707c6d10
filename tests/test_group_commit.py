"""Coalesced reads and group-committed small writes (issue 11): the requests of
one moment share a statement, each keeps its own outcome, a write is
acknowledged only after the shared COMMIT, and the guarantees between nodes
(one winner per id, quota never passed) hold under batching."""

import psycopg2
import pytest
from twisted.internet import defer

from pgblobs import BlobExists, BlobNotFound, PostgresBlobsBackend, QuotaExceeded
from tests.helpers import (
    content,
    deferred_test,
    gather,
    read,
    sleep,
    sql,
    statements_sent,
    until,
    write,
)


@deferred_test
async def test_reads_that_arrive_together_share_one_statement(backend):
    stored = {(f"user{i % 3}", f"b{i}"): content(1000 + i, seed=i) for i in range(30)}
    for (user, blob_id), data in stored.items():
        await write(backend, user, blob_id, data)
    sent = statements_sent(backend)
    wanted = [*stored, ("user0", "missing")]
    results = await gather(*[read(backend, user, blob_id) for user, blob_id in wanted])
    assert results[:-1] == list(stored.values())
    assert isinstance(results[-1], BlobNotFound)
    # 31 reads of three users: batches of 25, so two statements in all.
    assert sent == ["open_blob_batch", "open_blob_batch"]


@deferred_test
async def test_each_write_of_a_batch_has_its_own_outcome(backend, dsn):
    await write(backend, "alice", "taken", b"first")
    sql(dsn, "INSERT INTO pgblobs.quotas VALUES ('alice', 25000)")
    sent = statements_sent(backend)
    outcomes = await gather(
        write(backend, "alice", "taken", b"second"),
        *[write(backend, "alice", f"a{i}", content(10_000, seed=i)) for i in range(5)],
        write(backend, "bob", "b", b"bob's"),
        write(backend, "alice", "twice", b"one"),
        write(backend, "alice", "twice", b"two"),
    )
    assert isinstance(outcomes[0], BlobExists)
    # Two 10 kB blobs fit in what is left of 25,000 bytes; the others fail alone.
    fitted = [i for i in range(5) if outcomes[1 + i] is None]
    assert len(fitted) == 2
    assert all(isinstance(outcomes[1 + i], QuotaExceeded) for i in range(5) if i not in fitted)
    assert outcomes[6] is None
    # The same id twice in one batch: one of them wins it.
    twice = outcomes[7:9]
    assert sum(o is None for o in twice) == 1 and any(isinstance(o, BlobExists) for o in twice)
    # One statement for the batch; each write refused for a taken id then
    # asks whether it repeats the live blob's bytes (it does not).
    assert sent == ["put_small_blobs", "live_digests", "live_digests"]
    assert await read(backend, "alice", "taken") == b"first"
    assert await read(backend, "alice", "twice") == [b"one", b"two"][twice.index(None)]
    assert await read(backend, "bob", "b") == b"bob's"
    assert sorted(await backend.list_blobs("alice")) == sorted(
        [*(f"a{i}" for i in fitted), "taken", "twice"]
    )
    # The counters moved once per batch, and by exactly what was stored.
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0] == 5
    assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 5
    assert await backend.get_total_storage("alice") == (5 + 20_000 + 3 + 1023) // 1024


@deferred_test
async def test_a_write_is_acknowledged_only_after_its_batch_commits(backend, dsn):
    # Hold alice's write lock from outside: her batch must wait inside its
    # transaction, and no caller may hear "stored" before the commit.
    holder = psycopg2.connect(dsn)
    holder.autocommit = True
    with holder.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(pgblobs.user_lock_key('alice'))")
    sent = statements_sent(backend)
    try:
        writes = [
            defer.ensureDeferred(write(backend, "alice", f"w{i}", b"x" * i)) for i in range(1, 6)
        ]
        # Until their batch has come back "busy" and been sent again.
        await until(lambda: sent.count("put_small_blobs") >= 2, "sent again", timeout=20)
        assert not any(w.called for w in writes)
        assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0] == 0
    finally:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock_all()")
        holder.close()
    for w in writes:
        await w
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs WHERE deleted_at IS NULL")[0][0] == 5


@deferred_test
async def test_two_nodes_batching_keep_one_winner_per_id_and_the_quota(dsn):
    nodes = [await PostgresBlobsBackend.connect(dsn, pool_size=4) for _ in range(2)]
    try:
        sql(dsn, "INSERT INTO pgblobs.quotas VALUES ('alice', 50000)")
        same_ids = await gather(
            *[
                write(node, "bob", f"race{i}", bytes([n]) * 100)
                for i in range(20)
                for n, node in enumerate(nodes)
            ]
        )
        for i in range(20):
            pair = same_ids[2 * i : 2 * i + 2]
            assert pair.count(None) == 1 and any(isinstance(o, BlobExists) for o in pair), pair
            winner = pair.index(None)
            assert await read(nodes[0], "bob", f"race{i}") == bytes([winner]) * 100
        filling = await gather(
            *[
                write(node, "alice", f"fill{n}-{i}", content(10_000, seed=i))
                for i in range(10)
                for n, node in enumerate(nodes)
            ]
        )
        assert filling.count(None) == 5
        assert all(isinstance(o, QuotaExceeded) for o in filling if o is not None)
        assert (
            sql(
                dsn,
                "SELECT sum(size) FROM pgblobs.blobs "
                "WHERE user_id = 'alice' AND deleted_at IS NULL",
            )[0][0]
            == 50_000
        )
        assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 25
    finally:
        for node in nodes:
            await node.close()


def _holding(dsn, statement, params=None):
    """A connection inside a transaction that has run ``statement`` and
    keeps whatever it took (locks, uncommitted rows) until committed."""
    holder = psycopg2.connect(dsn)
    with holder.cursor() as cursor:
        cursor.execute(statement, params)
    return holder


USER_LOCK = "SELECT pg_advisory_xact_lock(pgblobs.user_lock_key(%(user)s))"


@deferred_test
async def test_an_uncommitted_import_of_a_name_decides_only_that_name(backend, dsn):
    # import-fs's statement for small blobs, in a transaction left open: alice's X
    # is being imported, not yet committed.
    importing = _holding(
        dsn,
        "SELECT pgblobs.insert_blobs(ARRAY['alice'], ARRAY['default'], ARRAY['X'], "
        "ARRAY['\\x696d706f72746564'::bytea], ARRAY['tag'], ARRAY['\\x00'::bytea], "
        "ARRAY[''], '{}'::timestamptz[], '{}'::boolean[])",
    )
    try:
        writes = [
            defer.ensureDeferred(write(backend, user, blob_id, data))
            for user, blob_id, data in [
                ("alice", "X", b"mine"),
                ("bob", "Y0", b"bob zero"),
                ("bob", "Y1", b"bob one"),
            ]
        ]
        # bob's blobs do not wait for the import of alice's name...
        await until(lambda: writes[1].called and writes[2].called, "stored bob's blobs", timeout=20)
        assert not writes[0].called
        assert await read(backend, "bob", "Y0") == b"bob zero"
        assert await read(backend, "bob", "Y1") == b"bob one"
    finally:
        importing.commit()
        importing.close()
    # ... and alice's X is a true 409: the imported blob is the one there.
    with pytest.raises(BlobExists):
        await writes[0]
    assert await read(backend, "alice", "X") == b"imported"


@deferred_test
async def test_a_user_whose_lock_is_held_never_delays_other_users(backend, dsn):
    # Another writer (a stream upload committing 30,000 rows, say) holds alice's lock.
    holder = _holding(dsn, USER_LOCK, {"user": "alice"})
    try:
        alice = [defer.ensureDeferred(write(backend, "alice", f"a{i}", b"a")) for i in range(2)]
        others = [
            defer.ensureDeferred(write(backend, f"user{i % 40}", f"b{i}", content(100, seed=i)))
            for i in range(80)
        ]
        await until(
            lambda: all(w.called for w in others), "stored the other users' blobs", timeout=20
        )
        assert not any(w.called for w in alice)
        assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs WHERE user_id <> 'alice'")[0][0] == 80
    finally:
        holder.commit()
        holder.close()
    for w in [*alice, *others]:
        assert await w is None
    assert sorted(await backend.list_blobs("alice")) == ["a0", "a1"]


@deferred_test
async def test_an_id_twice_in_a_batch_is_judged_by_what_the_first_did(backend, dsn):
    sql(dsn, "INSERT INTO pgblobs.quotas VALUES ('alice', 1000)")
    outcomes = await gather(
        write(backend, "alice", "dup", content(2000)),
        write(backend, "alice", "dup", b"1"),
    )
    # The first does not fit, so it stores nothing, and the second has the id to itself.
    assert isinstance(outcomes[0], QuotaExceeded)
    assert outcomes[1] is None
    assert await read(backend, "alice", "dup") == b"1"


@deferred_test
async def test_bodies_count_against_the_buffer_until_their_batch_commits(dsn):
    budget = 50_000
    node = await PostgresBlobsBackend.connect(dsn, pool_size=4, max_buffered_bytes=budget)
    holder = _holding(dsn, USER_LOCK, {"user": "alice"})
    try:
        waiting = [
            defer.ensureDeferred(write(node, "alice", f"w{i}", content(10_000, seed=i)))
            for i in range(4)
        ]
        await until(lambda: node.buffered_bytes == 40_000, "holding the four bodies", timeout=20)
        # Past the budget a small body takes the streamed path, holding nothing.
        more = [
            defer.ensureDeferred(write(node, "alice", f"m{i}", content(20_000, seed=i)))
            for i in range(3)
        ]
        for _ in range(10):  # an invariant, watched while the streamed writes go on
            await sleep(0.02)
            assert node.buffered_bytes <= budget
        assert not any(w.called for w in waiting + more)
    finally:
        holder.commit()
        holder.close()
    for w in waiting + more:
        assert await w is None
    assert node.buffered_bytes == 0
    assert len(await node.list_blobs("alice")) == 7
    await node.close()


@deferred_test
async def test_a_writer_outside_pgblobs_holds_up_only_its_user(backend, dsn):
    # An operator's own SQL inserting alice's X, not committed: the change feed's
    # trigger (revision 0014) gave it alice's lock, so the batch finds alice busy
    # and sends her write again later, while bob's is stored at once.
    rogue = _holding(
        dsn,
        "INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256) "
        "VALUES ('alice', 'default', 'X', lo_from_bytea(0, 'rogue'), 5, 't', '\\x00')",
    )
    try:
        writes = [
            defer.ensureDeferred(write(backend, user, blob_id, data))
            for user, blob_id, data in [("alice", "X", b"mine"), ("bob", "Y", b"bob's")]
        ]
        assert await writes[1] is None  # bob's blob does not wait for alice's lock
        assert not writes[0].called
    finally:
        rogue.commit()
        rogue.close()
    with pytest.raises(BlobExists):
        await writes[0]
    assert await read(backend, "bob", "Y") == b"bob's"
    assert await read(backend, "alice", "X") == b"rogue"
