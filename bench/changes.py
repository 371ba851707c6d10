"""The change feed against what Soledad's client does today (issue 20).

1. A user with 20,000 live blobs and 2,000 tombstones, 10 of them changed
   since the last sync: one GET /changes from the cursor of that sync, against
   the two listings Soledad's client makes each sync (GET /blobs/{user}/ and
   ?deleted=True). Bytes of the answers on the wire and milliseconds, on one
   `pgblobs serve`.
2. Push latency: a request held on node B (wait=30), a PUT on node A; from
   just before the PUT is sent to the held answer received, over keep-alive
   connections.
3. 1,000 requests held on one node: its RSS and CPU while they wait.

Blobs are random bytes (os.urandom): clients send encrypted blobs. Writes
bench/changes.md.

    python -m bench.changes
"""

import asyncio
import datetime
import http.client
import json
import os
import resource
import socket
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.measure import machine, rss_kib
from bench.scratch import new_database, serving
from pgblobs import accounts
from pgblobs.db.sync import SyncConnection
from pgblobs.transfer import ContentDigest
from tests.helpers import token_header, wait_until
from tests.processes import ServeProcess

RESULTS = Path(__file__).with_name("changes.md")
LIVE, TOMBSTONES, SIZE = 20_000, 2_000, 1024  # bytes of each blob
BATCH = 1000  # blobs a bulk insert carries
REPETITIONS = 20
ROUNDS = 200
HELD = 1000
IDLE_SECONDS = 20.0
# Descriptors for this process's 1,000 sockets and the server's (its default
# --max-connections is its own limit less a reserve): children inherit it.
DESCRIPTORS = 4096


