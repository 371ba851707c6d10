"""Hostile and broken input: every answer is a 2xx or a 4xx, and nobody
else's data is touched."""

import json
import socket
import time
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fast import statuses
from tests.helpers import exchange as raw_exchange
from tests.helpers import pgblobs_cli, sql
from tests.processes import ServeProcess
from tests.reliability.clients import Client, token_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(migrated_dsn):
    started = ServeProcess(
        "--dsn",
        migrated_dsn,
        "--idle-timeout",
        "2",
        "--header-timeout",
        "3",
        "--max-json-bytes",
        "65536",
        "--max-blob-bytes",
        "1000000",
    )
    yield started
    started.stop()


@pytest.fixture
def users(node, dsn):
    """alice (the attacker) and bob (whose blob must survive everything)."""
    alice = Client(node.url, "alice", token_for(dsn, "alice"))
    bob = Client(node.url, "bob", token_for(dsn, "bob"))
    assert bob.put("precious", b"bob's data")[0] == 200
    yield alice, bob
    assert bob.get("precious")[::2] == (200, b"bob's data")
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs WHERE user_id = 'bob'") == [(1,)]


def exchange(node, payload, wait=5.0):
    return raw_exchange(node.port, payload, wait)


def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


flagish = statuses.flag_values
relaxed = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@relaxed
@given(user=statuses.users, blob_id=statuses.blob_ids, namespace=statuses.namespaces)
def test_generated_names_never_fail_the_server(users, user, blob_id, namespace):
    alice, _ = users
    path = statuses.blob_path(user, blob_id, namespace)
    for method, body in statuses.BLOB_LIFE:
        status, _, _ = alice.request(method, path, body=body)
        expected = statuses.expected_status(method, user, blob_id, namespace)
        assert status == expected, (method, path, status)


@relaxed
@given(
    arguments=st.dictionaries(
        st.sampled_from(
            [
                "namespace",
                "order_by",
                "filter_flag",
                "deleted",
                "only_count",
                "only_flags",
                "direction",
            ]
        ),
        st.one_of(flagish, st.sampled_from(["True", "False", "date", "-date", "+date", "1", "0"])),
    )
)
def test_generated_query_arguments(users, arguments):
    alice, _ = users
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in arguments.items())
    for path in (f"/blobs/alice/?{query}", f"/blobs/alice/x?{query}"):
        status, _, _ = alice.request("GET", path)
        assert 200 <= status < 500, (path, status)
    status, _, _ = alice.request("POST", f"/stream/alice?{query}", body=b'["x"]')
    assert 200 <= status < 500


@relaxed
@given(flags=statuses.flag_lists)
def test_generated_flag_bodies(users, flags):
    alice, _ = users
    alice.put("flagged", b"x")
    status, _, _ = alice.request("POST", "/blobs/alice/flagged", body=json.dumps(flags).encode())
    assert status == statuses.expected_flags_status(flags), (flags, status)


@relaxed
@given(
    header=st.one_of(
        st.from_regex(r"bytes=-?[0-9]{0,12}-?[0-9]{0,12}", fullmatch=True),
        st.from_regex(r"[a-z]{0,6}=[0-9,\- ]{0,20}", fullmatch=True),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    )
)
def test_generated_range_headers(users, header):
    alice, _ = users
    alice.put("ranged", b"0123456789")
    status, headers, body = alice.request("GET", "/blobs/alice/ranged", headers={"Range": header})
    assert status in (200, 206, 416), (header, status)
    if status == 206:
        first, last = map(int, headers["Content-Range"].split()[1].split("/")[0].split("-"))
        assert body == b"0123456789"[first : last + 1]


def test_paths_that_try_to_escape(users):
    alice, _ = users
    for path in (
        "/blobs/alice/../bob/precious",
        "/blobs/alice/%2e%2e%2fbob%2fprecious",
        "/blobs/bob%2fprecious",
        "/blobs/alice/precious%00",
        "/blobs/alice/%00",
        "/blobs/../blobs/bob/precious",
        "/blobs/alice/" + "a" * 5000,
        "/blobs/alice/x?namespace=../../bob",
        "/stream/bob?direction=download",
    ):
        for method in ("GET", "DELETE", "PUT"):
            status, _, body = alice.request(method, path, body=b"evil" if method == "PUT" else None)
            assert status in (400, 401, 403, 404, 405, 414), (method, path, status)
            assert b"Traceback" not in body


