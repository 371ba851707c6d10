"""GET /changes/{user}: the change feed, on real `pgblobs serve` nodes sharing
one database, over real sockets."""

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from tests.helpers import content, pgblobs_cli, sql, token_header, wait_until
from tests.ops.soledad_store import SoledadStore
from tests.processes import ServeProcess, free_port
from tests.reliability.clients import Client, token_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes(migrated_dsn):
    services = free_port()
    first = ServeProcess(
        "--dsn", migrated_dsn, "--services-listen", f"tcp:{services}:interface=127.0.0.1"
    )
    first.services_url = f"http://127.0.0.1:{services}"
    started = [first, ServeProcess("--dsn", migrated_dsn, "--max-held-changes-per-user", "3")]
    yield started
    for node in started:
        node.stop()


def clients(nodes, dsn, user="alice"):
    token = token_for(dsn, user)
    return [Client(node.url, user, token) for node in nodes]


def feed(client, **params):
    """(status, headers, the JSON answer or the body)."""
    query = urlencode(params)
    status, headers, body = client.request("GET", f"/changes/{client.user}?{query}")
    return status, headers, (json.loads(body) if status == 200 else body)


def follow(client, cursor=None, limit=1000, **params):
    """Every change after ``cursor`` (from the oldest without one), page by page;
    (the changes, the cursor to go on from)."""
    seen = []
    while True:
        query = dict(params, limit=limit) | ({} if cursor is None else {"since": cursor})
        status, _, answer = feed(client, **query)
        assert status == 200, answer
        seen += answer["changes"]
        assert answer["cursor"]
        cursor = answer["cursor"]
        if not answer["more"]:
            return seen, cursor


def replayed(changes):
    """The live blobs {(namespace, id): (size, tag, flags)} and the deleted names
    that applying ``changes`` in order gives."""
    live, deleted = {}, set()
    for change in changes:
        name = (change["namespace"], change["id"])
        if change["change"] == "stored":
            live[name] = (change["size"], change["tag"], sorted(change["flags"]))
            deleted.discard(name)
        elif change["change"] == "flags":
            size, tag, _ = live[name]  # a flags change only ever follows the blob's store
            live[name] = (size, tag, sorted(change["flags"]))
        else:
            assert change["change"] == "deleted"
            live.pop(name, None)
            deleted.add(name)
    return live, deleted


def held_in_database(dsn, user):
    rows = sql(
        dsn,
        "SELECT b.namespace, b.blob_id, b.size, b.tag, b.deleted_at IS NOT NULL, "
        "ARRAY(SELECT flag FROM pgblobs.blob_flags AS f WHERE f.blob_row = b.id ORDER BY flag) "
        "FROM pgblobs.blobs AS b WHERE b.user_id = %(user)s",
        {"user": user},
    )
    live = {
        (ns, i): (size, tag, sorted(flags)) for ns, i, size, tag, gone, flags in rows if not gone
    }
    deleted = {(ns, i) for ns, i, _, _, gone, _ in rows if gone} - set(live)
    return live, deleted


def held_on(node):
    """Feed requests the node holds now, as its /metrics says."""
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("pgblobs_changes_held "):
                return float(line.split()[1])
    raise AssertionError("no pgblobs_changes_held in /metrics")


def deliver(node, dsn, blob_id, message):
    service = pgblobs_cli("service-token", "create", "mx", "--dsn", dsn).stdout.strip()
    mx = Client(node.services_url, "mx", service)
    mx.auth = token_header("mx", service)
    status, _, body = mx.request("PUT", f"/incoming/alice/{blob_id}?namespace=MX", body=message)
    assert status == 200, body


def stream_upload(client, blobs):
    """/stream/{user}?direction=upload of {id: bytes}, as Soledad's client sends it."""
    body = json.dumps([[blob_id, len(data)] for blob_id, data in blobs.items()]).encode()
    body += b"\n" + b"".join(blobs.values())
    return client.request("POST", f"/stream/{client.user}?direction=upload", body=body)


