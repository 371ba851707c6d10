"""Clients that stop reading, stop sending or trickle: they are cut off, and
they never hold up another user's transfers."""

import socket
import threading
import time

import pytest

from tests.helpers import content, sql, wait_until
from tests.processes import ServeProcess
from tests.reliability.clients import Client, token_for
from tests.tus import created, offset_of, patch

pytestmark = pytest.mark.slow

BIG = 16 * 1024 * 1024  # far more than socket buffers hold


def connect(node, receive_buffer=None):
    connection = socket.socket()
    if receive_buffer:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    connection.settimeout(30)
    connection.connect(("127.0.0.1", node.port))
    return connection


def stalled_get(node, client, blob_id):
    """A GET whose client never reads a byte of the answer."""
    connection = connect(node, receive_buffer=4096)
    connection.sendall(
        f"GET /blobs/{client.user}/{blob_id} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {client.auth}\r\n\r\n".encode()
    )
    return connection


def stalled_put(node, client, blob_id, length, sent):
    """A PUT that announces ``length`` bytes and sends only ``sent``."""
    connection = connect(node)
    connection.sendall(
        f"PUT /blobs/{client.user}/{blob_id} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {client.auth}\r\nContent-Length: {length}\r\n\r\n".encode()
        + b"x" * sent
    )
    return connection


def is_closed(connection, within):
    """Whether the server closes ``connection`` within ``within`` seconds
    (whatever it had sent is read and dropped)."""
    deadline = time.monotonic() + within
    connection.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if connection.recv(1 << 20) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def received_until_closed(connection):
    """Bytes read until the server closed (or reset) the connection."""
    received = 0
    connection.settimeout(10)
    try:
        while chunk := connection.recv(1 << 20):
            received += len(chunk)
    except OSError:
        pass
    return received


def content_in_use(node):
    status, _, body = Client(node.url, "-", "-").request("GET", "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith('pgblobs_db_connections_in_use{pool="content"}'):
            return float(line.split()[-1])
    raise AssertionError("no content pool gauge")


def open_transactions(dsn):
    return sql(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()",
    )[0][0]


@pytest.fixture
def users(dsn):
    return {name: token_for(dsn, name) for name in ("alice", "bob")}


@pytest.fixture
def serve(dsn):
    """Starts `pgblobs serve --dsn DSN OPTIONS...` nodes, stopped after the test."""
    nodes = []

    def start(*options):
        nodes.append(ServeProcess("--dsn", dsn, "--quota-bytes", "unlimited", *options))
        return nodes[-1]

    yield start
    for node in nodes:
        node.stop()


def test_a_reader_that_stops_is_cut_and_its_transaction_ends(dsn, users, serve):
    node = serve("--idle-timeout", "2", "--pool-size", "2")
    alice = Client(node.url, "alice", users["alice"])
    assert alice.put("big", content(BIG))[0] == 200
    connection = stalled_get(node, alice, "big")
    # The read, waiting for the client:
    wait_until(lambda: open_transactions(dsn) == 1, "reading", timeout=10)
    time.sleep(3)  # reading nothing meanwhile: reading is progress
    assert open_transactions(dsn) == 0
    assert content_in_use(node) == 0
    assert received_until_closed(connection) < BIG
    assert alice.get("big")[::2] == (200, content(BIG))


def test_a_body_that_stops_arriving_is_cut_and_stores_nothing(dsn, users, serve):
    node = serve("--idle-timeout", "2", "--pool-size", "2")
    alice = Client(node.url, "alice", users["alice"])
    large = stalled_put(node, alice, "large", 5_000_000, 1_000_000)
    small = stalled_put(node, alice, "small", 100_000, 50_000)
    for connection in (large, small):
        connection.settimeout(10)
        assert connection.recv(1000).startswith(b"HTTP/1.1 408 ")
        assert is_closed(connection, within=10)
    assert open_transactions(dsn) == 0 and content_in_use(node) == 0
    assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0] == 0
    assert sql(dsn, "SELECT count(*) FROM pg_largeobject_metadata")[0][0] == 0


