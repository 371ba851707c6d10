"""Backpressure and failures while content streams in and out."""

import pytest

from pgblobs import PostgresBlobsBackend, TransferStopped
from pgblobs.transfer import CHUNK, DownloadPush, UploadPipe
from tests.helpers import (
    Collector,
    ScriptedProducer,
    content,
    deferred_test,
    read,
    sleep,
    sql,
    until,
    write,
)


def assert_nothing_stored(dsn):
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0] == 0
    assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 0


@pytest.mark.parametrize("chunk_size, fail_after", [(10, 1), (64 * 1024, 40), (64 * 1024, 0)])
@deferred_test
async def test_a_producer_failing_midway_leaves_nothing_behind(
    backend, dsn, chunk_size, fail_after
):
    broken = ScriptedProducer(
        [b"z" * chunk_size] * 100, fail_after=fail_after, error=OSError("disk on fire")
    )
    with pytest.raises(OSError, match="disk on fire"):
        await backend.write_blob("alice", "broken", broken)
    assert_nothing_stored(dsn)
    # The id is still free and the backend still works.
    await write(backend, "alice", "broken", b"fine")
    assert await read(backend, "alice", "broken") == b"fine"


@deferred_test
async def test_a_fast_producer_is_paused_while_the_database_catches_up(backend):
    chunks = [content(64 * 1024, seed=i) for i in range(512)]  # 32 MiB
    fast = ScriptedProducer(chunks)
    await backend.write_blob("alice", "big", fast)
    assert fast.pauses > 0
    assert await read(backend, "alice", "big") == b"".join(chunks)


@deferred_test
async def test_the_upload_pipe_buffers_a_bounded_amount():
    class Recorder:
        paused = 0

        def pauseProducing(self):
            self.paused += 1

    from twisted.internet import reactor

    producer = Recorder()
    pipe = UploadPipe(reactor, producer)
    for _ in range(UploadPipe.HIGH_WATER // CHUNK):
        pipe.write(b"x" * CHUNK)
    assert producer.paused == 1


@deferred_test
async def test_a_paused_consumer_stops_the_flow_until_resumed(backend):
    data = content(12 * CHUNK + 5)
    await write(backend, "alice", "slow", data)

    class Pausing(Collector):
        def write(self, chunk):
            super().write(chunk)
            if len(self.chunks) == 1:
                self.producer.pauseProducing()

    consumer = Pausing()
    reading = backend.read_blob("alice", "slow", consumer)
    # Until what the worker had handed over when the flow paused has landed.
    await until(
        lambda: consumer.chunks and len(consumer.chunks) == consumer.producer.delivered,
        "the chunks in flight delivered",
    )
    held = len(consumer.chunks)
    assert held <= 1 + DownloadPush.IN_FLIGHT
    await sleep(0.3)  # the scenario: a while paused, in which nothing may come
    assert len(consumer.chunks) == held  # nothing more while paused
    consumer.producer.resumeProducing()
    await reading
    assert consumer.data == data
    assert consumer.producer is None  # unregistered at the end


@deferred_test
async def test_a_consumer_that_stops_ends_the_read_and_frees_its_connection(dsn):
    backend = await PostgresBlobsBackend.connect(dsn, pool_size=1)
    try:
        data = content(8 * CHUNK)
        await write(backend, "alice", "abandoned", data)

        class Leaving(Collector):
            def write(self, chunk):
                super().write(chunk)
                self.producer.stopProducing()

        with pytest.raises(TransferStopped):
            await backend.read_blob("alice", "abandoned", Leaving())
        # With one content connection, this only works if it was released.
        assert await read(backend, "alice", "abandoned") == data
        open_transactions = sql(
            dsn,
            """
            SELECT count(*) FROM pg_stat_activity
            WHERE datname = current_database() AND state LIKE 'idle in transaction%%'""",
        )
        assert open_transactions[0][0] == 0
    finally:
        await backend.close()


@deferred_test
async def test_a_read_started_before_a_delete_delivers_the_old_content(backend):
    data = content(10 * CHUNK, seed=9)
    await write(backend, "alice", "racy", data)

    class DeleteMidway(Collector):
        def write(self, chunk):
            super().write(chunk)
            if len(self.chunks) == 1:
                self.deleting = backend.delete_blob("alice", "racy")

    consumer = DeleteMidway()
    await backend.read_blob("alice", "racy", consumer)
    await consumer.deleting
    assert consumer.data == data
    assert await backend.list_blobs("alice", deleted=True) == ["racy"]
