"""The backend contract, every method and every error: against PostgreSQL
(PostgresBlobsBackend on a real server) and, where a test needs no SQL of
its own, against MemoryBlobsBackend too, which keeps that double honest."""

import base64
import hashlib

import pytest
from zope.interface.verify import verifyObject

from pgblobs import (
    BlobExists,
    BlobNotFound,
    Flags,
    IBlobsBackend,
    InvalidArgument,
    InvalidFlag,
    InvalidName,
    MemoryBlobsBackend,
    PostgresBlobsBackend,
    QuotaExceeded,
    SchemaNotReady,
)
from tests.helpers import content, deferred_test, gather, producer, read, sql, write


def tag_of(data):
    return base64.urlsafe_b64encode(data[-16:]).decode()


@pytest.fixture(params=["postgres", "memory"])
def blobs(request):
    """Each implementation of IBlobsBackend, in turn."""
    if request.param == "memory":
        return MemoryBlobsBackend()
    return request.getfixturevalue("backend")


def test_provides_the_interface(blobs):
    assert verifyObject(IBlobsBackend, blobs)


@deferred_test
async def test_exactly_the_four_soledad_flags_are_accepted(blobs):
    await write(blobs, "alice", "flagged", b"x")
    accepted = []
    for flag in ("PENDING", "PROCESSING", "PROCESSED", "FAILED", "pending", "DONE", "", "NEW"):
        try:
            await blobs.set_flags("alice", "flagged", [flag])
        except InvalidFlag:
            continue
        accepted.append(flag)
    assert accepted == [Flags.PENDING, Flags.PROCESSING, Flags.PROCESSED, Flags.FAILED]


@pytest.mark.parametrize(
    "size", [0, 1, 15, 16, 17, 256 * 1024, 256 * 1024 + 1, 5 * 1024 * 1024 + 3]
)
@pytest.mark.parametrize("known_length", [True, False])
@deferred_test
async def test_write_then_read_any_size(backend, dsn, size, known_length):
    data = content(size, seed=size % 7)
    await write(backend, "alice", "blob", data, known_length=known_length)
    assert await read(backend, "alice", "blob") == data
    assert await backend.get_blob_size("alice", "blob") == size
    assert await backend.get_tag("alice", "blob") == tag_of(data)
    stored = sql(dsn, "SELECT sha256, size FROM pgblobs.blobs WHERE blob_id = 'blob'")
    assert bytes(stored[0][0]) == hashlib.sha256(data).digest()
    assert stored[0][1] == size


@pytest.mark.parametrize("size", [100, 3 * 1024 * 1024 + 5])
@deferred_test
async def test_ranges_are_end_exclusive_and_reach_both_edges(blobs, size):
    data = content(size, seed=3)
    await write(blobs, "alice", "ranged", data)
    for start, end in [
        (0, 1),
        (0, size),
        (size - 1, size),
        (5, 50),
        (size, size),
        (0, size + 10),
        (size + 5, size + 10),
        (7, None),
        (1024 * 1024 - 1, 1024 * 1024 + 1),
    ]:
        assert await read(blobs, "alice", "ranged", range=(start, end)) == data[start:end]


@deferred_test
async def test_bad_range_is_a_value_error(blobs):
    await write(blobs, "alice", "ranged", b"abc")
    for bad in [(2, 1), (-1, 2), "0-1", (0,)]:
        with pytest.raises(InvalidArgument):
            await read(blobs, "alice", "ranged", range=bad)


@deferred_test
async def test_missing_blobs_are_not_found(blobs):
    with pytest.raises(BlobNotFound):
        await read(blobs, "alice", "nothing")
    for method in (blobs.get_blob_size, blobs.get_tag, blobs.get_flags, blobs.delete_blob):
        with pytest.raises(BlobNotFound):
            await method("alice", "nothing")
    with pytest.raises(BlobNotFound):
        await blobs.set_flags("alice", "nothing", [Flags.PENDING])


@deferred_test
async def test_writing_a_taken_id_fails_and_keeps_the_first(blobs):
    await write(blobs, "alice", "twice", b"first")
    for known_length in (True, False):
        with pytest.raises(BlobExists):
            await write(blobs, "alice", "twice", b"second!", known_length=known_length)
    assert await read(blobs, "alice", "twice") == b"first"