def test_one_users_stalled_transfers_leave_room_for_everyone_else(users, serve):
    node = serve("--idle-timeout", "60", "--pool-size", "4")
    stalled = []
    trickling = threading.Event()
    try:
        alice = Client(node.url, "alice", users["alice"])
        bob = Client(node.url, "bob", users["bob"])
        assert alice.put("big", content(BIG))[0] == 200
        assert bob.put("mine", content(1 << 20, seed=1))[0] == 200
        stalled += [stalled_get(node, alice, "big") for _ in range(6)]
        trickles = [stalled_put(node, alice, f"slow-{i}", 2_000_000, 300_000) for i in range(6)]
        stalled += trickles

        def trickle():
            while not trickling.wait(1.0):
                for connection in trickles:
                    connection.sendall(b"x")

        threading.Thread(target=trickle, daemon=True).start()
        # A moment for alice's transfers to take what her share allows (how
        # many depends on it: nothing exact to wait for).
        time.sleep(2)
        started = time.monotonic()
        assert bob.get("mine")[::2] == (200, content(1 << 20, seed=1))
        assert bob.put("more", content(1 << 20, seed=2))[0] == 200
        assert time.monotonic() - started < 5, "bob waited for alice's stalled transfers"
    finally:
        trickling.set()
        for connection in stalled:
            connection.close()


def test_trickled_uploads_are_cut_and_a_new_user_gets_through(dsn, serve):
    # A byte every 4 s restarts the stall clock (10 s) every time: only the
    # rate floor (default 1 KiB/s over 10 s) tells these bodies apart.
    node = serve("--idle-timeout", "10", "--pool-size", "4")
    alice, bob, carol = (
        Client(node.url, name, token_for(dsn, name)) for name in ("alice", "bob", "carol")
    )
    trickles = [
        stalled_put(node, who, f"slow-{i}", 2_000_000, 1) for who in (alice, bob) for i in range(2)
    ]
    done = threading.Event()

    def trickle():
        while not done.wait(4.0):
            for connection in trickles:
                try:
                    connection.sendall(b"x")
                except OSError:
                    pass  # cut

    threading.Thread(target=trickle, daemon=True).start()
    try:
        # Two users, two uploads each: every content connection (4) is theirs.
        wait_until(lambda: open_transactions(dsn) == 4, "the trickles holding the pool", 20)
        started = time.monotonic()
        data = content(400_000, seed=3)
        assert carol.put("mine", data)[0] == 200
        assert carol.get("mine")[::2] == (200, data)
        print(f"carol got through after {time.monotonic() - started:.1f} s")
        for connection in trickles:
            connection.settimeout(10)
            answer = connection.recv(1000)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"slower than" in answer, answer
        wait_until(lambda: open_transactions(dsn) == 0, "the cut uploads' transactions ended", 10)
        assert sql(dsn, "SELECT count(*) FROM pgblobs.blobs")[0][0] == 1
    finally:
        done.set()
        for connection in trickles:
            connection.close()


def test_a_request_queued_for_a_connection_outlives_the_idle_timeout(users, serve):
    node = serve("--idle-timeout", "2", "--pool-size", "1")
    alice = Client(node.url, "alice", users["alice"])
    bob = Client(node.url, "bob", users["bob"])
    # alice holds the only content connection for ~6 s, sending steadily.
    slow = stalled_put(node, alice, "slow", 300_006, 300_000)
    answers = {}
    queued = threading.Thread(
        target=lambda: answers.update(bob=bob.put("queued", content(1 << 20)))
    )
    wait_until(lambda: content_in_use(node) == 1, "alice holding the connection")
    queued.start()
    for _ in range(6):
        time.sleep(1)  # the scenario: alice sends steadily, slowly
        slow.sendall(b"x")
    assert slow.recv(100).startswith(b"HTTP/1.1 200")
    queued.join(30)
    assert answers["bob"][0] == 200
    assert bob.get("queued")[::2] == (200, content(1 << 20))
    slow.close()


