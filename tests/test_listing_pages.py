"""list_blob_pages: the ids of list_blobs, page by page, on both backends;
the next page waits for the consumer; every page is an index range scan.
list_blob_page: the same pages one call at a time, each by its token."""

import pytest
from twisted.internet import defer

from pgblobs import Flags, InvalidArgument, InvalidFlag, InvalidName, MemoryBlobsBackend
from pgblobs.db import schema
from pgblobs.db.queries import SQL
from tests.helpers import deferred_test, sql, statements_sent, write

PAGE = 4


@pytest.fixture(params=["postgres", "memory"])
def blobs(request):
    if request.param == "memory":
        return MemoryBlobsBackend()
    return request.getfixturevalue("backend")


async def pages_of(backend, user, page_size=PAGE, **listing):
    pages = []
    await backend.list_blob_pages(user, pages.append, page_size=page_size, **listing)
    return pages


def flat(pages):
    return [blob_id for page in pages for blob_id in page]


async def populate(backend):
    """alice: 13 blobs in default (3 deleted, 5 flagged PENDING), 8 in mail (every
    one flagged, 2 deleted); bob: 2. One statement per write, so dates ascend."""
    for i in range(13):
        await write(backend, "alice", f"d{i:02d}", b"x")
    for i in range(8):
        await write(backend, "alice", f"m{i:02d}", b"y", namespace="mail")
    for i in range(2):
        await write(backend, "bob", f"b{i}", b"z")
    for i in (0, 2, 4, 6, 8):
        await backend.set_flags("alice", f"d{i:02d}", [Flags.PENDING])
    for i in range(8):
        await backend.set_flags("alice", f"m{i:02d}", [Flags.FAILED], namespace="mail")
    for blob_id in ("d01", "d02", "d12"):
        await backend.delete_blob("alice", blob_id)
    for blob_id in ("m03", "m07"):
        await backend.delete_blob("alice", blob_id, namespace="mail")


LISTINGS = [
    dict(order_by=order_by, namespace=namespace, deleted=deleted, filter_flag=flag)
    for order_by in (None, "date", "+date", "-date")
    for namespace in ("", "mail")
    for deleted in (False, True)
    for flag in (None, Flags.PENDING, Flags.FAILED)
]


@deferred_test
async def test_pages_hold_exactly_the_ids_of_list_blobs_in_order(blobs):
    await populate(blobs)
    assert await blobs.list_blobs("alice") == [
        f"d{i:02d}" for i in range(13) if i not in (1, 2, 12)
    ]  # the listing the pages must match is what it should be
    several = 0
    for listing in LISTINGS:
        pages = await pages_of(blobs, "alice", **listing)
        expected = await blobs.list_blobs("alice", **listing)
        assert flat(pages) == expected, listing
        assert all(0 < len(page) <= PAGE for page in pages), (listing, pages)
        assert all(len(page) == PAGE for page in pages[:-1]), (listing, pages)
        several += len(pages) > 1
    assert several >= 8  # most listings above span pages
    newest_first = await pages_of(blobs, "alice", order_by="-date")
    assert newest_first == [
        ["d11", "d10", "d09", "d08"],
        ["d07", "d06", "d05", "d04"],
        ["d03", "d00"],
    ]
    assert await pages_of(blobs, "alice", namespace="mail", filter_flag=Flags.FAILED) == [
        ["m00", "m01", "m02", "m04"],
        ["m05", "m06"],
    ]


@deferred_test
async def test_a_listing_of_whole_pages_and_an_empty_one(blobs):
    for i in range(2 * PAGE):
        await write(blobs, "alice", f"w{i}", b"x")
    assert await pages_of(blobs, "alice") == [
        [f"w{i}" for i in range(PAGE)],
        [f"w{i}" for i in range(PAGE, 2 * PAGE)],
    ]
    assert await pages_of(blobs, "nobody") == []
    assert await pages_of(blobs, "alice", deleted=True, filter_flag=Flags.PENDING) == []