@deferred_test
async def test_namespaces_separate_blobs_and_empty_means_default(blobs):
    await write(blobs, "alice", "same", b"in default")
    await write(blobs, "alice", "same", b"in mail", namespace="mail")
    assert await read(blobs, "alice", "same", namespace="default") == b"in default"
    assert await read(blobs, "alice", "same", namespace="mail") == b"in mail"
    assert await blobs.count("alice") == 1
    assert await blobs.count("alice", namespace="default") == 1
    assert await blobs.list_blobs("alice", namespace="mail") == ["same"]
    await blobs.delete_blob("alice", "same", namespace="mail")
    assert await blobs.count("alice", "mail") == 0
    assert await blobs.count("alice", "") == 1


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "a b", "é", "x" * 256, "a\x00", None, 7])
@deferred_test
async def test_invalid_names_fail_before_any_database_work(bad):
    backend = PostgresBlobsBackend(database=None)  # any database work would crash
    attempts = [
        lambda: write(backend, bad, "ok", b"x"),
        lambda: write(backend, "ok", bad, b"x"),
        lambda: read(backend, bad, "ok"),
        lambda: backend.get_blob_size("ok", bad),
        lambda: backend.list_blobs(bad),
        lambda: backend.get_total_storage(bad),
    ]
    if bad not in ("", None):  # no namespace means the default one
        attempts += [lambda: backend.count("ok", bad), lambda: backend.list_blobs("ok", bad)]
    for attempt in attempts:
        with pytest.raises(InvalidName) as raised:
            await attempt()
        assert isinstance(raised.value, ValueError)


@deferred_test
async def test_longest_valid_names_work(blobs):
    name = "A-z_9" * 51
    assert len(name) == 255
    await write(blobs, name, name, b"long names", namespace=name)
    assert await blobs.list_blobs(name, namespace=name) == [name]


@deferred_test
async def test_delete_makes_a_tombstone_and_frees_content_at_once(backend, dsn):
    await write(backend, "alice", "doomed", content(400_000))
    await write(backend, "alice", "kept", b"kept")
    assert await backend.get_total_storage("alice") == (400_000 + 4 + 1023) // 1024
    await backend.delete_blob("alice", "doomed")
    assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 1
    assert await backend.get_total_storage("alice") == 1
    assert await backend.list_blobs("alice") == ["kept"]
    assert await backend.list_blobs("alice", deleted=True) == ["doomed"]
    assert await backend.count("alice") == 1
    with pytest.raises(BlobNotFound):
        await read(backend, "alice", "doomed")
    with pytest.raises(BlobNotFound):
        await backend.delete_blob("alice", "doomed")


@deferred_test
async def test_writing_a_deleted_id_revives_it(blobs):
    await write(blobs, "alice", "phoenix", b"old")
    await blobs.set_flags("alice", "phoenix", [Flags.PROCESSED])
    await blobs.delete_blob("alice", "phoenix")
    await write(blobs, "alice", "phoenix", b"new")
    assert await read(blobs, "alice", "phoenix") == b"new"
    assert await blobs.list_blobs("alice", deleted=True) == []
    assert await blobs.list_blobs("alice") == ["phoenix"]
    assert await blobs.get_flags("alice", "phoenix") == []


@deferred_test
async def test_flags_are_replaced_and_filtered(blobs):
    for name in ("a", "b", "c"):
        await write(blobs, "alice", name, name.encode())
    assert await blobs.get_flags("alice", "a") == []
    await blobs.set_flags("alice", "a", [Flags.PENDING, Flags.FAILED])
    await blobs.set_flags("alice", "b", [Flags.PENDING])
    assert sorted(await blobs.get_flags("alice", "a")) == ["FAILED", "PENDING"]
    assert await blobs.list_blobs("alice", filter_flag=Flags.PENDING) == ["a", "b"]
    assert await blobs.list_blobs("alice", filter_flag=Flags.PENDING, order_by="-date") == [
        "b",
        "a",
    ]
    assert await blobs.list_blobs("alice", filter_flag=Flags.FAILED) == ["a"]
    await blobs.set_flags("alice", "a", [Flags.PROCESSED])
    assert await blobs.get_flags("alice", "a") == ["PROCESSED"]
    assert await blobs.list_blobs("alice", filter_flag=Flags.PENDING) == ["b"]
    await blobs.set_flags("alice", "b", [])
    assert await blobs.get_flags("alice", "b") == []
    await blobs.delete_blob("alice", "a")
    assert await blobs.list_blobs("alice", filter_flag=Flags.PROCESSED) == []
    assert await blobs.list_blobs("alice", filter_flag=Flags.PROCESSED, deleted=True) == []


