"""Every route of PROTOCOL.md over a real socket, with treq."""

import base64
import json

import pytest
import treq
from twisted.web.iweb import UNKNOWN_LENGTH

from pgblobs import Flags
from tests.helpers import (
    auth_header,
    content,
    create_token,
    deferred_test,
    pgblobs_cli,
    raw_http,
    raw_request,
    sql,
)


async def put(server, blob_id, data, user="alice", namespace=None, headers=None):
    url = f"{server.url}/blobs/{user}/{blob_id}"
    if namespace:
        url += f"?namespace={namespace}"
    response = await treq.put(url, data=data, headers={**server.auth(), **(headers or {})})
    return response.code, await response.content()


async def get(server, path, headers=None, user="alice"):
    response = await treq.get(server.url + path, headers={**server.auth(user), **(headers or {})})
    return response, await response.content()


@deferred_test
async def test_root_is_public_json(server):
    response = await treq.get(server.url + "/")
    assert response.code == 200
    assert (await response.json())["blobs"] is True


@deferred_test
async def test_put_then_get_with_tag_and_length(server):
    data = content(300_000, seed=4)
    assert await put(server, "b1", data) == (200, b"")
    response, body = await get(server, "/blobs/alice/b1")
    assert response.code == 200
    assert body == data
    assert response.headers.getRawHeaders(b"tag") == [base64.urlsafe_b64encode(data[-16:])]
    assert response.length == 300_000  # the Content-Length received


@deferred_test
async def test_put_twice_is_409_and_missing_is_404(server):
    assert (await put(server, "b1", b"one"))[0] == 200
    assert (await put(server, "b1", b"two"))[0] == 409
    response, _ = await get(server, "/blobs/alice/nothing")
    assert response.code == 404
    response, body = await get(server, "/blobs/alice/b1")
    assert body == b"one"


@deferred_test
async def test_namespaces(server):
    await put(server, "same", b"default")
    await put(server, "same", b"mail", namespace="mail")
    _, body = await get(server, "/blobs/alice/same?namespace=mail")
    assert body == b"mail"
    _, body = await get(server, "/blobs/alice/?namespace=mail")
    assert json.loads(body) == ["same"]
    _, body = await get(server, "/blobs/alice/?only_count=True&namespace=mail")
    assert json.loads(body) == {"count": 1}


@deferred_test
async def test_flags(server):
    await put(server, "f", b"flag me")
    url = f"{server.url}/blobs/alice/f"
    response = await treq.post(
        url, data=json.dumps([Flags.PENDING]).encode(), headers=server.auth()
    )
    assert response.code == 200
    _, body = await get(server, "/blobs/alice/f?only_flags=True")
    assert json.loads(body) == ["PENDING"]
    _, body = await get(server, "/blobs/alice/?filter_flag=PENDING")
    assert json.loads(body) == ["f"]
    response = await treq.post(url, data=json.dumps(["DONE"]).encode(), headers=server.auth())
    assert response.code == 406
    response = await treq.post(url, data=b"[not json", headers=server.auth())
    assert response.code == 400
    response = await treq.post(url, data=b'{"a": 1}', headers=server.auth())
    assert response.code == 400
    response = await treq.post(url + "x", data=b'["PENDING"]', headers=server.auth())
    assert response.code == 404
    response = await treq.post(
        url, data=b"[" + b'"PENDING",' * 20000 + b'"PENDING"]', headers=server.auth()
    )
    assert response.code == 413
    _, body = await get(server, "/blobs/alice/f?only_flags=True")
    assert json.loads(body) == ["PENDING"]


@deferred_test
async def test_delete_and_tombstones(server):
    await put(server, "d", b"doomed")
    await put(server, "k", b"kept")
    response = await treq.delete(f"{server.url}/blobs/alice/d", headers=server.auth())
    assert response.code == 200
    response = await treq.delete(f"{server.url}/blobs/alice/d", headers=server.auth())
    assert response.code == 404
    _, body = await get(server, "/blobs/alice/?deleted=True")
    assert json.loads(body) == ["d"]
    _, body = await get(server, "/blobs/alice/?deleted=False")
    assert json.loads(body) == ["k"]
    _, body = await get(server, "/blobs/alice/?deleted=false")
    assert json.loads(body) == ["k"]
    _, body = await get(server, "/blobs/alice/?deleted=1")
    assert json.loads(body) == ["d"]


