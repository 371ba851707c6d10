"""Request bodies, without a socket: "100 Continue" only once a resource
asks for the body, the limits on a body's size (announced or not), and what
is stored is exactly what was sent."""

import pytest
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pgblobs import MemoryBlobsBackend
from pgblobs.web.request import RequestBody
from pgblobs.web.site import Limits
from tests.fast.wire import Connection, connect, memory_site, request, result_of, site_of
from tests.helpers import read

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LIMITS = Limits(max_blob_bytes=1000, max_json_bytes=100, min_upload_rate=0)


def test_100_continue_is_sent_only_when_the_body_is_wanted():
    client = connect(memory_site(LIMITS), Clock())
    client.send(request("PUT", "/blobs/alice/one", "Content-Length: 5", "Expect: 100-continue"))
    assert client.answer == CONTINUE
    client.send(b"hello")
    assert client.answer.startswith(CONTINUE + b"HTTP/1.1 200 ")


@pytest.mark.parametrize(
    "path, headers, status",
    [
        ("/blobs/bob/one", [], 403),  # alice's token on bob's blobs
        ("/blobs/alice/o.n.e", [], 400),  # not a blob id
        ("/blobs/alice/one", ["Content-Length: 1001"], 413),  # larger than a blob may be
    ],
)
def test_a_request_refused_on_its_headers_never_asks_for_its_body(path, headers, status):
    client = connect(memory_site(LIMITS), Clock())
    head = request("PUT", path, "Expect: 100-continue", *(headers or ["Content-Length: 5"]))
    client.send(head)
    assert client.status == status
    assert b"100 Continue" not in client.answer
    assert b"connection: close" in client.answer.lower()


class _BodyKind(Resource):
    """PUT: answers whether its body is sent on demand."""

    isLeaf = True

    def render_PUT(self, request: Request) -> object:
        assert isinstance(request.body, RequestBody)
        request.write(b"on demand" if request.body.sent_on_demand else b"at once")
        request.finish()
        return NOT_DONE_YET


@pytest.mark.parametrize(
    "version, expect, on_demand",
    [
        (b"HTTP/1.1", b"Expect: 100-continue\r\n", True),
        (b"HTTP/1.1", b"Expect: 100-CONTINUE\r\n", True),
        (b"HTTP/1.1", b"", False),
        (b"HTTP/1.0", b"Expect: 100-continue\r\n", False),  # 1.0 knows no 100 Continue
    ],
)
def test_a_body_is_sent_on_demand_only_when_an_http_1_1_client_waits_for_100_continue(
    version, expect, on_demand
):
    client = connect(site_of(_BodyKind(), LIMITS), Clock())
    client.send(b"PUT / " + version + b"\r\nHost: x\r\nContent-Length: 3\r\n" + expect + b"\r\n")
    assert (b"\r\non demand\r\n" in client.answer) == on_demand
    assert b"100 Continue" not in client.answer  # the resource never asked for the body


def test_a_chunked_body_past_the_limit_is_413_and_nothing_is_stored():
    backend = MemoryBlobsBackend()
    client = connect(memory_site(LIMITS, backend), Clock())
    client.send(request("PUT", "/blobs/alice/big", "Transfer-Encoding: chunked"))
    for _ in range(3):
        client.send(b"190\r\n" + b"z" * 400 + b"\r\n")  # 1200 bytes in all
    assert client.status == 413
    assert b"the body is larger than 1000 bytes" in client.answer
    assert result_of(backend.list_blobs("alice")) == []


def test_a_chunked_body_at_the_limit_is_stored_whole():
    backend = MemoryBlobsBackend()
    client = connect(memory_site(LIMITS, backend), Clock())
    client.send(request("PUT", "/blobs/alice/full", "Transfer-Encoding: chunked"))
    for part in range(4):
        client.send(b"fa\r\n" + bytes([65 + part]) * 250 + b"\r\n")
    client.send(b"0\r\n\r\n")
    assert client.status == 200
    assert (
        result_of(read(backend, "alice", "full"))
        == b"A" * 250 + b"B" * 250 + b"C" * 250 + b"D" * 250
    )


def test_a_json_body_announced_past_max_json_bytes_is_413_before_it_is_read():
    client = connect(memory_site(LIMITS), Clock())
    client.send(request("PUT", "/blobs/alice/flagged", body=b"x"))
    client.transport.clear()
    client.send(request("POST", "/blobs/alice/flagged", "Content-Length: 101"))
    assert client.status == 413


def _flags_past_the_limit(client: Connection, together: bool) -> None:
    """POST a 101-byte chunked list of flags to alice's blob (max_json_bytes is
    100): after its headers, or ``together`` with them, in one network read."""
    client.send(request("PUT", "/blobs/alice/flagged", body=b"x"))
    client.transport.clear()
    head = request("POST", "/blobs/alice/flagged", "Transfer-Encoding: chunked")
    body = b"65\r\n[" + b" " * 99 + b"]\r\n0\r\n\r\n"
    if together:
        client.send(head + body)
    else:
        client.send(head)
        client.send(body)


def test_a_chunked_json_body_past_max_json_bytes_is_413():
    client = connect(memory_site(LIMITS), Clock())
    _flags_past_the_limit(client, together=False)
    assert client.status == 413


def test_a_chunked_body_past_its_limit_that_comes_with_its_headers_is_413():
    client = connect(memory_site(LIMITS), Clock())
    _flags_past_the_limit(client, together=True)
    assert client.status == 413
