"""pgblobs/uploads.py and db/upload_steps.py on a real PostgreSQL: appends in
committed steps, the sha256 carried on or read back, the sweep on a Clock,
the upload's lock, and reservations of ids and quota against every writer."""

import hashlib

import psycopg2
import pytest
from twisted.internet import defer, reactor, task

from pgblobs import PostgresBlobsBackend
from pgblobs.db.upload_steps import Checksum
from pgblobs.errors import (
    AccountClosed,
    BlobExists,
    BlobReserved,
    ChecksumMismatch,
    QuotaExceeded,
    TooManyUploads,
    UploadBusy,
    UploadNotFound,
    UploadOffsetMismatch,
    UploadTooLong,
)
from pgblobs.uploads import Uploads
from tests.helpers import ScriptedProducer, content, deferred_test, producer, sql, until, write

STEP = 64 * 1024
UNLIMITED = {"default_quota": None, "default_quota_blobs": None}


def uploads_of(backend, step=STEP, clock=reactor, **options):
    """Uploads on the backend's database, as another node's would be."""
    return Uploads(clock, backend.database, lambda: UNLIMITED, step=step, **options)


def stored(dsn, blob_id):
    """(size, sha256, tag) of the live blob ``blob_id`` of alice."""
    rows = sql(
        dsn,
        "SELECT size, sha256, tag FROM pgblobs.blobs "
        "WHERE user_id = 'alice' AND blob_id = %s AND deleted_at IS NULL",
        (blob_id,),
    )
    return (rows[0][0], bytes(rows[0][1]), rows[0][2]) if rows else None


def large_object_of(dsn, upload_id):
    rows = sql(dsn, "SELECT lo_oid FROM pgblobs.uploads WHERE upload_id = %s", (upload_id,))
    return rows[0][0] if rows else None


def large_object_exists(dsn, oid):
    return bool(sql(dsn, "SELECT 1 FROM pg_largeobject_metadata WHERE oid = %s", (oid,)))


def chunks_of(data, size=16 * 1024):
    return [data[i : i + size] for i in range(0, len(data), size)]


@deferred_test
async def test_a_body_cut_off_keeps_every_step_and_what_had_arrived(backend, dsn):
    uploads = uploads_of(backend)
    data = content(10 * 16 * 1024)
    state = await uploads.create("alice", "cut", len(data), "", "")
    body = ScriptedProducer(chunks_of(data), fail_after=7)
    with pytest.raises(RuntimeError):
        await uploads.append("alice", state.upload_id, 0, body, None)
    assert (await uploads.state("alice", state.upload_id)).offset == 7 * 16 * 1024
    # The client resumes from there; the blob is whole, hashed from its bytes.
    rest = producer(data[7 * 16 * 1024 :])
    done = await uploads.append("alice", state.upload_id, 7 * 16 * 1024, rest, None)
    assert done.completed
    assert stored(dsn, "cut")[:2] == (len(data), hashlib.sha256(data).digest())


@deferred_test
async def test_a_body_with_a_checksum_is_kept_whole_or_not_at_all(backend, dsn):
    uploads = uploads_of(backend)
    data = content(5 * STEP)
    state = await uploads.create("alice", "summed", len(data), "", "")
    wrong = Checksum("sha1", hashlib.sha1(b"other").digest())
    with pytest.raises(ChecksumMismatch):
        await uploads.append("alice", state.upload_id, 0, producer(data), wrong)
    cut = ScriptedProducer(chunks_of(data), fail_after=12)
    right = Checksum("sha256", hashlib.sha256(data).digest())
    with pytest.raises(RuntimeError):
        await uploads.append("alice", state.upload_id, 0, cut, right)
    assert (await uploads.state("alice", state.upload_id)).offset == 0
    assert (await uploads.append("alice", state.upload_id, 0, producer(data), right)).completed
    assert stored(dsn, "summed")[1] == hashlib.sha256(data).digest()


