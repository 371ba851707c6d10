"""The contract the site relies on (IBlobStore, IOpenBlob, IBodyOnDemand),
declared and kept by both stores: PostgresBlobsBackend on a real server and
MemoryBlobsBackend."""

import pytest
from twisted.internet import defer
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from pgblobs import BlobExists, BlobNotFound, MemoryBlobsBackend
from pgblobs.interfaces import IBlobStore, IBodyOnDemand, IOpenBlob, IStampedBody
from pgblobs.mail import DeliveredMessage
from pgblobs.versions import INLINE_LIMIT
from pgblobs.web.request import RequestBody
from tests.helpers import Collector, content, deferred_test, producer, read, write

SMALL = content(1000)
LARGE = content(INLINE_LIMIT + 1, seed=3)


@pytest.fixture(params=["postgres", "memory"])
def store(request):
    """PostgresBlobsBackend on a real server, then MemoryBlobsBackend."""
    return MemoryBlobsBackend() if request.param == "memory" else request.getfixturevalue("backend")


def test_both_stores_provide_the_contract_of_the_site(store):
    assert verifyObject(IBlobStore, store)


async def _read(opened, range=None):
    consumer = Collector()
    await opened.read(consumer, range)
    return consumer.data


@deferred_test
async def test_every_open_gives_versions_that_read_themselves(store):
    await write(store, "alice", "small", SMALL)
    await write(store, "alice", "large", LARGE)
    one = [await store.open_blob("alice", name) for name in ("small", "large")]
    many = await store.open_blobs("alice", ["large", "small", "large"])
    loaded = await store.load_small(many)
    for opened in one + many + loaded:
        assert verifyObject(IOpenBlob, opened)
        expected = SMALL if opened.blob_id == "small" else LARGE
        assert (opened.user, opened.size) == ("alice", len(expected))
        assert opened.tag == await store.get_tag("alice", opened.blob_id)
        assert opened.content in (None, expected)
        assert await _read(opened) == expected
        assert await _read(opened, (5, 20)) == expected[5:20]
    # load_small: the same versions in the same order, small ones with their bytes.
    assert [blob.blob_id for blob in loaded] == ["large", "small", "large"]
    assert loaded[1].content == SMALL


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["small", "large"])
@deferred_test
async def test_an_open_version_never_reads_as_its_successor(store, data):
    await write(store, "alice", "doc", data)
    one = await store.open_blob("alice", "doc")
    [batched] = await store.open_blobs("alice", ["doc"])
    await store.delete_blob("alice", "doc")
    await write(store, "alice", "doc", b"the next version")
    for opened in (one, batched):
        try:
            read = await _read(opened)
        except BlobNotFound:
            continue
        assert read == data


@implementer(IBodyOnDemand)
class _BodyOnRequest:
    """A body its client sends only once asked (Expect: 100-continue)."""

    sent_on_demand = True

    def __init__(self, data):
        self.length = len(data)
        self._data = data
        self.started = False

    def startProducing(self, consumer):
        self.started = True
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


@deferred_test
async def test_a_body_sent_on_demand_is_not_asked_for_when_its_id_is_taken(store):
    await write(store, "alice", "taken", b"first")
    body = _BodyOnRequest(b"second")
    assert verifyObject(IBodyOnDemand, body)
    with pytest.raises(BlobExists):
        await store.write_blob("alice", "taken", body)
    assert not body.started
    fresh = _BodyOnRequest(b"stored")
    await store.write_blob("alice", "fresh", fresh)
    assert fresh.started
    assert await _read(await store.open_blob("alice", "fresh")) == b"stored"


def test_the_web_layer_declares_its_bodies_sent_on_demand():
    assert verifyClass(IBodyOnDemand, RequestBody)


@deferred_test
async def test_a_write_repeating_the_live_blob_is_done_and_other_bytes_are_taken(store):
    await write(store, "alice", "small", SMALL)
    await write(store, "alice", "large", LARGE)
    for known_length in (True, False):
        await write(store, "alice", "small", SMALL, known_length=known_length)
        await write(store, "alice", "large", LARGE, known_length=known_length)
        for other in (SMALL[:-1] + b"?", SMALL + b"?"):
            with pytest.raises(BlobExists):
                await write(store, "alice", "small", other, known_length=known_length)
    # Many at once: the repeat is done, the new blob stored; other bytes fail them all.
    await store.write_blobs(
        "alice",
        [("large", len(LARGE), lambda: producer(LARGE)), ("new", 3, lambda: producer(b"new"))],
    )
    with pytest.raises(BlobExists):
        await store.write_blobs(
            "alice",
            [
                ("newer", 1, lambda: producer(b"!")),
                ("small", len(SMALL), lambda: producer(LARGE[: len(SMALL)])),
            ],
        )
    assert sorted(await store.list_blobs("alice")) == ["large", "new", "small"]
    assert [await read(store, "alice", name) for name in ("small", "large")] == [SMALL, LARGE]


@deferred_test
async def test_a_stamped_body_repeats_the_live_blob_when_its_bytes_after_the_stamp_do(store):
    message = b"-----BEGIN PGP MESSAGE-----\n" + SMALL
    earlier = DeliveredMessage("mail", producer(message), delivered_at=1_000_000)
    assert verifyObject(IStampedBody, earlier)
    await store.write_blob("alice", "mail", earlier, "MX")
    stored = await read(store, "alice", "mail", "MX")
    await store.write_blob("alice", "mail", DeliveredMessage("mail", producer(message)), "MX")
    with pytest.raises(BlobExists):
        other = message[:-1] + b"?"
        await store.write_blob("alice", "mail", DeliveredMessage("mail", producer(other)), "MX")
    assert await read(store, "alice", "mail", "MX") == stored