@deferred_test
async def test_listing_order_and_bad_arguments(server):
    for name in ("a", "b", "c"):
        await put(server, name, name.encode())
    _, body = await get(server, "/blobs/alice/?order_by=-date")
    assert json.loads(body) == ["c", "b", "a"]
    _, body = await get(server, "/blobs/alice/?order_by=%2Bdate")
    assert json.loads(body) == ["a", "b", "c"]
    for bad in (
        "order_by=size",
        "deleted=maybe",
        "filter_flag=DONE",
        "namespace=a%2Fb",
        "only_count=yes",
    ):
        response, body = await get(server, f"/blobs/alice/?{bad}")
        assert response.code == 400, bad
        assert body and b"Traceback" not in body


@deferred_test
async def test_a_listing_of_many_pages_is_the_same_json_sent_as_it_is_read(server, dsn):
    sql(
        dsn,
        "INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256,"
        " created_at) SELECT 'alice', 'default', 'many-' || i, i, 0, 't', '\\x00',"
        " now() - make_interval(secs => 30000 - i) FROM generate_series(1, 25000) AS i",
    )
    for query, newest_first in (("", False), ("?order_by=-date", True)):
        response, body = await get(server, "/blobs/alice/" + query)
        assert response.code == 200
        expected = [f"many-{i}" for i in range(1, 25001)]
        if newest_first:
            expected.reverse()
        assert body == json.dumps(expected).encode()  # byte for byte what it always was
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert response.length == UNKNOWN_LENGTH  # streamed (chunked), page by page
    response = await treq.head(server.url + "/blobs/alice/", headers=server.auth())
    assert response.code == 200 and await response.content() == b""
    # A listing of one page is answered whole, with its length, as before.
    response, body = await get(server, "/blobs/alice/?namespace=small")
    assert body == b"[]" and response.length == 2


@pytest.mark.parametrize(
    "header, status, expected, content_range",
    [
        (b"bytes=0-4", 206, b"01234", b"bytes 0-4/10"),
        (b"bytes=5-", 206, b"56789", b"bytes 5-9/10"),
        (b"bytes=-3", 206, b"789", b"bytes 7-9/10"),
        (b"bytes=8-100", 206, b"89", b"bytes 8-9/10"),
        (b"bytes=9-9", 206, b"9", b"bytes 9-9/10"),
        (b"bytes=10-", 416, b"", b"bytes */10"),
        (b"bytes=5-2", 416, b"", b"bytes */10"),
        (b"bytes=-0", 416, b"", b"bytes */10"),
        (b"bytes=abc", 416, b"", b"bytes */10"),
        (b"bytes=1-2,4-5", 200, b"0123456789", None),
        (b"items=0-1", 200, b"0123456789", None),
    ],
)
@deferred_test
async def test_ranges_follow_rfc_7233(server, header, status, expected, content_range):
    await put(server, "r", b"0123456789")
    response, body = await get(server, "/blobs/alice/r", headers={b"Range": [header]})
    assert response.code == status
    if status != 416:
        assert body == expected
    assert response.headers.getRawHeaders(b"content-range") == (
        [content_range] if content_range else None
    )


@deferred_test
async def test_auth(server, dsn):
    await put(server, "mine", b"secret")
    url = f"{server.url}/blobs/alice/mine"
    response = await treq.get(url)
    assert response.code == 401
    assert response.headers.getRawHeaders(b"www-authenticate") == [b"Token"]
    response = await treq.get(url, headers=server.auth(token="wrong"))
    assert response.code == 401
    response = await treq.get(url, headers={b"Authorization": [b"Token !!notbase64"]})
    assert response.code == 401
    response = await treq.get(url, headers={b"Authorization": [b"Basic YWxpY2U6eA=="]})
    assert response.code == 401
    bob_token = create_token(dsn, "bob")
    response = await treq.get(url, headers=server.auth("bob", bob_token))
    assert response.code == 403
    response = await treq.put(url, data=b"overwrite", headers=server.auth("bob", bob_token))
    assert response.code == 403
    response = await treq.delete(url, headers=server.auth("bob", bob_token))
    assert response.code == 403
    _, body = await get(server, "/blobs/alice/mine")
    assert body == b"secret"
    pgblobs_cli("token", "revoke", "alice", "--dsn", dsn)
    response = await treq.get(url, headers=server.auth())
    assert response.code == 401


@deferred_test
async def test_bad_names_are_400(server):
    for path in (
        "/blobs/alice/a%20b",
        "/blobs/alice/" + "x" * 256,
        "/blobs/alice/%C3%A9",
        "/blobs/al%00ice/x",
        "/blobs/alice/x?namespace=..%2F",
    ):
        response, body = await get(server, path)
        assert response.code == 400, path
        assert body.startswith(b"invalid "), (path, body)
    # A path deeper than /blobs/{user}/{id} names nothing.
    response, body = await get(server, "/blobs/alice/a/b")
    assert (response.code, body) == (404, b"no such resource\n")