@deferred_test
async def test_the_sha256_is_right_whichever_node_took_each_patch(backend, dsn):
    here, there = uploads_of(backend), uploads_of(backend)
    data = content(3 * STEP + 5, seed=7)
    third = len(data) // 3
    for blob_id, middle in (("one-node", here), ("two-nodes", there)):
        state = await here.create("alice", blob_id, len(data), "", "")
        for start, end, node in ((0, third, here), (third, 2 * third, middle)):
            await node.append("alice", state.upload_id, start, producer(data[start:end]), None)
        await here.append("alice", state.upload_id, 2 * third, producer(data[2 * third :]), None)
        size, sha256, tag = stored(dsn, blob_id)
        assert (size, sha256) == (len(data), hashlib.sha256(data).digest())
        await write(backend, "alice", f"{blob_id}-put", data)
        assert stored(dsn, f"{blob_id}-put")[2] == tag  # tagged as a PUT is


@deferred_test
async def test_offsets_and_lengths_are_checked_before_and_under_the_lock(backend, dsn):
    uploads = uploads_of(backend)
    state = await uploads.create("alice", "checked", 10, "", "")
    with pytest.raises(UploadOffsetMismatch):
        await uploads.append("alice", state.upload_id, 3, producer(b"abc"), None)
    with pytest.raises(UploadTooLong):
        await uploads.append("alice", state.upload_id, 0, producer(b"x" * 11), None)
    # A body of unknown length is stopped at the length, its steps before kept.
    unknown = ScriptedProducer([b"12345", b"678901"])
    with pytest.raises(UploadTooLong):
        await uploads.append("alice", state.upload_id, 0, unknown, None)
    with pytest.raises(UploadNotFound):
        await uploads.state("bob", state.upload_id)  # another user's upload is none of bob's


@deferred_test
async def test_a_held_upload_is_busy_for_appends_termination_and_the_sweep(backend, dsn):
    clock = task.Clock()
    uploads = uploads_of(backend, clock=clock, expiry=3600)
    state = await uploads.create("alice", "held", 10, "", "")
    holder = psycopg2.connect(dsn)
    holder.autocommit = True
    try:
        with holder.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_lock(pgblobs.upload_lock_key(%s))", (state.upload_id,)
            )
            with pytest.raises(UploadBusy):
                await uploads.append("alice", state.upload_id, 0, producer(b"abc"), None)
            with pytest.raises(UploadBusy):
                await uploads.terminate("alice", state.upload_id)
            sql(dsn, "UPDATE pgblobs.uploads SET expires_at = now() - interval '1 second'")
            uploads.start_expiring(every=1.0)
            await until(clock.getDelayedCalls, "the sweep's first round over")
            assert large_object_of(dsn, state.upload_id) is not None
            cursor.execute("SELECT pg_advisory_unlock_all()")
        oid = large_object_of(dsn, state.upload_id)
        clock.advance(1.0)
        await until(lambda: uploads.expired == 1, "swept")
        assert large_object_of(dsn, state.upload_id) is None
        assert not large_object_exists(dsn, oid)
        await uploads.stop_expiring()
    finally:
        holder.close()


@deferred_test
async def test_termination_removes_the_bytes_and_frees_the_id(backend, dsn):
    state = await backend.create_upload("alice", "gone", 10)
    await backend.append_upload("alice", state.upload_id, 0, producer(b"abcde"))
    oid = large_object_of(dsn, state.upload_id)
    await backend.terminate_upload("alice", state.upload_id)
    assert not large_object_exists(dsn, oid)
    with pytest.raises(UploadNotFound):
        await backend.terminate_upload("alice", state.upload_id)
    await write(backend, "alice", "gone", b"free again")


@deferred_test
async def test_an_id_in_upload_is_reserved_against_every_writer(backend, dsn):
    state = await backend.create_upload("alice", "taken", 100)
    assert (await backend.reserving_upload("alice", "taken")).upload_id == state.upload_id
    with pytest.raises(BlobReserved):
        await backend.create_upload("alice", "taken", 5)
    # Small (the group commit), known or not; large (streamed); many at once.
    with pytest.raises(BlobReserved):
        await write(backend, "alice", "taken", b"small")
    with pytest.raises(BlobReserved):
        await write(backend, "alice", "taken", b"small", known_length=False)
    with pytest.raises(BlobReserved):
        await write(backend, "alice", "taken", content(300_000))
    with pytest.raises(BlobReserved):
        await backend.write_blobs("alice", [("taken", 3, lambda: producer(b"abc"))])
    # Outside pgblobs too: the trigger refuses the row itself.
    with pytest.raises(psycopg2.Error, match="reserved"):
        sql(
            dsn,
            "SELECT pgblobs.insert_blobs('{alice}', '{default}', '{taken}', '{x}', '{t}', "
            "'{\\\\x00}', '{}', '{}', '{}')",
        )
    # Another namespace, or another user, is another name.
    await write(backend, "alice", "taken", b"elsewhere", namespace="other")
    await write(backend, "bob", "taken", b"bob's")
    with pytest.raises(BlobExists):
        await backend.create_upload("alice", "taken", 5, namespace="other")