def test_every_write_path_appears_and_replaying_gives_what_is_held(nodes, dsn, tmp_path):
    one, other = clients(nodes, dsn)
    assert one.put("small", content(100))[0] == 200
    assert other.put("large", content(3 * 1024 * 1024, seed=1))[0] == 200
    assert one.request("PUT", "/blobs/alice/in-ns?namespace=photos", body=b"x")[0] == 200
    status, _, body = stream_upload(other, {"s1": content(10, 2), "s2": content(20, 3)})
    assert status == 200, body
    deliver(nodes[0], dsn, "mail-1", b"an encrypted message")
    assert one.request("POST", "/blobs/alice/small", body=b'["PROCESSED"]')[0] == 200
    assert other.request("DELETE", "/blobs/alice/s1")[0] == 200
    status, _, claimed = one.request("POST", "/claim/alice?namespace=MX")
    assert (status, json.loads(claimed)) == (200, ["mail-1"])
    store = SoledadStore(tmp_path)
    store.write("alice", "imported", b"from soledad")
    store.write("alice", "imported-gone", b"deleted there")
    store.delete("alice", "imported-gone")
    done = pgblobs_cli("import-fs", str(tmp_path), "--dsn", dsn)
    assert done.returncode == 0, done.stderr

    changes, _ = follow(other)
    kinds = {(c["id"], c["change"]) for c in changes}
    for expected in [
        ("large", "stored"),
        ("in-ns", "stored"),
        ("s2", "stored"),
        ("s1", "deleted"),
        ("imported", "stored"),
        ("imported-gone", "deleted"),
    ]:
        assert expected in kinds, (expected, changes)
    assert replayed(changes) == held_in_database(dsn, "alice")
    # Stored and flagged after the cursor (none): one stored change, with its flags now.
    small = [c for c in changes if c["id"] == "small"]
    assert [(c["change"], c["flags"]) for c in small] == [("stored", ["PROCESSED"])]
    mail = next(c for c in changes if c["id"] == "mail-1")
    assert mail["namespace"] == "MX" and mail["flags"] == ["PROCESSING"]
    assert all(c["at"].endswith("Z") and len(c["at"]) == 27 for c in changes)
    stored = next(c for c in changes if c["id"] == "large")
    assert stored["size"] == 3 * 1024 * 1024 and stored["tag"]


def test_a_change_after_a_cursor_comes_as_what_changed(nodes, dsn):
    one, other = clients(nodes, dsn)
    assert one.put("b1", b"one")[0] == 200
    _, cursor = follow(one)
    assert other.request("POST", "/blobs/alice/b1", body=b'["PENDING"]')[0] == 200
    flagged, cursor = follow(one, cursor)
    assert [(c["id"], c["change"], c["flags"]) for c in flagged] == [("b1", "flags", ["PENDING"])]
    assert "size" not in flagged[0]
    assert other.request("DELETE", "/blobs/alice/b1")[0] == 200
    deleted, cursor = follow(one, cursor)
    assert [(c["id"], c["change"]) for c in deleted] == [("b1", "deleted")]
    assert set(deleted[0]) == {"id", "namespace", "change", "at"}
    assert follow(one, cursor) == ([], cursor)


def test_a_retried_put_of_the_same_bytes_is_no_change(nodes, dsn):
    one, _ = clients(nodes, dsn)
    assert one.put("same", b"bytes")[0] == 200
    _, cursor = follow(one)
    assert one.put("same", b"bytes")[0] == 200
    assert one.put("same", b"other")[0] == 409
    assert follow(one, cursor) == ([], cursor)


def test_namespace_given_even_empty_restricts_the_feed(nodes, dsn):
    one, _ = clients(nodes, dsn)
    assert one.put("in-default", b"a")[0] == 200
    assert one.request("PUT", "/blobs/alice/in-mail?namespace=mail", body=b"b")[0] == 200
    everything, _ = follow(one)
    assert {c["id"] for c in everything} == {"in-default", "in-mail"}
    assert [c["id"] for c in follow(one, namespace="")[0]] == ["in-default"]
    assert [c["id"] for c in follow(one, namespace="mail")[0]] == ["in-mail"]


