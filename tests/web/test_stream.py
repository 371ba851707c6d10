"""/stream/{user} in both directions, and clients that leave mid-transfer."""

import base64
import json

import treq

from tests.helpers import (
    content,
    deferred_test,
    raw_http,
    raw_request,
    sql,
    statements_sent,
    until,
)


def parse_download(body):
    blobs = []
    while body:
        size = int(body[:8], 16)
        tag = body[8:32].decode().strip()
        assert body[32:33] == b" "
        blobs.append((tag, body[33 : 33 + size]))
        body = body[33 + size :]
    return blobs


async def stream_status(server, path, body, auth=True):
    """The status of POST /stream/{path} with ``body`` (alice's token unless not ``auth``)."""
    headers = server.auth() if auth else {}
    return (await treq.post(f"{server.url}/stream/{path}", data=body, headers=headers)).code


async def upload(server, listing, payload, namespace=None):
    url = f"{server.url}/stream/alice?direction=upload"
    if namespace:
        url += f"&namespace={namespace}"
    body = json.dumps(listing).encode() + b"\n" + payload
    response = await treq.post(url, data=body, headers=server.auth())
    return response.code, await response.content()


@deferred_test
async def test_upload_then_download_many_blobs(server):
    blobs = {
        f"s{i}": content(size, seed=i)
        for i, size in enumerate([0, 1, 16, 17, 300_000, 2_500_000, 40])
    }
    listing = [[blob_id, len(data)] for blob_id, data in blobs.items()]
    code, _ = await upload(server, listing, b"".join(blobs.values()), namespace="mail")
    assert code == 200
    response = await treq.post(
        f"{server.url}/stream/alice?direction=download&namespace=mail",
        data=json.dumps(list(blobs)).encode(),
        headers=server.auth(),
    )
    assert response.code == 200
    received = parse_download(await response.content())
    assert [data for _, data in received] == list(blobs.values())
    for (tag, _), data in zip(received, blobs.values(), strict=True):
        assert tag == base64.urlsafe_b64encode(data[-16:]).decode()


@deferred_test
async def test_download_of_a_missing_blob_is_404(server):
    await upload(server, [["here", 3]], b"abc")
    response = await treq.post(
        f"{server.url}/stream/alice?direction=download",
        data=b'["here", "gone"]',
        headers=server.auth(),
    )
    assert response.code == 404


@deferred_test
async def test_upload_lists_that_do_not_match_the_body(server):
    # Shorter than listed.
    code, _ = await upload(server, [["a", 10]], b"12345")
    assert code == 400
    # Longer than listed: refused, and (all or nothing) not even the listed blob is stored.
    code, _ = await upload(server, [["b", 3]], b"123456")
    assert code == 400
    response = await treq.get(f"{server.url}/blobs/alice/", headers=server.auth())
    assert await response.json() == []
    # An empty listing is a valid upload of nothing, but only with nothing after it.
    assert (await upload(server, [], b""))[0] == 200
    assert (await upload(server, [], b"stray"))[0] == 400
    for bad in ([["c", -1]], [["c"]], [[1, 2]], {"c": 1}, [["../c", 1]], [["c", True]]):
        code, _ = await upload(server, bad, b"x")
        assert code == 400, bad
    assert await stream_status(server, "alice?direction=sideways", b"[]") == 400
    assert await stream_status(server, "alice?direction=upload", b"not json\n") == 400


@deferred_test
async def test_an_upload_stream_is_all_or_nothing(server, dsn):
    await upload(server, [["taken", 1]], b"t")
    code, _ = await upload(server, [["new", 2], ["taken", 2], ["later", 2]], b"aabbcc")
    assert code == 409
    response = await treq.get(f"{server.url}/blobs/alice/", headers=server.auth())
    assert await response.json() == ["taken"]
    # A failure found only once bytes flowed (the body is longer than its
    # listing) stores nothing either, and leaves no large object behind.
    code, _ = await upload(server, [["first", 3], ["second", 3]], b"aaabbbEXTRA")
    assert code == 400
    response = await treq.get(f"{server.url}/blobs/alice/", headers=server.auth())
    assert await response.json() == ["taken"]
    assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 1
    # So the same request, sent again whole, finishes.
    code, _ = await upload(server, [["first", 3], ["second", 3]], b"aaabbb")
    assert code == 200
    response = await treq.get(f"{server.url}/blobs/alice/", headers=server.auth())
    assert sorted(await response.json()) == ["first", "second", "taken"]


@deferred_test
async def test_an_upload_stream_over_quota_stores_nothing(server, dsn):
    sql(dsn, "INSERT INTO pgblobs.quotas (user_id, quota_bytes) VALUES ('alice', 10)")
    code, _ = await upload(server, [["a", 6], ["b", 6]], b"aaaaaabbbbbb")
    assert code == 507
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0] == 0
    code, _ = await upload(server, [["a", 6], ["a", 4]], b"aaaaaabbbb")
    assert code == 409  # one id twice in one request
    code, _ = await upload(server, [["a", 6], ["b", 4]], b"aaaaaabbbb")
    assert code == 200


@deferred_test
async def test_an_upload_of_more_blobs_than_max_stream_ids_is_413(server, dsn):
    listing = [[f"s{i}", 0] for i in range(1001)]  # the server allows 1000 per request
    code, reason = await upload(server, listing, b"")
    assert code == 413, reason
    assert b"at most 1000 blobs" in reason
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0] == 0
    code, _ = await upload(server, listing[:1000], b"")
    assert code == 200
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0] == 1000


