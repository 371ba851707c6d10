"""The contract the site relies on (IBlobStore, IOpenBlob, IBodyOnDemand),
declared and kept by both stores: PostgresBlobsBackend on a real server and
MemoryBlobsBackend."""

import pytest
from twisted.internet import defer
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from pgblobs import BlobExists, BlobNotFound, MemoryBlobsBackend
from pgblobs.interfaces import IBlobStore, IBodyOnDemand, IOpenBlob
from pgblobs.versions import INLINE_LIMIT
from pgblobs.web.request import RequestBody
from tests.helpers import Collector, content, deferred_test, write

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
