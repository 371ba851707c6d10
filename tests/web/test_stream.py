"""/stream/{user} in both directions, and clients that leave mid-transfer."""
import base64
import json

import pytest_twisted
import treq

from tests.conftest import sql
from tests.helpers import auth_header, content, raw_http, sleep

deferred_test = pytest_twisted.ensureDeferred


def parse_download(body):
    blobs = []
    while body:
        size = int(body[:8], 16)
        tag = body[8:32].decode().strip()
        assert body[32:33] == b" "
        blobs.append((tag, body[33:33 + size]))
        body = body[33 + size:]
    return blobs


async def upload(server, listing, payload, namespace=None):
    url = f"{server.url}/stream/alice?direction=upload"
    if namespace:
        url += f"&namespace={namespace}"
    body = json.dumps(listing).encode() + b"\n" + payload
    response = await treq.post(url, data=body, headers=server.auth())
    return response.code, await response.content()


@deferred_test
async def test_upload_then_download_many_blobs(server):
    blobs = {f"s{i}": content(size, seed=i)
             for i, size in enumerate([0, 1, 16, 17, 300_000, 2_500_000, 40])}
    listing = [[blob_id, len(data)] for blob_id, data in blobs.items()]
    code, _ = await upload(server, listing, b"".join(blobs.values()), namespace="mail")
    assert code == 200
    response = await treq.post(f"{server.url}/stream/alice?direction=download&namespace=mail",
                               data=json.dumps(list(blobs)).encode(), headers=server.auth())
    assert response.code == 200
    received = parse_download(await response.content())
    assert [data for _, data in received] == list(blobs.values())
    for (tag, _), data in zip(received, blobs.values()):
        assert tag == base64.urlsafe_b64encode(data[-16:]).decode()


@deferred_test
async def test_download_of_a_missing_blob_is_404(server):
    await upload(server, [["here", 3]], b"abc")
    response = await treq.post(f"{server.url}/stream/alice?direction=download",
                               data=b'["here", "gone"]', headers=server.auth())
    assert response.code == 404


@deferred_test
async def test_upload_lists_that_do_not_match_the_body(server):
    # Shorter than listed.
    code, _ = await upload(server, [["a", 10]], b"12345")
    assert code == 400
    # Longer than listed: the blob is stored, the excess is refused.
    code, _ = await upload(server, [["b", 3]], b"123456")
    assert code == 400
    for bad in ([["c", -1]], [["c"]], [[1, 2]], {"c": 1}, [["../c", 1]], [["c", True]]):
        code, _ = await upload(server, bad, b"x")
        assert code == 400, bad
    response = await treq.post(f"{server.url}/stream/alice?direction=sideways",
                               data=b"[]", headers=server.auth())
    assert response.code == 400
    response = await treq.post(f"{server.url}/stream/alice?direction=upload",
                               data=b"not json\n", headers=server.auth())
    assert response.code == 400


@deferred_test
async def test_upload_stream_stops_at_an_existing_blob(server):
    await upload(server, [["taken", 1]], b"t")
    code, _ = await upload(server, [["new", 2], ["taken", 2], ["later", 2]], b"aabbcc")
    assert code == 409
    response = await treq.get(f"{server.url}/blobs/alice/", headers=server.auth())
    assert sorted(await response.json()) == ["new", "taken"]


@deferred_test
async def test_stream_needs_the_users_token(server):
    response = await treq.post(f"{server.url}/stream/alice?direction=download", data=b"[]")
    assert response.code == 401
    response = await treq.post(f"{server.url}/stream/bob?direction=download", data=b"[]",
                               headers=server.auth())
    assert response.code == 403


@deferred_test
async def test_a_client_leaving_mid_put_stores_nothing(server, dsn):
    head = (b"PUT /blobs/alice/partial HTTP/1.1\r\nHost: x\r\n" + auth_header(server) +
            b"\r\nContent-Length: 10000000\r\n\r\n")
    await raw_http(server, head + b"x" * 3_000_000, timeout=1)
    for _ in range(50):
        busy = server.backend.database.usage()
        if busy == {"statements": 0, "content": 0}:
            break
        await sleep(0.1)
    assert busy == {"statements": 0, "content": 0}
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0] == 0
    assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 0
    response = await treq.put(f"{server.url}/blobs/alice/partial", data=b"later",
                              headers=server.auth())
    assert response.code == 200


@deferred_test
async def test_a_client_leaving_mid_get_releases_the_read(server):
    data = content(20 * 1024 * 1024)
    response = await treq.put(f"{server.url}/blobs/alice/big", data=data, headers=server.auth())
    assert response.code == 200
    request = (b"GET /blobs/alice/big HTTP/1.1\r\nHost: x\r\n" + auth_header(server) +
               b"\r\n\r\n")

    import socket
    from twisted.internet import threads

    def read_a_little_then_leave():
        with socket.create_connection(("127.0.0.1", server.port.getHost().port)) as sock:
            sock.sendall(request)
            sock.recv(65536)

    await threads.deferToThread(read_a_little_then_leave)
    for _ in range(50):
        if server.backend.database.usage()["content"] == 0:
            break
        await sleep(0.1)
    assert server.backend.database.usage()["content"] == 0


@deferred_test
async def test_download_of_many_small_blobs_keeps_their_order(server):
    blobs = {f"m{i}": content(40 + i, seed=i) for i in range(300)}
    code, _ = await upload(server, [[k, len(v)] for k, v in blobs.items()], b"".join(blobs.values()))
    assert code == 200
    wanted = list(reversed(blobs))
    response = await treq.post(f"{server.url}/stream/alice?direction=download",
                               data=json.dumps(wanted).encode(), headers=server.auth())
    assert response.code == 200
    assert [data for _, data in parse_download(await response.content())] == [
        blobs[k] for k in wanted]