@deferred_test
async def test_stream_needs_the_users_token(server):
    assert await stream_status(server, "alice?direction=download", b"[]", auth=False) == 401
    assert await stream_status(server, "bob?direction=download", b"[]") == 403


@deferred_test
async def test_a_client_leaving_mid_put_stores_nothing(server, dsn):
    head = raw_request(server, "PUT", "/blobs/alice/partial", "Content-Length: 10000000")
    await raw_http(server, head + b"x" * 3_000_000, timeout=1)
    idle = {"statements": 0, "content": 0}
    await until(lambda: server.backend.database.usage() == idle, "idle")
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0] == 0
    assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 0
    response = await treq.put(
        f"{server.url}/blobs/alice/partial", data=b"later", headers=server.auth()
    )
    assert response.code == 200


@deferred_test
async def test_a_client_leaving_mid_get_releases_the_read(server):
    data = content(20 * 1024 * 1024)
    response = await treq.put(f"{server.url}/blobs/alice/big", data=data, headers=server.auth())
    assert response.code == 200
    request = raw_request(server, "GET", "/blobs/alice/big")

    import socket

    from twisted.internet import threads

    def read_a_little_then_leave():
        with socket.create_connection(("127.0.0.1", server.port.getHost().port)) as sock:
            sock.sendall(request)
            sock.recv(65536)

    await threads.deferToThread(read_a_little_then_leave)
    await until(lambda: server.backend.database.usage()["content"] == 0, "released")


@deferred_test
async def test_download_of_many_small_blobs_keeps_their_order(server):
    blobs = {f"m{i}": content(40 + i, seed=i) for i in range(300)}
    code, _ = await upload(
        server, [[k, len(v)] for k, v in blobs.items()], b"".join(blobs.values())
    )
    assert code == 200
    wanted = list(reversed(blobs))
    sent = statements_sent(server.backend)
    response = await treq.post(
        f"{server.url}/stream/alice?direction=download",
        data=json.dumps(wanted).encode(),
        headers=server.auth(),
    )
    assert response.code == 200
    assert [data for _, data in parse_download(await response.content())] == [
        blobs[k] for k in wanted
    ]
    # One lookup per 100 ids, one statement per 25 contents: not one per blob.
    assert sent.count("open_blobs") == 3
    assert sent.count("versions_content") == 12
    assert "version_bytes" not in sent


def chunks_of(port, request):
    """Blocking: send ``request``; the status line, headers and the body's
    chunks one by one, as a chunked-transfer decoder hands them over."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        reader = connection.makefile("rb")
        status = reader.readline()
        headers = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        chunks = []
        if headers.get("transfer-encoding") == "chunked":
            while (size := int(reader.readline().split(b";")[0], 16)) > 0:
                chunks.append(reader.read(size))
                assert reader.read(2) == b"\r\n"
        return status, headers, chunks


class ChunkwiseRecords:
    """Reads stream records as Soledad's client does: every chunk that
    completes a header must split on spaces into exactly the header and
    what follows it, and a blob's content never shares a chunk with the next."""

    def __init__(self):
        self.blobs = []
        self._pending = b""
        self._size = None
        self._content = b""

    def write(self, chunk):
        if self._size is None:
            self._pending += chunk
            if b" " in self._pending:
                marker, rest = self._pending.split(b" ")  # two parts, or this raises
                self._size, self._tag = int(marker[:8], 16), marker[8:].decode()
                self._pending, self._content = b"", rest
        else:
            assert len(self._content) + len(chunk) <= self._size, "a chunk spans two blobs"
            self._content += chunk
        if self._size is not None and len(self._content) == self._size:
            self.blobs.append((self._tag, self._content))
            self._size, self._content = None, b""


@deferred_test
async def test_download_frames_each_record_as_soledad_reads_it(server):
    from twisted.internet import threads

    # Contents full of the separator; each at least 16 bytes, as Soledad's
    # blobs (which end with their tag) are, so no tag is padded with spaces.
    blobs = {
        "one": b"a b c " * 7,
        "two": content(1_500_000) + b" " * 20,
        "three": b" x y " * 4,
        "four": content(5000, seed=4),
    }
    code, _ = await upload(
        server, [[k, len(v)] for k, v in blobs.items()], b"".join(blobs.values())
    )
    assert code == 200
    body = json.dumps(list(blobs)).encode()
    request = raw_request(
        server,
        "POST",
        "/stream/alice?direction=download",
        f"Content-Length: {len(body)}",
        body=body,
    )
    status, headers, chunks = await threads.deferToThread(
        chunks_of, server.port.getHost().port, request
    )
    assert status.startswith(b"HTTP/1.1 200")
    assert "content-length" not in headers and headers["transfer-encoding"] == "chunked"
    records = ChunkwiseRecords()
    for chunk in chunks:
        records.write(chunk)
    assert [data for _, data in records.blobs] == list(blobs.values())
    assert [tag for tag, _ in records.blobs] == [
        base64.urlsafe_b64encode(data[-16:]).decode() for data in blobs.values()
    ]


@deferred_test
async def test_stream_download_ids_are_bounded(server):
    await upload(server, [["one", 1]], b"1")
    response = await treq.post(
        f"{server.url}/stream/alice?direction=download",
        data=json.dumps(["one"] * 1001).encode(),
        headers=server.auth(),
    )
    assert response.code == 413
    assert b"at most 1000 ids" in await response.content()
    response = await treq.post(
        f"{server.url}/stream/alice?direction=download",
        data=json.dumps(["one"] * 1000).encode(),
        headers=server.auth(),
    )
    assert response.code == 200
    assert len(parse_download(await response.content())) == 1000