@deferred_test
async def test_a_reserved_id_fails_only_its_own_write_in_a_group_commit(backend, dsn):
    await backend.create_upload("alice", "r", 10)
    results = await defer.DeferredList(
        [
            backend.write_blob("alice", blob_id, producer(blob_id.encode()))
            for blob_id in ("a", "r", "b")
        ],
        consumeErrors=True,
    )
    assert [ok for ok, _ in results] == [True, False, True]
    assert results[1][1].check(BlobReserved)
    assert stored(dsn, "a") and stored(dsn, "b") and not stored(dsn, "r")


@deferred_test
async def test_uploads_reserve_quota_until_they_end(dsn):
    backend = await PostgresBlobsBackend.connect(
        dsn, quota_bytes=1000, quota_blobs=3, pool_size=2, max_uploads_per_user=2
    )
    try:
        first = await backend.create_upload("alice", "u1", 600)
        with pytest.raises(QuotaExceeded):
            await backend.create_upload("alice", "u2", 401)
        with pytest.raises(QuotaExceeded):
            await write(backend, "alice", "put", b"x" * 401)
        second = await backend.create_upload("alice", "u2", 400)
        with pytest.raises(TooManyUploads):
            await backend.create_upload("alice", "u3", 0)
        await backend.terminate_upload("alice", second.upload_id)
        await write(backend, "alice", "put", b"x" * 400)
        # A completed upload holds what it reserved, now as its blob: one blob left.
        await backend.append_upload("alice", first.upload_id, 0, producer(b"y" * 600))
        assert await backend.get_blob_size("alice", "u1") == 600
        assert await backend.count("alice") == 2
        with pytest.raises(QuotaExceeded):
            await backend.create_upload("alice", "u4", 1)
    finally:
        await backend.close()


@deferred_test
async def test_an_upload_of_no_bytes_is_its_blob_at_once(backend, dsn):
    state = await backend.create_upload("alice", "empty", 0)
    assert state.completed
    assert stored(dsn, "empty") == (0, hashlib.sha256(b"").digest(), "")
    assert (await backend.upload_state("alice", state.upload_id)).completed


@deferred_test
async def test_a_finished_upload_is_remembered_but_reserves_nothing(backend, dsn):
    state = await backend.create_upload("alice", "done", 5, metadata="blob_id ZG9uZQ==")
    await backend.append_upload("alice", state.upload_id, 0, producer(b"12345"))
    # The answer to that PATCH was lost: HEAD says every byte is in, and the
    # retry of the PATCH (nothing left to send) is answered as it would have been.
    finished = await backend.upload_state("alice", state.upload_id)
    assert (finished.offset, finished.length, finished.completed) == (5, 5, True)
    assert finished.metadata == "blob_id ZG9uZQ=="
    again = await backend.append_upload("alice", state.upload_id, 5, producer(b""))
    assert again.completed
    with pytest.raises(UploadTooLong):
        await backend.append_upload("alice", state.upload_id, 5, producer(b"6"))
    with pytest.raises(UploadOffsetMismatch):
        await backend.append_upload("alice", state.upload_id, 0, producer(b"12345"))
    # The id is the blob's now, not the upload's: once deleted it is free.
    await backend.delete_blob("alice", "done")
    await write(backend, "alice", "done", b"again")
    # Terminating a finished upload forgets it; its blob stays.
    await backend.terminate_upload("alice", state.upload_id)
    with pytest.raises(UploadNotFound):
        await backend.upload_state("alice", state.upload_id)
    assert await backend.get_blob_size("alice", "done") == 5


@deferred_test
async def test_a_closed_account_begins_no_upload(backend, dsn):
    sql(dsn, "INSERT INTO pgblobs.closed_accounts (user_id) VALUES ('alice')")
    with pytest.raises(AccountClosed):
        await backend.create_upload("alice", "late", 10)
