"""A retried write of the very bytes a live blob has is 200 and stores
nothing (a client whose 200 was lost sends the same PUT again); other bytes
under a taken id stay 409. Over real sockets, for PUT, /stream items and
/incoming deliveries."""

import json
import time

import psycopg2
import pytest
import treq
from twisted.internet import defer

from pgblobs import Flags, accounts, mail
from pgblobs.db.sync import SyncConnection
from pgblobs.mail import ENCODED_PREAMBLE_BYTES, DeliveredMessage, Preamble
from pgblobs.tokens import KnownTokens
from pgblobs.versions import INLINE_LIMIT
from pgblobs.web.site import build_services_site
from tests.helpers import (
    auth_header,
    content,
    deferred_test,
    producer,
    raw_http,
    read,
    sql,
    statements_sent,
    token_header,
    until,
)

SMALL = 1000  # inline, through the group commit
LARGE = INLINE_LIMIT + 1  # streamed into a large object
TAKEN = "a live blob already has this id\n"  # the reason a 409 gives
TAKEN_A = "a live blob already has the id a\n"


def stored(dsn):
    """What is stored, as a client's retry must leave it: the rows (live
    and tombstones), each user's usage, and the large objects."""
    return (
        sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0],
        sql(dsn, "SELECT user_id, namespace, live_blobs, live_bytes FROM pgblobs.usage"),
        sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0],
    )


async def put(server, blob_id, data, known_length=True):
    body = data if known_length else producer(data, known_length=False)
    response = await treq.put(
        f"{server.url}/blobs/alice/{blob_id}", data=body, headers=server.auth()
    )
    return response.code, await response.text()


async def upload(server, listing, payload):
    body = json.dumps(listing).encode() + b"\n" + payload
    response = await treq.post(
        f"{server.url}/stream/alice?direction=upload", data=body, headers=server.auth()
    )
    return response.code, await response.text()


WAYS = {
    "small": (SMALL, True),
    "large": (LARGE, True),
    "large-chunked": (LARGE, False),
}


@pytest.mark.parametrize("way", WAYS)
@deferred_test
async def test_a_retried_put_of_the_same_bytes_is_200_and_stores_nothing(server, dsn, way):
    size, known_length = WAYS[way]
    data = content(size, seed=5)
    assert await put(server, "doc", data) == (200, "")
    before = stored(dsn)
    assert before == (1, [("alice", "default", 1, size)], 1)
    assert await put(server, "doc", data, known_length) == (200, "")
    assert await put(server, "doc", data, known_length) == (200, "")
    assert stored(dsn) == before
    assert await read(server.backend, "alice", "doc") == data
    # A tombstone is no blob to repeat: writing over it stores, as ever.
    await server.backend.delete_blob("alice", "doc")
    assert await put(server, "doc", data, known_length) == (200, "")
    assert stored(dsn) == before  # the tombstone row became the live blob again


@pytest.mark.parametrize("way", WAYS)
@deferred_test
async def test_other_bytes_under_a_taken_id_are_still_409(server, dsn, way):
    size, known_length = WAYS[way]
    data = content(size, seed=5)
    assert (await put(server, "doc", data))[0] == 200
    before = stored(dsn)
    same_size = data[:-1] + bytes([data[-1] ^ 1])
    for other in (same_size, data + b"!", data[:-1]):
        code, reason = await put(server, "doc", other, known_length)
        assert (code, reason) == (409, TAKEN)
    # Only the very bytes repeat the blob.
    assert await put(server, "doc", data, known_length) == (200, "")
    assert stored(dsn) == before
    assert await read(server.backend, "alice", "doc") == data


@deferred_test
async def test_a_retry_sent_on_demand_is_read_only_when_its_size_matches(server, dsn):
    data = content(SMALL, seed=6)
    assert (await put(server, "doc", data))[0] == 200
    before = stored(dsn)

    def on_demand(length, body=b""):
        return (
            b"PUT /blobs/alice/doc HTTP/1.1\r\nHost: x\r\n"
            + auth_header(server)
            + b"\r\nContent-Length: %d\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
            % length
            + body
        )

    # Another size: refused before the body is asked for.
    refused = await raw_http(server, on_demand(SMALL + 1), timeout=3)
    assert refused.startswith(b"HTTP/1.1 409 ") and b"100 Continue" not in refused
    # The same size: asked for, hashed, and found to be the live blob's bytes.
    answer = await raw_http(server, on_demand(SMALL, data))
    assert b"100 Continue" in answer and b"HTTP/1.1 200 " in answer
    assert stored(dsn) == before


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
@deferred_test
async def test_two_identical_puts_at_once_are_both_200_and_store_one_blob(server, dsn, size):
    data = content(size, seed=7)
    # alice's write lock, held from outside, stops both writes at their
    # commit: both found the id free, and the loser learns it is taken
    # only there (the group commit's 'exists', or the live key).
    holder = psycopg2.connect(dsn)
    holder.autocommit = True
    with holder.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(pgblobs.user_lock_key('alice'))")
    sent = statements_sent(server.backend)
    try:
        puts = [defer.ensureDeferred(put(server, "twin", data)) for _ in range(2)]
        if size == SMALL:
            await until(lambda: sent.count("put_small_blobs") >= 2, "both at the commit", 20)
        else:
            await until(
                lambda: (
                    sql(
                        dsn,
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND query LIKE '%%store_blobs_v2%%'",
                    )[0][0]
                    == 2
                ),
                "both at the commit",
                timeout=20,
            )
    finally:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock_all()")
        holder.close()
    assert [await answer for answer in puts] == [(200, ""), (200, "")]
    assert stored(dsn) == (1, [("alice", "default", 1, size)], 1)
    assert await read(server.backend, "alice", "twin") == data


