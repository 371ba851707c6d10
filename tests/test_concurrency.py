"""Uniqueness and quota hold across backends (as across server nodes)."""

from pgblobs import BlobExists, PostgresBlobsBackend, QuotaExceeded
from tests.helpers import content, deferred_test, gather, read, write


async def two_backends(dsn, **options):
    return (
        await PostgresBlobsBackend.connect(dsn, pool_size=4, **options),
        await PostgresBlobsBackend.connect(dsn, pool_size=4, **options),
    )


@deferred_test
async def test_concurrent_writes_of_one_id_have_exactly_one_winner(dsn):
    nodes = await two_backends(dsn)
    try:
        sizes = [10, 300_000, 2_000_000, 5] * 3
        results = await gather(
            *[
                write(
                    nodes[i % 2],
                    "alice",
                    "contended",
                    content(size, seed=i),
                    known_length=bool(i % 3),
                )
                for i, size in enumerate(sizes)
            ]
        )
        winners = [i for i, result in enumerate(results) if result is None]
        assert len(winners) == 1
        assert all(isinstance(r, BlobExists) for r in results if r is not None)
        winner = winners[0]
        assert await read(nodes[0], "alice", "contended") == content(sizes[winner], seed=winner)
        assert await nodes[1].count("alice") == 1
    finally:
        for node in nodes:
            await node.close()


@deferred_test
async def test_concurrent_writes_near_the_quota_never_exceed_it(dsn):
    quota = 1_000_000
    nodes = await two_backends(dsn, quota_bytes=quota)
    try:
        results = await gather(
            *[
                write(
                    nodes[i % 2],
                    "alice",
                    f"blob-{i}",
                    content(300_000, seed=i),
                    known_length=bool(i % 2),
                )
                for i in range(12)
            ]
        )
        assert sum(result is None for result in results) == 3
        assert all(isinstance(r, QuotaExceeded) for r in results if r is not None)
        assert await nodes[0].get_total_storage("alice") * 1024 <= quota + 1023
        assert await nodes[1].count("alice") == 3
    finally:
        for node in nodes:
            await node.close()