@deferred_test
async def test_invalid_flags_change_nothing(blobs):
    await write(blobs, "alice", "flagged", b"x")
    await blobs.set_flags("alice", "flagged", [Flags.PENDING])
    for bad in (["PENDING", "DONE"], ["pending"], "PENDING", [None], 3):
        with pytest.raises(InvalidFlag):
            await blobs.set_flags("alice", "flagged", bad)
    assert await blobs.get_flags("alice", "flagged") == ["PENDING"]
    with pytest.raises(InvalidFlag):
        await blobs.list_blobs("alice", filter_flag="DONE")


@deferred_test
async def test_list_orders_by_creation_date(backend, dsn):
    for name in ("first", "second", "third"):
        await write(backend, "alice", name, name.encode())
    # Creation times may tie within a clock tick: set them apart explicitly.
    sql(dsn, """UPDATE pgblobs.blobs SET created_at = now() - make_interval(secs => id * -1)""")
    assert await backend.list_blobs("alice", order_by="date") == ["first", "second", "third"]
    assert await backend.list_blobs("alice", order_by="+date") == ["first", "second", "third"]
    assert await backend.list_blobs("alice", order_by="-date") == ["third", "second", "first"]
    assert sorted(await backend.list_blobs("alice")) == ["first", "second", "third"]
    with pytest.raises(InvalidArgument):
        await backend.list_blobs("alice", order_by="size")
    with pytest.raises(ValueError):
        await backend.list_blobs("alice", order_by="-name")


@deferred_test
async def test_users_do_not_see_each_other(blobs):
    await write(blobs, "alice", "mine", b"alice's")
    await write(blobs, "bob", "mine", b"bob's")
    assert await read(blobs, "bob", "mine") == b"bob's"
    await blobs.delete_blob("bob", "mine")
    assert await read(blobs, "alice", "mine") == b"alice's"
    assert await blobs.count("bob") == 0
    assert await blobs.get_total_storage("bob") == 0


@deferred_test
async def test_total_storage_spans_namespaces_in_kib_rounded_up(blobs):
    assert await blobs.get_total_storage("alice") == 0
    await write(blobs, "alice", "one", b"x")
    assert await blobs.get_total_storage("alice") == 1
    await write(blobs, "alice", "two", content(1023), namespace="mail")
    assert await blobs.get_total_storage("alice") == 1
    await write(blobs, "alice", "three", b"y", namespace="other")
    assert await blobs.get_total_storage("alice") == 2
    await write(blobs, "alice", "four", content(2000))
    assert await blobs.get_total_storage("alice") == 3  # 3025 bytes: 2.95 KiB, rounded up


@pytest.mark.parametrize("known_length", [True, False])
@deferred_test
async def test_quota_refuses_what_does_not_fit(dsn, known_length):
    backend = await PostgresBlobsBackend.connect(dsn, quota_bytes=1000)
    try:
        await write(backend, "alice", "fits", content(600), known_length=known_length)
        with pytest.raises(QuotaExceeded):
            await write(backend, "alice", "too-much", content(401), known_length=known_length)
        await write(backend, "alice", "exactly", content(400), known_length=known_length)
        await backend.delete_blob("alice", "fits")
        await write(backend, "alice", "after-delete", content(600), known_length=known_length)
        # A large upload is stopped when it passes the quota, not at its end.
        with pytest.raises(QuotaExceeded):
            await write(
                backend, "alice", "huge", content(3 * 1024 * 1024), known_length=known_length
            )
    finally:
        await backend.close()


@deferred_test
async def test_quota_overrides_win_over_the_default(dsn):
    backend = await PostgresBlobsBackend.connect(dsn, quota_bytes=10)
    unlimited = await PostgresBlobsBackend.connect(dsn, quota_bytes=None)
    try:
        sql(dsn, "INSERT INTO pgblobs.quotas VALUES ('big', 5000), ('free', NULL), ('none', 0)")
        await write(backend, "big", "a", content(4000))
        await write(backend, "free", "a", content(300_000))
        with pytest.raises(QuotaExceeded):
            await write(backend, "alice", "a", content(11))
        with pytest.raises(QuotaExceeded):
            await write(unlimited, "none", "a", b"x")
        await write(unlimited, "alice", "a", content(300_000))
    finally:
        await backend.close()
        await unlimited.close()