@deferred_test
async def test_a_stream_item_repeating_its_live_blob_is_done_and_the_others_stored(server, dsn):
    first, second = content(LARGE, seed=1), content(SMALL, seed=2)
    assert (await upload(server, [["a", LARGE], ["b", SMALL]], first + second))[0] == 200
    before = stored(dsn)
    # The whole request again: both items done, nothing stored.
    assert await upload(server, [["a", LARGE], ["b", SMALL]], first + second) == (200, "")
    assert stored(dsn) == before
    # One item a retry, one new: the new one is stored, the retry counted as done.
    new = content(300, seed=3)
    assert await upload(server, [["c", 300], ["a", LARGE]], new + first) == (200, "")
    assert stored(dsn) == (3, [("alice", "default", 3, LARGE + SMALL + 300)], 3)
    for blob_id, data in (("a", first), ("b", second), ("c", new)):
        assert await read(server.backend, "alice", blob_id) == data


@deferred_test
async def test_a_stream_item_with_other_bytes_fails_the_whole_upload(server, dsn):
    data = content(SMALL, seed=1)
    assert (await upload(server, [["a", SMALL]], data))[0] == 200
    before = stored(dsn)
    other = data[:-1] + b"?"
    # The same size: read, compared, refused; the new item is not stored either.
    assert await upload(server, [["new", 3], ["a", SMALL]], b"new" + other) == (
        409,
        TAKEN_A,
    )
    # Another size: refused before any byte is read.
    assert (await upload(server, [["new", 3], ["a", SMALL + 1]], b"new" + data + b"!"))[0] == 409
    assert stored(dsn) == before
    assert await read(server.backend, "alice", "a") == data
    # With the very bytes, the same upload stores its new item.
    assert await upload(server, [["new", 3], ["a", SMALL]], b"new" + data) == (200, "")
    assert await read(server.backend, "alice", "new") == b"new"


class Services:
    """The services site over the test's backend, on a real loopback socket,
    with an MX's service token."""

    def __init__(self, server, dsn, port):
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        connection = SyncConnection.connect(dsn)
        try:
            token = accounts.create_service_token(connection, "mx")
        finally:
            connection.close()
        self.headers = {b"Authorization": [token_header("mx", token).encode()]}

    async def deliver(self, blob_id, message):
        response = await treq.put(
            f"{self.url}/incoming/alice/{blob_id}", data=message, headers=self.headers
        )
        return response.code, await response.text()


@pytest.fixture
def services(server, dsn):
    from twisted.internet import reactor

    backend = server.backend
    site = build_services_site(
        backend, KnownTokens(backend.database).service_token_is_valid, backend.database.ping
    )
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield Services(server, dsn, port)
    port.stopListening()
    for channel in list(site.open_channels):
        channel.transport.abortConnection()


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
@deferred_test
async def test_a_redelivered_message_is_200_and_stores_nothing(services, dsn, size):
    message = content(size, seed=8)
    # The first delivery, an hour ago: its preamble carries another time
    # than any retry's would, so the stored bytes cannot simply be compared.
    delivered_at = time.time() - 3600
    await services.server.backend.write_blob(
        "alice",
        "mail-1",
        DeliveredMessage("mail-1", producer(message), delivered_at),
        mail.NAMESPACE,
        flags=[Flags.PENDING],
    )
    first = await read(services.server.backend, "alice", "mail-1", mail.NAMESPACE)
    before = stored(dsn)
    assert await services.deliver("mail-1", message) == (200, "")
    assert stored(dsn) == before
    assert await read(services.server.backend, "alice", "mail-1", mail.NAMESPACE) == first
    assert Preamble.of_stored(first).timestamp == int(delivered_at)
    # Another message under that id: of the same size, or not, still 409.
    other = message[:-1] + bytes([message[-1] ^ 1])
    for refused in (other, message + b"\n"):
        assert await services.deliver("mail-1", refused) == (409, TAKEN)
    assert stored(dsn) == before
    assert first[ENCODED_PREAMBLE_BYTES + 1 :] == message