class RawConnection:
    """One keep-alive HTTP/1.1 connection that counts every byte of each
    answer as it comes off the socket: status line, headers, body (with its
    chunked framing, if any)."""

    def __init__(self, url: str, auth: str) -> None:
        parts = urlsplit(url)
        self._host = f"{parts.hostname}:{parts.port}"
        self._auth = auth
        self._socket = socket.create_connection((parts.hostname, parts.port))
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def get(self, path: str) -> tuple[int, bytes, int]:
        """(status, body, bytes of the answer on the wire)."""
        self._socket.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {self._host}\r\n"
            f"Authorization: {self._auth}\r\n\r\n".encode()
        )
        self._buffer, wire = b"", 0
        head = self._until(b"\r\n\r\n")
        wire += len(head)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        if headers.get("transfer-encoding") == "chunked":
            chunks = []
            while True:
                size_line = self._until(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                chunk = self._exactly(size + 2)
                wire += len(size_line) + len(chunk)
                chunks.append(chunk[:-2])
                if size == 0:
                    break
            body = b"".join(chunks)
        else:
            body = self._exactly(int(headers.get("content-length", "0")))
            wire += len(body)
        assert not self._buffer, "the server sent more than one answer"
        return status, body, wire

    def _fill(self) -> None:
        data = self._socket.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._buffer += data

    def _until(self, end: bytes) -> bytes:
        while end not in self._buffer:
            self._fill()
        found, _, self._buffer = self._buffer.partition(end)
        return found + end

    def _exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill()
        found, self._buffer = self._buffer[:count], self._buffer[count:]
        return found

    def close(self) -> None:
        self._socket.close()


def keep_alive(url: str) -> http.client.HTTPConnection:
    """A connection made now (http.client sets TCP_NODELAY), kept for many requests."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=90)
    connection.connect()
    return connection


def exchange(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    auth: str | None,
    body: bytes | None = None,
) -> tuple[int, bytes]:
    headers = {} if auth is None else {"Authorization": auth}
    connection.request(method, path, body=body, headers=headers)
    answer = connection.getresponse()
    return answer.status, answer.read()


def held_on(url: str) -> float:
    """Feed requests the node holds now, as its /metrics says."""
    connection = keep_alive(url)
    status, text = exchange(connection, "GET", "/metrics", None)
    connection.close()
    assert status == 200, status
    for line in text.decode().splitlines():
        if line.startswith("pgblobs_changes_held "):
            return float(line.split()[1])
    raise AssertionError("no pgblobs_changes_held in /metrics")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


# 1. The feed against the two listings ----------------------------------------------------


def fill(connection: SyncConnection, user: str) -> list[str]:
    """LIVE + TOMBSTONES blobs of ``user`` through import-fs's bulk insert
    (real large objects, as the server makes them), dated a second apart, then
    TOMBSTONES of them deleted as the server deletes them; the live ids."""
    ids = [uuid.uuid4().hex for _ in range(LIVE + TOMBSTONES)]  # 32 hex digits, as uuids
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=len(ids))
    for first in range(0, len(ids), BATCH):
        batch = ids[first : first + BATCH]
        contents, tags, digests = [], [], []
        for _ in batch:
            data = os.urandom(SIZE)
            digest = ContentDigest()
            digest.update(data)
            contents.append(data)
            tags.append(digest.tag)
            digests.append(digest.sha256)
        connection.fetch(
            "import_small_blobs",
            {
                "users": [user] * len(batch),
                "namespaces": ["default"] * len(batch),
                "blob_ids": batch,
                "contents": contents,
                "tags": tags,
                "sha256s": digests,
                "flags": [""] * len(batch),
                "dates": [
                    started + datetime.timedelta(seconds=first + i) for i in range(len(batch))
                ],
            },
        )
    with connection.transaction():
        for blob_id in ids[::11][:TOMBSTONES]:
            params = {"user": user, "namespace": "default", "blob_id": blob_id}
            assert connection.fetch("delete_blob", params)
    with connection.raw.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE pgblobs.blobs")
    gone = set(ids[::11][:TOMBSTONES])
    return [blob_id for blob_id in ids if blob_id not in gone]


def follow(raw: RawConnection, user: str) -> str:
    """The cursor at the end of the user's feed."""
    cursor = None
    while True:
        since = "" if cursor is None else f"&since={cursor}"
        status, body, _ = raw.get(f"/changes/{user}?limit=10000{since}")
        assert status == 200, body
        answer = json.loads(body)
        cursor = answer["cursor"]
        if not answer["more"]:
            return cursor


def change_ten(node: ServeProcess, auth: str, user: str, live: list[str]) -> None:
    """4 new blobs, 3 deleted, 3 flagged, through the server."""
    connection = keep_alive(node.url)
    for _ in range(4):
        status, _ = exchange(
            connection, "PUT", f"/blobs/{user}/{uuid.uuid4().hex}", auth, os.urandom(SIZE)
        )
        assert status == 200, status
    for blob_id in live[100:103]:
        assert exchange(connection, "DELETE", f"/blobs/{user}/{blob_id}", auth)[0] == 200
    for blob_id in live[200:203]:
        flags = b'["PROCESSED"]'
        assert exchange(connection, "POST", f"/blobs/{user}/{blob_id}", auth, flags)[0] == 200
    connection.close()


def feed_against_listings(node: ServeProcess, auth: str, user: str, live: list[str]) -> dict:
    raw = RawConnection(node.url, auth)
    cursor = follow(raw, user)
    change_ten(node, auth, user, live)
    # (path, what its answer must hold): the feed's one request, Soledad's two, and the
    # feed with nothing after the cursor: what any request costs, the floor of the feed's.
    asked = {
        "feed": [(f"/changes/{user}?since={cursor}", 10)],
        "nothing new": [(f"/changes/{user}?since={follow(raw, user)}", 0)],
        "listings": [
            (f"/blobs/{user}/", LIVE - 3 + 4),
            (f"/blobs/{user}/?deleted=True", TOMBSTONES + 3),
        ],
    }

    def sync(name: str) -> tuple[float, int]:
        """Seconds and bytes on the wire of one sync's requests; the answers
        are checked after the clock stops (the listings' JSON takes a while
        to parse, and that is the client's time, not the server's)."""
        seconds, wire, answers = 0.0, 0, []
        for path, _ in asked[name]:
            started = time.perf_counter()
            status, body, size = raw.get(path)
            seconds += time.perf_counter() - started
            wire += size
            answers.append((status, body))
        for (status, body), (path, count) in zip(answers, asked[name], strict=True):
            assert status == 200, (path, status, body[:200])
            answer = json.loads(body)
            if name != "listings":
                assert not answer["more"], answer
                answer = answer["changes"]
            assert len(answer) == count, (path, len(answer))
        return seconds, wire

    for name in asked:  # warm: plans cached, the table's pages in memory
        sync(name)
    times: dict[str, list[float]] = {name: [] for name in asked}
    wires: dict[str, set[int]] = {name: set() for name in asked}
    for _ in range(REPETITIONS):
        for name in times:
            seconds, wire = sync(name)
            times[name].append(seconds)
            wires[name].add(wire)
    raw.close()
    return {
        name: {"bytes": max(wires[name]), "ms": statistics.median(times[name]) * 1000}
        for name in times
    }


# 2. Push latency across nodes ------------------------------------------------------------


def push_latency(a: ServeProcess, b: ServeProcess, auth: str, user: str) -> dict:
    writer, reader = keep_alive(a.url), keep_alive(b.url)
    status, body = exchange(reader, "GET", f"/changes/{user}", auth)
    assert status == 200, body
    cursor = json.loads(body)["cursor"]
    to_answer, to_200, after_200 = [], [], []
    for round_ in range(ROUNDS):
        reader.request(
            "GET", f"/changes/{user}?since={cursor}&wait=30", headers={"Authorization": auth}
        )
        answered: dict[str, Any] = {}

        def read_held(reader: http.client.HTTPConnection = reader, to: dict = answered) -> None:
            answer = reader.getresponse()
            body = answer.read()
            to["at"] = time.perf_counter()
            to["status"], to["body"] = answer.status, body

        waiter = threading.Thread(target=read_held)
        waiter.start()
        wait_until(lambda: held_on(b.url) == 1, "the request held on node B", every=0.005)
        before = time.perf_counter()
        status, _ = exchange(writer, "PUT", f"/blobs/{user}/push-{round_}", auth, os.urandom(SIZE))
        put_done = time.perf_counter()
        assert status == 200, status
        waiter.join(60)
        assert answered.get("status") == 200, answered
        answer = json.loads(answered["body"])
        assert [c["id"] for c in answer["changes"]] == [f"push-{round_}"], answer
        cursor = answer["cursor"]
        to_answer.append((answered["at"] - before) * 1000)
        to_200.append((put_done - before) * 1000)
        after_200.append((answered["at"] - put_done) * 1000)
    writer.close()
    reader.close()
    return {"to_answer": to_answer, "to_200": to_200, "after_200": after_200}


# 3. 1,000 held requests ------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def idle_cpu(pid: int) -> float:
    """Percent of one core the process used over IDLE_SECONDS."""
    before = cpu_seconds(pid)
    await asyncio.sleep(IDLE_SECONDS)  # the measured span, not a wait for anything
    return (cpu_seconds(pid) - before) / IDLE_SECONDS * 100


async def hold(
    url: str, auth: str, user: str, cursor: str, opening: asyncio.Semaphore
) -> tuple[asyncio.StreamWriter, asyncio.Task[bytes]]:
    """A held request's connection, and the read of its first byte of answer."""
    parts = urlsplit(url)
    async with opening:  # the listen backlog is short: a few connects at a time
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(
            f"GET /changes/{user}?since={cursor}&wait=60 HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\nAuthorization: {auth}\r\n\r\n".encode()
        )
        await writer.drain()
    return writer, asyncio.create_task(reader.read(1))


async def held_cost(node: ServeProcess, users: list[tuple[str, str, str]]) -> dict:
    pid = node.process.pid
    idle_rss = rss_kib(pid)
    idle = await idle_cpu(pid)
    opening = asyncio.Semaphore(32)
    held = await asyncio.gather(
        *(hold(node.url, auth, user, cursor, opening) for user, auth, cursor in users)
    )
    await asyncio.to_thread(
        wait_until, lambda: held_on(node.url) == HELD, f"{HELD} held", timeout=50
    )
    held_rss = rss_kib(pid)
    busy = await idle_cpu(pid)
    still = await asyncio.to_thread(held_on, node.url)
    answered = sum(1 for _, answer in held if answer.done())
    for writer, answer in held:
        answer.cancel()
        writer.close()
    assert still == HELD and answered == 0, (still, answered)
    return {
        "idle_rss": idle_rss,
        "held_rss": held_rss,
        "idle_cpu": idle,
        "held_cpu": busy,
    }


def held_users(connection: SyncConnection, node: ServeProcess) -> list[tuple[str, str, str]]:
    """HELD users, each with a token and the cursor at the end of its (empty) feed."""
    users = []
    reader = keep_alive(node.url)
    for number in range(HELD):
        user = f"device{number:04d}"
        auth = token_header(user, accounts.create_token(connection, user))
        status, body = exchange(reader, "GET", f"/changes/{user}", auth)
        assert status == 200, body
        users.append((user, auth, json.loads(body)["cursor"]))
    reader.close()
    return users


# The run ---------------------------------------------------------------------------------


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(DESCRIPTORS, hard), hard))
    info = machine()
    with new_database("pgblobs-bench-changes-") as dsn:
        connection = SyncConnection.connect(dsn)
        user = "alice"
        auth = token_header(user, accounts.create_token(connection, user))
        started = time.monotonic()
        live = fill(connection, user)
        print(f"{LIVE:,} blobs and {TOMBSTONES:,} tombstones in {time.monotonic() - started:.0f} s")
        with serving(dsn, "--quota-bytes", "unlimited") as a:
            sync = feed_against_listings(a, auth, user, live)
            print(sync, flush=True)
            with serving(dsn) as b:
                pusher = token_header("pusher", accounts.create_token(connection, "pusher"))
                push = push_latency(a, b, pusher, "pusher")
        print({k: statistics.median(v) for k, v in push.items()}, flush=True)
        with serving(dsn) as node:
            users = held_users(connection, node)
            cost = asyncio.run(held_cost(node, users))
        connection.close()
    print(cost)
    write(info, sync, push, cost)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def write(info: dict, sync: dict, push: dict, cost: dict) -> None:
    feed, listings, floor = sync["feed"], sync["listings"], sync["nothing new"]
    fewer, faster = listings["bytes"] / feed["bytes"], listings["ms"] / feed["ms"]
    p50 = percentile(push["to_answer"], 0.5)
    lines = [
        "# The change feed against the listings, push latency, held requests",
        "",
        f"{info['date']}, {info['revision']}; {info['machine']} (shared: other work ran "
        f"meanwhile); {info['postgres']}; fsync on. Produced by `python -m bench.changes`.",
        "",
        f"## 1. One sync: {LIVE:,} blobs, {TOMBSTONES:,} tombstones, 10 changed since the last",
        "",
        f"User alice: {LIVE:,} live blobs of {SIZE:,} random bytes and {TOMBSTONES:,} "
        "tombstones (ids of 32 hex digits, uuid4().hex), stored through import-fs's bulk "
        "insert (real large objects) and the server's delete. The feed followed to its end, "
        "then through the server 4 new blobs, 3 deleted, 3 flagged. Bytes: what came off "
        "the socket for the answers (status line, headers, body), counted on a raw socket; "
        f"ms: median of {REPETITIONS} repetitions, alternating, one keep-alive connection.",
        "",
        "| what the client asks | requests | bytes on the wire | ms (median) |",
        "|---|---:|---:|---:|",
        f"| GET /changes/alice?since=CURSOR (the feed) | 1 | {feed['bytes']:,} "
        f"| {feed['ms']:.1f} |",
        f"| GET /blobs/alice/ + GET /blobs/alice/?deleted=True (Soledad today) | 2 "
        f"| {listings['bytes']:,} | {listings['ms']:.1f} |",
        f"| ratio | | {fewer:,.0f}x fewer | {faster:,.1f}x less |",
        f"| GET /changes/alice?since=NEWEST (nothing changed: any request's floor) | 1 "
        f"| {floor['bytes']:,} | {floor['ms']:.1f} |",
        "",
        f"Goal: at least 100x fewer bytes ({verdict(fewer >= 100)}) and 20x less time "
        f"({verdict(faster >= 20)}). The feed's answer costs little more than an empty one: "
        "its time is the floor of any authenticated request (token check, one statement, "
        "HTTP), so the time ratio is the listings' time over that floor, and moves with "
        "the machine's load more than the bytes do.",
        "",
        "## 2. Push latency: a PUT on node A to the answer of a request held on node B",
        "",
        f"Two `pgblobs serve` nodes on one database; {ROUNDS} rounds, each a GET "
        "/changes/pusher?since=CURSOR&wait=30 on B (held: B's /metrics says "
        "pgblobs_changes_held 1), then a PUT of 1 KiB on A; keep-alive connections "
        "(http.client), so no connection setup is measured.",
        "",
        "| from | to | p50 | p99 | max |",
        "|---|---|---:|---:|---:|",
    ]
    for start, end, key in [
        ("just before the PUT is sent", "held answer received", "to_answer"),
        ("just before the PUT is sent", "PUT's 200 received", "to_200"),
        ("PUT's 200 received", "held answer received", "after_200"),
    ]:
        values = push[key]
        lines.append(
            f"| {start} | {end} | {percentile(values, 0.5):.1f} ms "
            f"| {percentile(values, 0.99):.1f} ms | {max(values):.1f} ms |"
        )
    delta = cost["held_rss"] - cost["idle_rss"]
    lines += [
        "",
        f"Goal: p50 <= 50 ms, first row ({verdict(p50 <= 50)}).",
        "",
        f"## 3. {HELD:,} held requests on one node",
        "",
        f"{HELD:,} users, one GET /changes/{{user}}?since=CURSOR&wait=60 each, held at once on "
        f"a fresh node (raw asyncio sockets; RLIMIT_NOFILE {DESCRIPTORS}); RSS of the serve "
        f"process from /proc/PID/status, CPU from /proc/PID/stat (utime + stime, every "
        f"thread) over {IDLE_SECONDS:.0f} s with nothing written (counted in clock ticks: "
        f"{100 / os.sysconf('SC_CLK_TCK') / IDLE_SECONDS:.2f} % is one tick).",
        "",
        f"| | RSS | CPU over {IDLE_SECONDS:.0f} s idle |",
        "|---|---:|---:|",
        f"| no request held | {cost['idle_rss'] / 1024:.1f} MiB "
        f"| {cost['idle_cpu']:.2f} % of one core |",
        f"| {HELD:,} held | {cost['held_rss'] / 1024:.1f} MiB "
        f"| {cost['held_cpu']:.2f} % of one core |",
        f"| per held request | {delta / HELD:.1f} KiB | |",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