@deferred_test
async def test_blobs_sharing_a_date_are_paged_by_row(backend, dsn):
    # A group commit stores its blobs in one transaction: one created_at.
    sql(
        dsn,
        "INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256,"
        " created_at) SELECT 'alice', 'default', 's' || i, i, 0, 't', '\\x00', '2026-01-01'"
        " FROM generate_series(1, 10) AS i",
    )
    expected = [f"s{i}" for i in range(1, 11)]
    assert flat(await pages_of(backend, "alice", page_size=3)) == expected
    assert flat(await pages_of(backend, "alice", page_size=3, order_by="-date")) == expected[::-1]


@deferred_test
async def test_the_next_page_waits_for_the_consumer(backend):
    for i in range(4 * PAGE):
        await write(backend, "alice", f"w{i}", b"x")
    statements = statements_sent(backend)

    def pages_asked():
        return [name for name in statements if name.startswith("list_")]

    taken = []
    waiting = []

    def each_page(ids):
        taken.append(ids)
        waiting.append(defer.Deferred())
        return waiting[-1]

    listing = backend.list_blob_pages("alice", each_page, page_size=PAGE)
    while len(pages_asked()) < 2:  # a round trip at a time: the first page, and the next
        await backend.database.ping()
    for _ in range(3):
        await backend.database.ping()
    # One page ahead at most: the second is read, not given, while the first is held.
    assert len(taken) == 1 and pages_asked() == ["list_live_page"] * 2
    waiting[0].callback(None)
    while len(taken) < 2:
        await backend.database.ping()
    assert len(pages_asked()) == 3
    waiting[1].errback(RuntimeError("the client went away"))
    with pytest.raises(RuntimeError, match="went away"):
        await listing
    # A failed consumer ends the listing: no page after the one read ahead.
    assert len(taken) == 2 and len(pages_asked()) == 3


@deferred_test
async def test_bad_arguments_fail_before_any_page(blobs):
    pages = []
    for arguments, error in [
        (dict(user="no/such"), InvalidName),
        (dict(user="alice", namespace="a b"), InvalidName),
        (dict(user="alice", order_by="size"), InvalidArgument),
        (dict(user="alice", filter_flag="DONE"), InvalidFlag),
    ]:
        with pytest.raises(error):
            await blobs.list_blob_pages(each_page=pages.append, **arguments)
    assert pages == []


async def pages_by_token(store, user, limit=PAGE, **listing):
    """list_blob_page from the first page to the last, each asked by the token of the one before."""
    pages, token = [], None
    while True:
        ids, token = await store.list_blob_page(user, limit, token, **listing)
        pages.append(ids)
        if token is None:
            return pages


@deferred_test
async def test_pages_by_token_hold_exactly_the_ids_of_list_blobs_in_order(blobs):
    await populate(blobs)
    for listing in LISTINGS:
        pages = await pages_by_token(blobs, "alice", **listing)
        expected = await blobs.list_blobs("alice", **listing)
        assert flat(pages) == expected, listing
        # Whole pages but the last, and no token for a page with nothing to begin with.
        assert [len(page) for page in pages[:-1]] == [PAGE] * (len(pages) - 1), (listing, pages)
        assert 0 < len(pages[-1]) <= PAGE or expected == [], (listing, pages)
    assert await pages_by_token(
        blobs, "alice", limit=2, order_by="-date", filter_flag="PENDING"
    ) == [
        ["d08", "d06"],
        ["d04", "d00"],
    ]
    assert await blobs.list_blob_page("alice", 10_000) == (await blobs.list_blobs("alice"), None)