def test_pages_say_more_until_the_last(nodes, dsn):
    one, _ = clients(nodes, dsn)
    for i in range(5):
        assert one.put(f"p{i}", b"x")[0] == 200
    status, _, first = feed(one, limit=2)
    assert status == 200 and len(first["changes"]) == 2 and first["more"] is True
    rest, _ = follow(one, first["cursor"], limit=2)
    assert [c["id"] for c in first["changes"] + rest] == [f"p{i}" for i in range(5)]


def test_concurrent_writers_on_two_nodes_and_a_paging_reader_miss_nothing(nodes, dsn):
    """Four writers (two per node) write, flag and delete while a reader follows
    the feed in pages of 7 on either node: the reader's replay ends equal to
    what the database holds, and no change shows up more often than it was made."""
    writers = clients(nodes, dsn) * 2
    made = {}  # id -> changes made to it
    lock = threading.Lock()
    stop = threading.Event()

    def write(index, client):
        for i in range(40):
            blob_id = f"w{index}-{i}"
            assert client.put(blob_id, content(50 + i, seed=index))[0] == 200
            steps = 1
            if i % 3 == 0:
                assert client.request("POST", f"/blobs/alice/{blob_id}", body=b'["PENDING"]')[0]
                steps += 1
            if i % 4 == 0:
                assert client.request("DELETE", f"/blobs/alice/{blob_id}")[0] == 200
                steps += 1
            with lock:
                made[blob_id] = steps

    seen = []
    cursor = None

    def read():
        nonlocal cursor
        turn = 0
        while not stop.is_set():
            changes, cursor = follow(writers[turn % 2], cursor, limit=7)
            seen.extend(changes)
            turn += 1

    reader = threading.Thread(target=read)
    reader.start()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4), writers))
    stop.set()
    reader.join(60)
    last, _ = follow(writers[0], cursor, limit=7)
    seen += last
    assert replayed(seen) == held_in_database(dsn, "alice")
    counts = {}
    for change in seen:
        counts[change["id"]] = counts.get(change["id"], 0) + 1
    assert set(counts) == set(made)
    assert all(counts[blob_id] <= made[blob_id] for blob_id in made), counts


def test_a_held_request_is_answered_soon_after_a_write_on_the_other_node(nodes, dsn):
    one, other = clients(nodes, dsn)
    _, cursor = follow(one)
    answers = []
    holder = threading.Thread(target=lambda: answers.append(feed(one, since=cursor, wait=30)))
    holder.start()
    wait_until(lambda: held_on(nodes[0]) == 1, "the request held")
    written = time.monotonic()
    assert other.put("woke", b"hello")[0] == 200
    holder.join(10)
    answered = time.monotonic()
    status, _, answer = answers[0]
    assert status == 200
    assert [c["id"] for c in answer["changes"]] == ["woke"]
    assert answered - written < 1.5


def test_a_held_request_with_nothing_to_say_ends_after_its_wait(nodes, dsn):
    one, _ = clients(nodes, dsn)
    assert one.put("before", b"x")[0] == 200
    _, cursor = follow(one)
    started = time.monotonic()
    status, _, answer = feed(one, since=cursor, wait=1.5)
    assert 1.4 < time.monotonic() - started < 5
    assert (status, answer) == (200, {"changes": [], "cursor": cursor, "more": False})


def test_held_requests_past_the_bound_are_429(nodes, dsn):
    _, other = clients(nodes, dsn)  # the node started with --max-held-changes-per-user 3
    _, cursor = follow(other)
    holders = [
        threading.Thread(target=feed, args=(other,), kwargs={"since": cursor, "wait": 20})
        for _ in range(3)
    ]
    for holder in holders:
        holder.start()

    wait_until(lambda: held_on(nodes[1]) == 3, "three requests held")
    status, headers, body = feed(other, since=cursor, wait=20)
    assert status == 429 and headers["Retry-After"] == "2", body
    assert feed(other, since=cursor)[0] == 200  # an answer that holds nothing is served
    assert other.put("release", b"x")[0] == 200
    for holder in holders:
        holder.join(10)
        assert not holder.is_alive()


