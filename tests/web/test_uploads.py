"""/uploads/{user}/ on a real `pgblobs serve`: tuspy uploads, every status of
the tus protocol and of reservations as the issue names them, termination,
expiry, concurrent PATCHes and quota races, checked in the database too."""

import base64
import hashlib
import json
import os
import socket
import threading

import pytest

from tests.helpers import sql, wait_until
from tests.processes import ServeProcess
from tests.reliability.clients import Client, token_for
from tests.tus import (
    MIB,
    OFFSET_CONTENT,
    TUS,
    create,
    created,
    head,
    metadata,
    offset_of,
    patch,
    path_of,
    sha256,
    tuspy,
    uploader,
)

LARGE_OBJECTS = "SELECT count(*) FROM pg_largeobject_metadata"


@pytest.fixture
def tokens(dsn):
    return {name: token_for(dsn, name) for name in ("alice", "bob")}


@pytest.fixture
def serve(dsn):
    """Starts `pgblobs serve --dsn DSN OPTIONS...` nodes, stopped after the test."""
    nodes = []

    def start(*options):
        nodes.append(ServeProcess("--dsn", dsn, *options))
        return nodes[-1]

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def alice(serve, tokens):
    return Client(serve("--quota-bytes", "unlimited").url, "alice", tokens["alice"])


def test_tuspy_uploads_a_blob_that_is_then_everywhere_a_put_one_is(alice, tokens, dsn):
    data = os.urandom(5 * MIB + 17)
    for blob_id, checksum in (("plain", False), ("summed", True)):
        tus = tuspy(f"http://{alice.host}:{alice.port}", "alice", tokens["alice"])
        uploader(tus, data, blob_id, chunk_size=MIB, upload_checksum=checksum).upload()
        status, _, body = alice.get(blob_id)
        assert status == 200 and sha256(body) == sha256(data)
        stored = sql(dsn, "SELECT sha256 FROM pgblobs.blobs WHERE blob_id = %s", (blob_id,))
        assert bytes(stored[0][0]) == hashlib.sha256(data).digest()
    assert sorted(json.loads(alice.request("GET", "/blobs/alice/")[2])) == ["plain", "summed"]
    assert json.loads(alice.request("GET", "/blobs/alice/?only_count=True")[2]) == {"count": 2}
    assert sql(dsn, "SELECT live_bytes FROM pgblobs.usage") == [(2 * len(data),)]
    changes = json.loads(alice.request("GET", "/changes/alice")[2])["changes"]
    assert {(c["id"], c["change"], c["size"]) for c in changes} == {
        ("plain", "stored", len(data)),
        ("summed", "stored", len(data)),
    }