def test_sql_in_every_argument_is_inert(users, dsn):
    alice, _ = users
    evil = "x'; DROP TABLE pgblobs.blobs; --"
    quoted = quote(evil, safe="")
    for method, path, body in (
        ("PUT", f"/blobs/alice/{quoted}", b"x"),
        ("GET", f"/blobs/{quoted}/", None),
        ("GET", f"/blobs/alice/?namespace={quoted}", None),
        ("GET", f"/blobs/alice/?filter_flag={quoted}", None),
        ("GET", f"/blobs/alice/?order_by={quoted}", None),
        ("POST", "/stream/alice?direction=download", json.dumps([evil]).encode()),
        ("POST", "/stream/alice?direction=upload", json.dumps([[evil, 1]]).encode() + b"\nx"),
    ):
        status, _, _ = alice.request(method, path, body=body)
        assert 400 <= status < 500, (method, path, status)
    assert alice.put("flags-target", b"x")[0] == 200
    status, _, _ = alice.request(
        "POST", "/blobs/alice/flags-target", body=json.dumps([evil]).encode()
    )
    assert status == 406
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs WHERE user_id = 'alice'") == [(1,)]


def test_auth_failures_leave_the_victim_alone(users, node, dsn):
    alice, _bob = users
    no_token = Client(node.url, "bob", "x")
    no_token.auth = ""
    assert no_token.get("precious")[0] == 401
    assert Client(node.url, "bob", "wrong-token").get("precious")[0] == 401
    assert Client(node.url, "bob", "wrong-token").request("DELETE", "/blobs/bob/precious")[0] == 401
    as_alice = Client(node.url, "bob", "")
    as_alice.auth = alice.auth  # a valid token, for someone else
    assert as_alice.get("precious")[0] == 403
    assert as_alice.request("DELETE", "/blobs/bob/precious")[0] == 403
    assert as_alice.put("planted", b"x")[0] == 403
    secret = alice.auth.split()[1]
    token = __import__("base64").b64decode(secret).decode().split(":", 1)[1]
    revoked = token_for(dsn, "carol")
    carol = Client(node.url, "carol", revoked)
    assert carol.put("c", b"x")[0] == 200
    assert pgblobs_cli("token", "revoke", "carol", "--dsn", dsn).returncode == 0
    assert carol.get("c")[0] == 401
    logged = "".join(node.output + node.errors)
    assert token not in logged and secret not in logged and revoked not in logged


def test_lying_content_lengths(users, dsn, node):
    alice, _ = users
    head = (
        b"PUT /blobs/alice/%s HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + alice.auth.encode()
        + b"\r\nContent-Length: %d\r\n\r\n"
    )
    # Longer than what comes: the idle timeout ends it with a 408, nothing is stored.
    started = time.monotonic()
    answer = exchange(node, head % (b"short", 1000) + b"only this", wait=10)
    assert time.monotonic() - started < 8
    assert status_of(answer) == 408, answer
    # Shorter than what comes: the blob is what was declared; the rest is a bad request.
    answer = exchange(node, head % (b"long", 4) + b"abcdEXTRA GARBAGE\r\n\r\n", wait=5)
    assert status_of(answer) == 200
    assert b"400" in answer.split(b"\r\n\r\n", 1)[1]
    assert alice.get("long")[::2] == (200, b"abcd")
    assert alice.get("short")[0] == 404


def test_slow_loris_headers_are_cut_off(node):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\n")
        closed = False
        for _ in range(20):
            try:
                connection.sendall(b"X-Slow: a\r\n")
                time.sleep(0.5)  # the scenario: a header line every half second
                if connection.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed = True
                    break
            except BlockingIOError:
                continue
            except OSError:
                closed = True
                break
    assert closed and time.monotonic() - started < 8


def test_huge_headers_and_json_bombs(users, node):
    alice, _ = users
    answer = exchange(node, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    assert status_of(answer) in (None, 400, 431)
    alice.put("bombed", b"x")
    for body in (
        b"[" * 50_000 + b"]" * 50_000,
        b'["PENDING", ' * 10_000 + b"]",
        b'{"a": ' * 20_000,
    ):
        status, _, _ = alice.request("POST", "/blobs/alice/bombed", body=body)
        assert status in (400, 413), status
        status, _, _ = alice.request("POST", "/stream/alice?direction=download", body=body)
        assert status in (400, 413), status
        status, _, _ = alice.request("POST", "/stream/alice?direction=upload", body=body + b"\n")
        assert status in (400, 413), status
    assert alice.request("GET", "/")[0] == 200
