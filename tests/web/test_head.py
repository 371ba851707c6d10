"""HEAD answers exactly like GET without a body, on every route."""

import http.client

import pytest
from twisted.internet import threads

from tests.helpers import content, deferred_test

_COMPARED = (
    "content-length",
    "content-type",
    "tag",
    "accept-ranges",
    "content-range",
    "allow",
    "www-authenticate",
    "retry-after",
)


def ask(port, method, path, headers):
    """(status, compared headers, body) of one request on its own connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        kept = {
            name: value
            for name, value in ((name.lower(), value) for name, value in response.getheaders())
            if name in _COMPARED
        }
        return response.status, kept, body
    finally:
        connection.close()


@pytest.fixture
def blob_paths():
    return [
        "/",
        "/health",
        "/metrics",
        "/blobs",
        "/blobs/",
        "/blobs/alice/",
        "/blobs/alice/?only_count=True",
        "/blobs/alice/big",
        "/blobs/alice/small",
        "/blobs/alice/empty",
        "/blobs/alice/missing",
        "/blobs/alice/big?only_flags=True",
        "/blobs/bob/big",
        "/blobs/bad%20name/x",
        "/stream",
        "/stream/x",
        "/stream/alice",
        "/stream/alice?direction=download",
        "/nowhere",
    ]


@deferred_test
async def test_head_is_get_without_a_body_everywhere(server, blob_paths):
    import treq

    for blob_id, data in (("big", content(3_000_000)), ("small", b"0123456789"), ("empty", b"")):
        response = await treq.put(
            f"{server.url}/blobs/alice/{blob_id}", data=data, headers=server.auth()
        )
        assert response.code == 200
    port = server.port.getHost().port
    authorized = {"Authorization": server.auth()[b"Authorization"][0].decode()}
    for headers in (
        {},
        authorized,
        {**authorized, "Range": "bytes=2-5"},
        {**authorized, "Range": "bytes=900000000-"},
    ):
        for path in blob_paths:
            if path == "/metrics":
                continue  # its text changes with every request, so only the status is compared
            got = await threads.deferToThread(ask, port, "GET", path, headers)
            head = await threads.deferToThread(ask, port, "HEAD", path, headers)
            assert head[0] < 500, (path, headers, head)
            assert head[:2] == got[:2], (path, headers)
            assert head[2] == b"", path
    got = await threads.deferToThread(ask, port, "HEAD", "/metrics", {})
    assert got[0] == 200 and got[2] == b""


@deferred_test
async def test_head_of_a_large_blob_keeps_the_connection(server):
    import treq

    data = content(2_000_000)
    await treq.put(f"{server.url}/blobs/alice/large", data=data, headers=server.auth())
    port = server.port.getHost().port
    authorized = {"Authorization": server.auth()[b"Authorization"][0].decode()}

    def twice():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            answers = []
            for method in ("HEAD", "GET"):
                connection.request(method, "/blobs/alice/large", headers=authorized)
                response = connection.getresponse()
                answers.append(
                    (response.status, response.getheader("Content-Length"), response.read())
                )
            return answers
        finally:
            connection.close()

    head, get = await threads.deferToThread(twice)
    assert head == (200, str(len(data)), b"")
    assert get == (200, str(len(data)), data)