def test_options_head_and_every_answer_say_what_tus_asks(serve, tokens):
    node = serve("--max-blob-bytes", "1000000")
    alice = Client(node.url, "alice", tokens["alice"])
    anonymous = Client(node.url, "nobody", "-")
    status, headers, _ = anonymous.request("OPTIONS", "/uploads/alice/")
    assert status == 204
    assert headers["Tus-Resumable"] == headers["Tus-Version"] == "1.0.0"
    assert set(headers["Tus-Extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "termination",
        "expiration",
        "checksum",
    }
    assert headers["Tus-Max-Size"] == "1000000"
    assert set(headers["Tus-Checksum-Algorithm"].split(",")) >= {"sha1", "sha256"}
    status, headers, _ = create(alice, "b", 10)
    assert status == 201 and headers["Upload-Expires"].endswith("GMT")
    assert headers["Location"].startswith(f"{node.url}/uploads/alice/")
    path = path_of(headers["Location"])
    status, headers, body = head(alice, path)
    assert (status, body) == (200, b"")
    assert headers["Upload-Offset"] == "0" and headers["Upload-Length"] == "10"
    assert headers["Cache-Control"] == "no-store" and "Upload-Expires" in headers
    assert headers["Upload-Metadata"] == metadata(blob_id="b", filename="f.bin")
    status, headers, _ = patch(alice, path, 0, b"12345")
    assert (status, headers["Upload-Offset"]) == (204, "5")
    assert "Upload-Expires" in headers and headers["Tus-Resumable"] == "1.0.0"


def test_every_refusal_has_its_status(serve, tokens):
    node = serve(
        "--max-blob-bytes", "1000000", "--quota-bytes", "2000", "--max-uploads-per-user", "2"
    )
    alice = Client(node.url, "alice", tokens["alice"])
    bob = Client(node.url, "bob", tokens["bob"])
    path = created(alice, "b", 10)
    # 412: no Tus-Resumable, or another version; with Tus-Version.
    for version in ({}, {"Tus-Resumable": "0.2.2"}):
        status, headers, _ = alice.request("HEAD", path, headers=version)
        assert (status, headers["Tus-Version"]) == (412, "1.0.0")
    # 415: a PATCH of another content type.
    status, _, _ = patch(alice, path, 0, b"x", {"Content-Type": "application/octet-stream"})
    assert status == 415
    # 409: an offset that is not the upload's.
    assert patch(alice, path, 3, b"x")[0] == 409
    # 460: a checksum that does not match; nothing of that PATCH is kept.
    wrong = "sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    assert patch(alice, path, 0, b"12345", {"Upload-Checksum": wrong})[0] == 460
    assert offset_of(alice, path) == 0
    right = "sha256 " + base64.b64encode(hashlib.sha256(b"12345").digest()).decode()
    assert patch(alice, path, 0, b"12345", {"Upload-Checksum": right})[0] == 204
    # 400: an algorithm tus clients may not assume, a malformed offset.
    assert patch(alice, path, 5, b"6", {"Upload-Checksum": "md5 AAAA"})[0] == 400
    assert patch(alice, path, "five", b"6")[0] == 400
    # 413: bytes past the length; a length past --max-blob-bytes.
    assert patch(alice, path, 5, b"678901")[0] == 413
    assert create(alice, "huge", 1_000_001)[0] == 413
    # 507: a length past the quota (2000 bytes, 10 of them reserved).
    assert create(alice, "big", 1991)[0] == 507
    # 409: a creation for an id being uploaded (with where it is), or live.
    status, headers, _ = create(alice, "b", 10)
    assert status == 409 and path_of(headers["Location"]) == path
    assert alice.put("live", b"here")[0] == 200
    assert create(alice, "live", 4)[0] == 409
    # 429: past --max-uploads-per-user, with Retry-After.
    assert create(alice, "second", 1)[0] == 201
    status, headers, _ = create(alice, "third", 1)
    assert status == 429 and headers["Retry-After"]
    # 400: no or bad metadata, bad names, no or bad Upload-Length.
    for bad in (
        {"Upload-Metadata": ""},
        {"Upload-Metadata": "filename Zi5iaW4="},
        {"Upload-Metadata": "blob_id !!!"},
        {"Upload-Metadata": metadata(blob_id="a/b")},
        {"Upload-Metadata": metadata(blob_id="ok", namespace="n s")},
        {"Upload-Length": "-1"},
        {"Upload-Length": "ten"},
    ):
        assert create(bob, "x", 1, headers=bad)[0] == 400, bad
    assert (
        bob.request(
            "POST", "/uploads/bob/", headers={**TUS, "Upload-Metadata": metadata(blob_id="x")}
        )[0]
        == 400
    )
    # 401 without a valid token, 403 on another user's uploads; 404 unknown.
    assert Client(node.url, "alice", "wrong").request("HEAD", path, headers=TUS)[0] == 401
    assert bob.request("HEAD", path, headers=TUS)[0] == 403
    assert head(alice, "/uploads/alice/nosuchupload")[0] == 404
    # A POST that names its method in X-HTTP-Method-Override is that method.
    status, headers, _ = alice.request(
        "POST",
        path,
        body=b"67890",
        headers={**TUS, **OFFSET_CONTENT, "Upload-Offset": "5", "X-HTTP-Method-Override": "PATCH"},
    )
    assert (status, headers["Upload-Offset"]) == (204, "10")
    assert alice.get("b")[::2] == (200, b"1234567890")


def test_an_id_being_uploaded_is_reserved_against_every_writer(serve, tokens, dsn):
    services = socket.socket()
    services.bind(("127.0.0.1", 0))
    port = services.getsockname()[1]
    services.close()
    node = serve(
        "--quota-bytes", "unlimited", "--services-listen", f"tcp:{port}:interface=127.0.0.1"
    )
    alice = Client(node.url, "alice", tokens["alice"])
    path = created(alice, "held", 4)
    assert alice.put("held", b"data")[0] == 409
    listing = json.dumps([["held", 4]]).encode() + b"\n" + b"data"
    assert alice.request("POST", "/stream/alice?direction=upload", body=listing)[0] == 409
    # Deliveries go to the namespace MX: an upload there reserves the id against them.
    in_mx = {"Upload-Metadata": metadata(blob_id="mail", namespace="MX")}
    assert create(alice, "mail", 9, headers=in_mx)[0] == 201
    mx = Client(f"http://127.0.0.1:{port}", "mx", token_for_service(dsn))
    assert mx.request("PUT", "/incoming/alice/mail", body=b"a message")[0] == 409
    assert mx.request("PUT", "/incoming/alice/held", body=b"a message")[0] == 200
    # Before its completion the upload is in no listing and no count.
    assert json.loads(alice.request("GET", "/blobs/alice/")[2]) == []
    assert json.loads(alice.request("GET", "/blobs/alice/?only_count=True")[2]) == {"count": 0}
    # Terminated: its large object is gone, and the id is free again.
    objects = sql(dsn, LARGE_OBJECTS)[0][0]
    status, _, _ = alice.request("DELETE", path, headers=TUS)
    assert status == 204
    assert sql(dsn, LARGE_OBJECTS)[0][0] == objects - 1
    assert head(alice, path)[0] == 404
    assert alice.put("held", b"data")[0] == 200


def token_for_service(dsn):
    from tests.helpers import pgblobs_cli

    done = pgblobs_cli("service-token", "create", "mx", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_abandoned_upload_and_its_large_object_expire_without_a_request(serve, tokens, dsn):
    node = serve("--quota-bytes", "unlimited", "--upload-expiry", "2")
    alice = Client(node.url, "alice", tokens["alice"])
    path = created(alice, "left", 100)
    assert patch(alice, path, 0, b"x" * 50)[0] == 204
    assert sql(dsn, "SELECT count(*) FROM pgblobs.uploads") == [(1,)]
    wait_until(lambda: sql(dsn, "SELECT count(*) FROM pgblobs.uploads") == [(0,)], "swept")
    assert sql(dsn, LARGE_OBJECTS) == [(0,)]
    assert head(alice, path)[0] == 404
    assert alice.put("left", b"free")[0] == 200


def test_two_patches_at_once_never_interleave(serve, tokens, dsn):
    node = serve("--quota-bytes", "unlimited")
    alice = Client(node.url, "alice", tokens["alice"])
    data = os.urandom(4 * MIB)
    path = created(alice, "racing", len(data))
    # The first PATCH sends half its body and pauses, holding the upload.
    first = socket.create_connection(("127.0.0.1", node.port))
    first.sendall(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {alice.auth}\r\n"
            "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
            "Content-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        + data[: 2 * MIB]
    )
    wait_until(
        lambda: sql(dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0] > 0,
        "the first PATCH holding the upload",
    )
    status, _, _ = patch(alice, path, 0, os.urandom(len(data)))
    assert status in (409, 423)
    assert alice.request("DELETE", path, headers=TUS)[0] == 423
    first.sendall(data[2 * MIB :])
    first.settimeout(30)
    assert first.recv(1000).startswith(b"HTTP/1.1 204 ")
    first.close()
    assert alice.get("racing")[::2] == (200, data)


def test_uploads_racing_for_the_last_bytes_of_a_quota_cannot_overshoot_it(serve, tokens, dsn):
    node = serve("--quota-bytes", "1000")
    other = serve("--quota-bytes", "1000")
    clients = [Client(n.url, "alice", tokens["alice"]) for n in (node, other)]
    assert clients[0].put("first", b"x" * 400)[0] == 200
    results = {}
    barrier = threading.Barrier(8)

    def race(index):
        barrier.wait()
        results[index] = create(clients[index % 2], f"r{index}", 600)[0]

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results.values()) == [201] + [507] * 7
    assert clients[0].put("more", b"x")[0] == 507  # the room is reserved
    reserved = sql(dsn, "SELECT sum(upload_length) FROM pgblobs.uploads")[0][0]
    assert reserved == 600


def test_creation_with_upload_and_an_empty_upload(alice, dsn):
    status, headers, _ = create(alice, "at-once", 10, headers=OFFSET_CONTENT, body=b"12345")
    assert (status, headers["Upload-Offset"]) == (201, "5")
    path = path_of(headers["Location"])
    assert patch(alice, path, 5, b"67890")[0] == 204
    assert alice.get("at-once")[::2] == (200, b"1234567890")
    # A body of another content type on a creation is refused, nothing made.
    assert create(alice, "typed", 3, headers={"Content-Type": "text/plain"}, body=b"abc")[0] == 415
    status, headers, _ = create(alice, "empty", 0)
    assert (status, headers["Upload-Offset"]) == (201, "0")
    assert alice.get("empty")[::2] == (200, b"")
    # Finished uploads are remembered: HEAD says every byte is in.
    status, headers, _ = head(alice, path)
    assert (status, headers["Upload-Offset"], headers["Upload-Length"]) == (200, "10", "10")
    assert sql(dsn, "SELECT count(*) FROM pgblobs.uploads") == [(0,)]