def test_a_cursor_older_than_a_purged_delete_is_410(nodes, dsn):
    one, _ = clients(nodes, dsn)
    assert one.put("doomed", b"x")[0] == 200
    _, before = follow(one)
    assert one.request("DELETE", "/blobs/alice/doomed")[0] == 200
    _, after = follow(one, before)
    done = pgblobs_cli("purge", "--older-than", "0s", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    status, _, body = feed(one, since=before)
    assert status == 410 and b"list" in body
    assert feed(one, since=after)[0] == 200
    assert feed(one)[0] == 200  # from the oldest kept


@pytest.mark.parametrize(
    "query",
    [
        {"since": "nonsense"},
        {"since": ""},
        {"since": "c-1"},
        {"since": "c99999999999999999999"},
        {"since": "c12"},  # no horizon
        {"since": "c999999999999.0"},  # beyond any number handed out: another database's
        {"limit": "0"},
        {"limit": "10001"},
        {"limit": "x"},
        {"wait": "61"},
        {"wait": "-1"},
        {"wait": "soon"},
        {"namespace": "no spaces"},
    ],
)
def test_malformed_parameters_are_400(nodes, dsn, query):
    one, _ = clients(nodes, dsn)
    status, _, body = feed(one, **query)
    expected = 410 if query == {"since": "c999999999999.0"} else 400
    assert status == expected, body


def test_auth_and_head(nodes, dsn):
    one, _ = clients(nodes, dsn)
    bob = Client(one_url := nodes[0].url, "bob", token_for(dsn, "bob"))
    assert bob.request("GET", "/changes/alice")[0] == 403
    anonymous = Client(one_url, "alice", "wrong")
    assert anonymous.request("GET", "/changes/alice")[0] == 401
    status, headers, body = one.request("HEAD", "/changes/alice")
    assert (status, body) == (200, b"") and headers["Content-Type"] == "application/json"


def test_cursors_survive_a_restart_of_the_node(migrated_dsn, dsn):
    node = ServeProcess("--dsn", migrated_dsn)
    try:
        [client] = clients([node], dsn)
        assert client.put("before", b"x")[0] == 200
        _, cursor = follow(client)
    finally:
        node.stop()
    node = ServeProcess("--dsn", migrated_dsn)
    try:
        [client] = clients([node], dsn)
        assert client.put("after", b"y")[0] == 200
        changes, _ = follow(client, cursor)
        assert [c["id"] for c in changes] == ["after"]
    finally:
        node.stop()


def test_claims_and_lease_ends_are_flags_changes(nodes, dsn):
    one, other = clients(nodes, dsn)
    deliver(nodes[0], dsn, "mail-2", b"another message")
    _, cursor = follow(one)
    status, _, claimed = other.request("POST", "/claim/alice?namespace=MX&lease=1")
    assert (status, json.loads(claimed)) == (200, ["mail-2"])
    changes, cursor = follow(one, cursor)
    assert [(c["id"], c["change"], c["flags"]) for c in changes] == [
        ("mail-2", "flags", ["PROCESSING"])
    ]
    status, _, answer = feed(one, since=cursor, wait=10)  # the lease ends on its own
    assert status == 200
    assert [(c["id"], c["change"], c["flags"]) for c in answer["changes"]] == [
        ("mail-2", "flags", ["PENDING"])
    ]


def test_held_requests_past_the_node_bound_are_429(migrated_dsn, dsn):
    node = ServeProcess("--dsn", migrated_dsn, "--max-held-changes", "2")
    try:
        alice, bob = (clients([node], dsn, user)[0] for user in ("alice", "bob"))
        cursors = {client.user: follow(client)[1] for client in (alice, bob)}
        holders = [
            threading.Thread(
                target=feed, args=(client,), kwargs={"since": cursors[client.user], "wait": 20}
            )
            for client in (alice, bob)
        ]
        for holder in holders:
            holder.start()
        wait_until(lambda: held_on(node) == 2, "two requests held")
        status, headers, body = feed(alice, since=cursors["alice"], wait=20)
        assert status == 429 and headers["Retry-After"] == "2" and b"on this node" in body
    finally:
        assert node.stop() == 0  # draining answers the held requests at once
    for holder in holders:
        holder.join(10)
        assert not holder.is_alive()