@deferred_test
async def test_connect_refuses_a_database_without_the_schema(scratch_dsn):
    with pytest.raises(SchemaNotReady, match="pgblobs db upgrade"):
        await PostgresBlobsBackend.connect(scratch_dsn)


@deferred_test
async def test_connect_refuses_a_schema_behind_head(scratch_dsn):
    sql(scratch_dsn, "CREATE SCHEMA pgblobs")
    sql(scratch_dsn, "CREATE TABLE pgblobs.alembic_version (version_num text)")
    sql(scratch_dsn, "INSERT INTO pgblobs.alembic_version VALUES ('0000')")
    with pytest.raises(SchemaNotReady, match="pgblobs db upgrade"):
        await PostgresBlobsBackend.connect(scratch_dsn)


@deferred_test
async def test_close_releases_every_connection(dsn):
    from tests.helpers import sleep

    # Only this test's sessions are counted: other tests' sessions may still
    # be closing.
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'close-test'"
    for _ in range(3):
        backend = await PostgresBlobsBackend.connect(
            dsn + " application_name=close-test", pool_size=4
        )
        await write(backend, "alice", "x", content(400_000))
        await backend.delete_blob("alice", "x")
        assert sql(dsn, count)[0][0] > 0
        await backend.close()
    await sleep(1)  # a reconnecting pool would have reopened by now
    assert sql(dsn, count)[0][0] == 0


@deferred_test
async def test_an_opened_blob_reads_its_own_version_or_nothing(blobs):
    """Size, tag and bytes of one read come from one version, even when the
    blob is deleted and rewritten (same size, other bytes) in between."""
    from tests.helpers import Collector

    for size in (100, 1_000_000):
        blob_id = f"v{size}"
        await write(blobs, "alice", blob_id, content(size, seed=1))
        opened = await blobs.open_blob("alice", blob_id)
        await blobs.delete_blob("alice", blob_id)
        await write(blobs, "alice", blob_id, content(size, seed=2))
        collector = Collector()
        try:
            await opened.read(collector)
        except BlobNotFound:
            assert collector.data == b""  # the version is gone: nothing was sent
        else:
            assert collector.data == content(size, seed=1)
            assert opened.tag == base64.urlsafe_b64encode(collector.data[-16:]).decode()
        fresh = await blobs.open_blob("alice", blob_id)
        assert (fresh.size, fresh.tag) == (
            size,
            base64.urlsafe_b64encode(content(size, seed=2)[-16:]).decode(),
        )
        assert await read(blobs, "alice", blob_id) == content(size, seed=2)


@deferred_test
async def test_open_blobs_keeps_order_and_names_the_missing_one(blobs):
    for i in range(250):
        await write(blobs, "alice", f"b{i}", content(10 + i, seed=i))
    wanted = [f"b{i}" for i in reversed(range(250))] + ["b7", "b7"]
    opened = await blobs.open_blobs("alice", wanted)
    assert [blob.blob_id for blob in opened] == wanted
    assert [blob.size for blob in opened] == [10 + int(name[1:]) for name in wanted]
    with pytest.raises(BlobNotFound, match="nope"):
        await blobs.open_blobs("alice", ["b1", "nope", "b2"])


@deferred_test
async def test_a_user_keeps_at_most_quota_blobs_live_blobs(blobs):
    blobs.quota_blobs = 3
    outcomes = await gather(*[write(blobs, "alice", f"s{i}", b"") for i in range(4)])
    assert outcomes[:3] == [None, None, None]
    assert isinstance(outcomes[3], QuotaExceeded)
    # Streamed writes (unknown length) and stream uploads count too.
    with pytest.raises(QuotaExceeded):
        await write(blobs, "alice", "big", b"x", known_length=False)
    with pytest.raises(QuotaExceeded):
        await blobs.write_blobs("alice", [("u0", 0, lambda: producer(b""))])
    await blobs.delete_blob("alice", "s0")
    await write(blobs, "alice", "big", b"x", known_length=False)
    assert sorted(await blobs.list_blobs("alice")) == ["big", "s1", "s2"]
    assert await write(blobs, "bob", "b", b"") is None  # every user has a count of their own