@deferred_test
async def test_a_page_token_goes_on_where_its_page_ended_whatever_changed(blobs):
    for i in range(6):
        await write(blobs, "alice", f"w{i}", b"x")
    first, token = await blobs.list_blob_page("alice", 2)
    assert first == ["w0", "w1"]
    await blobs.delete_blob("alice", "w0")  # behind: an offset would skip w2
    await blobs.delete_blob("alice", "w2")  # where the next page began
    await write(blobs, "alice", "w6", b"x")
    ids, later = await blobs.list_blob_page("alice", 2, token)
    assert ids == ["w3", "w4"] and later is not None
    assert await blobs.list_blob_page("alice", 5, later) == (["w5", "w6"], None)


@deferred_test
async def test_a_bad_limit_or_token_fails_with_invalid_argument(blobs):
    for i in range(3):
        await write(blobs, "alice", f"w{i}", b"x")
    _, token = await blobs.list_blob_page("alice", 1)
    for arguments in [
        dict(limit=0),
        dict(limit=-1),
        dict(limit=1, page="garbage"),
        dict(limit=1, page=token[:-1] + ("A" if token[-1] != "A" else "B")),
        dict(limit=1, page=token, order_by="-date"),
        dict(limit=1, page=token, deleted=True),
        dict(limit=1, page=token, namespace="mail"),
        dict(limit=1, page=token, filter_flag=Flags.PENDING),
    ]:
        with pytest.raises(InvalidArgument):
            await blobs.list_blob_page("alice", **arguments)
    with pytest.raises(InvalidArgument):
        await blobs.list_blob_page("bob", 1, token)
    for arguments, error in [
        (dict(user="no/such"), InvalidName),
        (dict(user="alice", order_by="size"), InvalidArgument),
        (dict(user="alice", filter_flag="DONE"), InvalidFlag),
    ]:
        with pytest.raises(error):
            await blobs.list_blob_page(limit=1, **arguments)


PAGE_STATEMENTS = [
    name for name in SQL if name.startswith("list_") and name.endswith(("_page", "_page_desc"))
]

SEED = """
    INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256,
                               created_at, deleted_at)
    SELECT CASE WHEN i %% 2 = 0 THEN 'heavy' ELSE 'other' END, 'default', 'b' || i,
           CASE WHEN i %% 10 = 1 THEN NULL ELSE i END, 0, 't', '\\x00',
           now() - make_interval(secs => i), CASE WHEN i %% 10 = 1 THEN now() END
    FROM generate_series(1, 100000) AS i;
    INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id, created_at, flag)
    SELECT id, user_id, namespace, blob_id, created_at, 'PENDING' FROM pgblobs.blobs
    WHERE deleted_at IS NULL;
"""


def test_every_page_is_one_index_range_scan_before_and_after_statistics(scratch_dsn):
    assert len(PAGE_STATEMENTS) == 6
    schema.upgrade(scratch_dsn)
    sql(scratch_dsn, SEED, {})
    params = {"user": "heavy", "namespace": "default", "flag": "PENDING", "page_size": 10_000}
    middle = {
        "after_date": sql(scratch_dsn, "SELECT now() - interval '5 hours'")[0][0],
        "after_row": 0,
    }
    for statistics in ("none", "analysed"):
        for name in PAGE_STATEMENTS:
            first = ("infinity", 2**63 - 1) if name.endswith("_desc") else ("-infinity", 0)
            for after in ({"after_date": first[0], "after_row": first[1]}, middle):
                plan = "\n".join(
                    row[0]
                    for row in sql(scratch_dsn, "EXPLAIN " + SQL[name], dict(params, **after))
                )
                assert "Seq Scan" not in plan and "Bitmap" not in plan, f"{name}:\n{plan}"
                assert "Sort" not in plan, (
                    f"{name}, {statistics}: sorted, not in index order\n{plan}"
                )
                assert "Index Only Scan" in plan, f"{name}:\n{plan}"
                assert ("Backward" in plan) == name.endswith("_desc"), f"{name}:\n{plan}"
        sql(scratch_dsn, "VACUUM ANALYZE pgblobs.blobs")
        sql(scratch_dsn, "VACUUM ANALYZE pgblobs.blob_flags")