def test_the_header_deadline_starts_at_the_connection(serve):
    node = serve("--idle-timeout", "30", "--header-timeout", "3")
    started = time.monotonic()
    connection = connect(node)
    closed = False
    for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n" * 4:
        try:
            connection.sendall(bytes([byte]))
        except OSError:
            closed = True
            break
        time.sleep(0.5)  # the scenario: a header byte every half second
        if time.monotonic() - started > 8:
            break
    assert closed or is_closed(connection, within=1)
    assert time.monotonic() - started < 6


def test_stalled_small_uploads_hold_bounded_memory(users, serve):
    node = serve("--idle-timeout", "20", "--pool-size", "2", "--max-buffered-bytes", "2000000")
    stalled = []
    try:
        alice = Client(node.url, "alice", users["alice"])
        bob = Client(node.url, "bob", users["bob"])
        assert alice.put("warm-up", b"x" * 200_000)[0] == 200
        before = node.rss_kib()
        for i in range(200):
            stalled.append(stalled_put(node, alice, f"stuck-{i}", 250_000, 249_999))
        time.sleep(3)  # for the bodies to arrive: the node shows no count of them
        growth_mib = (node.rss_kib() - before) / 1024
        print(f"RSS grew by {growth_mib:.1f} MiB for 200 stalled uploads of 250 kB")
        assert growth_mib < 25
        assert bob.put("honest", b"y" * 100_000)[0] == 200
    finally:
        for connection in stalled:
            connection.close()


def test_a_silent_connection_between_requests_is_closed(serve):
    node = serve("--idle-timeout", "2", "--header-timeout", "30")
    connection = connect(node)
    connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert connection.recv(1000).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert is_closed(connection, within=10)
    assert 1.5 < time.monotonic() - started < 5


def stalled_patch(node, client, path, length, sent):
    """A PATCH that announces ``length`` bytes from offset 0 and sends only ``sent``."""
    connection = connect(node)
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {client.auth}\r\n"
        "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {length}\r\n\r\n"
    )
    connection.sendall(head.encode() + b"x" * sent)
    return connection


def test_a_patch_that_stops_arriving_is_cut_and_keeps_what_arrived(dsn, users, serve):
    node = serve("--idle-timeout", "2", "--pool-size", "2")
    alice = Client(node.url, "alice", users["alice"])
    path = created(alice, "stalled", 5_000_000)
    connection = stalled_patch(node, alice, path, 5_000_000, 1_000_000)
    connection.settimeout(10)
    assert connection.recv(1000).startswith(b"HTTP/1.1 408 ")
    assert is_closed(connection, within=10)
    assert open_transactions(dsn) == 0 and content_in_use(node) == 0
    # Every byte that reached the server is kept: the client goes on from there.
    assert offset_of(alice, path) == 1_000_000


def test_one_users_stalled_patches_leave_room_for_everyone_else(users, serve):
    node = serve("--idle-timeout", "60", "--pool-size", "4")
    alice = Client(node.url, "alice", users["alice"])
    bob = Client(node.url, "bob", users["bob"])
    stalled = [
        stalled_patch(node, alice, created(alice, f"slow-{i}", 2_000_000), 2_000_000, 1)
        for i in range(6)
    ]
    try:
        # A moment for alice's PATCHes to take what her share allows (how
        # many depends on it: nothing exact to wait for).
        time.sleep(2)
        started = time.monotonic()
        path = created(bob, "mine", 1 << 20)
        status, headers, _ = patch(bob, path, 0, content(1 << 20))
        assert (status, headers.get("Upload-Offset")) == (204, str(1 << 20))
        assert bob.put("more", content(1 << 20, seed=2))[0] == 200
        assert time.monotonic() - started < 5, "bob waited for alice's stalled PATCHes"
        assert bob.get("mine")[::2] == (200, content(1 << 20))
    finally:
        for connection in stalled:
            connection.close()