@deferred_test
async def test_quota_is_507_with_and_without_content_length(server, dsn):
    sql(dsn, "INSERT INTO pgblobs.quotas VALUES ('alice', 1000)")
    assert (await put(server, "fits", content(600)))[0] == 200
    assert (await put(server, "big", content(500)))[0] == 507

    def chunks():
        yield b"x" * 300
        yield b"y" * 300

    import io

    from twisted.web.client import FileBodyProducer

    body = FileBodyProducer(io.BytesIO(content(500)))
    from twisted.web.iweb import UNKNOWN_LENGTH

    body.length = UNKNOWN_LENGTH  # sent chunked
    response = await treq.put(f"{server.url}/blobs/alice/chunked", data=body, headers=server.auth())
    assert response.code == 507
    _, listing = await get(server, "/blobs/alice/")
    assert json.loads(listing) == ["fits"]


@deferred_test
async def test_a_body_over_the_limit_is_413_before_it_is_sent(server):
    limit = 64 * 1024 * 1024
    head = raw_request(
        server, "PUT", "/blobs/alice/huge", f"Content-Length: {limit + 1}", "Connection: close"
    )
    answer = await raw_http(server, head)
    assert answer.startswith(b"HTTP/1.1 413 ")


@deferred_test
async def test_a_chunked_body_over_the_limit_is_413(server):
    chunk = b"x" * 1024 * 1024
    chunks = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 65 + b"0\r\n\r\n"
    payload = raw_request(
        server, "PUT", "/blobs/alice/huge", "Transfer-Encoding: chunked", body=chunks
    )
    answer = await raw_http(server, payload)
    assert answer.startswith(b"HTTP/1.1 413 ")
    _response, body = await get(server, "/blobs/alice/")
    assert json.loads(body) == []


@deferred_test
async def test_expect_100_continue_is_answered_only_when_the_body_is_wanted(server):
    await put(server, "taken", b"already here")
    head = (
        b"PUT /blobs/alice/%s HTTP/1.1\r\nHost: x\r\n"
        + auth_header(server)
        + b"\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    refused = await raw_http(server, head % b"taken", timeout=3)
    assert refused.startswith(b"HTTP/1.1 409 "), refused[:40]
    assert b"100 Continue" not in refused

    import socket

    from twisted.internet import threads

    def polite_client():
        with socket.create_connection(("127.0.0.1", server.port.getHost().port), timeout=5) as c:
            c.sendall(head % b"fresh")
            interim = c.recv(4096)
            c.sendall(b"hello")
            final = b""
            while chunk := c.recv(4096):
                final += chunk
            return interim, final

    interim, final = await threads.deferToThread(polite_client)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    assert (interim + final).split(b"\r\n\r\n", 1)[1].startswith(b"HTTP/1.1 200 ")
    _, body = await get(server, "/blobs/alice/fresh")
    assert body == b"hello"


@deferred_test
async def test_a_refused_upload_is_answered_even_while_the_client_keeps_sending(server):
    await put(server, "taken", b"already here")
    payload = raw_request(
        server, "PUT", "/blobs/alice/taken", "Content-Length: 3000000", body=b"z" * 3_000_000
    )
    answer = await raw_http(server, payload)
    assert answer.startswith(b"HTTP/1.1 409 ")


@deferred_test
async def test_a_malformed_range_is_416_without_blaming_the_blob(server):
    await treq.put(f"{server.url}/blobs/alice/ten", data=b"0123456789", headers=server.auth())
    for header, reason in (
        ("bytes=abc", b"malformed"),
        ("bytes=5-2", b"malformed"),
        ("bytes=-", b"malformed"),
        ("bytes=100-", b"outside"),
    ):
        response = await treq.get(
            f"{server.url}/blobs/alice/ten", headers={**server.auth(), b"Range": [header.encode()]}
        )
        body = await response.content()
        assert response.code == 416, header
        assert reason in body, (header, body)
        assert response.headers.getRawHeaders(b"content-range") == [b"bytes */10"]
    # An unknown unit is ignored, as RFC 7233 says: the whole blob.
    response = await treq.get(
        f"{server.url}/blobs/alice/ten", headers={**server.auth(), b"Range": [b"lines=1-2"]}
    )
    assert response.code == 200 and await response.content() == b"0123456789"
