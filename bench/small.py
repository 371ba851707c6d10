"""Small blobs at file speed (issue 11): HTTP under wrk against the Python
floor and nginx, /stream against single requests, one read among 100,000
blobs of its user, and import-fs."""

import base64
import json
import os
import random
import statistics
import time
from pathlib import Path

import treq

from bench import contenders, wrk
from bench.measure import RUNS
from pgblobs.db.sync import SyncConnection
from pgblobs.ops import importfs
from tests.processes import ServeProcess, free_port

SMALL = 10_000
STREAMED = 1000
CROWD = 100_000
IMPORTED = 5000
WRK_WORKLOAD = "10 KB under wrk"
REPLICA_WORKLOAD = "10 KB under wrk, read replicas"


async def run_all(results, backend, dsn, token, nginx, workdir, cluster):
    await http_under_wrk(results, backend, dsn, token, nginx)
    get_with_a_replica(results, cluster, token, workdir)
    await stream_against_singles(results, dsn, token)
    await read_among_many(results, backend, dsn)
    import_speed(results, dsn, workdir)


async def _seed(backend, count):
    """``count`` 10 KB blobs w0, w1, ... of the user bench, for GETs to pick from."""
    data = os.urandom(SMALL)
    await contenders.bounded(
        [
            lambda i=i: backend.write_blob("bench", f"w{i}", contenders.body(data))
            for i in range(count)
        ]
    )


async def http_under_wrk(results, backend, dsn, token, nginx):
    if not wrk.available():
        print("wrk is not installed: the HTTP rows under wrk are left out", flush=True)
        return
    print(f"\n{WRK_WORKLOAD}: {wrk.CONNECTIONS} connections, {wrk.SECONDS} s each", flush=True)
    await _seed(backend, wrk.STORED)
    auth = "Token " + base64.b64encode(f"bench:{token}".encode()).decode()
    serve_args = ("--dsn", dsn, "--quota-bytes", "unlimited")
    targets = []  # (name, url, path prefix, auth, stop)
    bare = wrk.BareServer(free_port())
    targets.append(("bare twisted.web (no work)", bare.url, "/", "", bare.stop))
    for workers in (1, 2):
        node = ServeProcess(*serve_args, "--workers", str(workers))
        name = f"pgblobs HTTP, {workers} worker{'s' if workers > 1 else ''}"
        targets.append((name, node.url, "/blobs/bench/", auth, node.stop))
    if nginx is not None:
        _seed_nginx(nginx.url)
        targets.append(("nginx WebDAV", nginx.url, "/dav/", "", lambda: None))
    try:
        for mode in ("GET", "PUT"):
            for name, url, prefix, header, _ in targets:
                rate = wrk.requests_per_second(url, prefix, mode, header, run=f"{mode}{len(name)}")
                results.add(WRK_WORKLOAD, mode, name, 1 / rate, wrk.SIZE)
                print(f"    {rate:,.0f} requests/s", flush=True)
    finally:
        for *_, stop in targets:
            stop()


def get_with_a_replica(results, primary, token, workdir):
    """10 KB GETs under wrk from one node, with 0 and 1 streaming replicas
    (one worker each; the replica on the same two cores)."""
    if not wrk.available():
        return
    from pgblobs.cluster import LocalCluster
    from tests.reliability.conftest import start_standby

    print("\n10 KB GET under wrk with 0 and 1 read replicas", flush=True)
    standby = LocalCluster(Path(workdir) / "standby")
    start_standby(primary, standby)
    auth = "Token " + base64.b64encode(f"bench:{token}".encode()).decode()
    try:
        for replicas in (0, 1):
            extra = ("--replica-dsn", standby.dsn) if replicas else ()
            node = ServeProcess("--dsn", primary.dsn, "--quota-bytes", "unlimited", *extra)
            try:
                time.sleep(1.5)  # the replica has been checked
                rate = wrk.requests_per_second(node.url, "/blobs/bench/", "GET", auth)
            finally:
                node.stop()
            name = f"pgblobs HTTP, {replicas} replica{'' if replicas == 1 else 's'}"
            results.add(REPLICA_WORKLOAD, "GET", name, 1 / rate, wrk.SIZE)
            print(f"    {rate:,.0f} requests/s", flush=True)
    finally:
        standby.stop()


def _seed_nginx(url):
    import urllib.request

    data = os.urandom(SMALL)
    for i in range(wrk.STORED):
        request = urllib.request.Request(f"{url}/dav/w{i}", data=data, method="PUT")
        urllib.request.urlopen(request).close()


async def stream_against_singles(results, dsn, token):
    print(f"\n/stream against single requests, {STREAMED} x 10 KB, one node", flush=True)
    node = ServeProcess("--dsn", dsn, "--quota-bytes", "unlimited")
    auth = {b"Authorization": [b"Token " + base64.b64encode(f"bench:{token}".encode())]}
    singles = contenders.HttpStore("1000 single requests", [node.url + "/blobs/bench"], auth)
    workload = f"{STREAMED} x 10 KB, /stream"
    try:
        timings = {"upload": ([], []), "download": ([], [])}
        for run in range(RUNS):
            items = [(f"st{run}-{i}", os.urandom(SMALL)) for i in range(STREAMED)]
            single_items = [(f"sg{run}-{i}", data) for i, data in items]
            timings["upload"][0].append(await _timed(singles.write(single_items)))
            timings["upload"][1].append(await _timed(_stream_upload(node.url, auth, items)))
            timings["download"][0].append(await _timed(singles.read(single_items)))
            timings["download"][1].append(await _timed(_stream_download(node.url, auth, items)))
        size = STREAMED * SMALL
        for operation, (single, streamed) in timings.items():
            results.add(
                workload, operation, "1000 single requests", statistics.median(single), size
            )
            results.add(
                workload, operation, "one /stream request", statistics.median(streamed), size
            )
    finally:
        await singles.close()
        node.stop()


async def _timed(awaitable):
    started = time.perf_counter()
    await awaitable
    return time.perf_counter() - started


async def _stream_upload(url, auth, items):
    listing = json.dumps([[name, len(data)] for name, data in items]).encode()
    body = listing + b"\n" + b"".join(data for _, data in items)
    response = await treq.post(f"{url}/stream/bench?direction=upload", data=body, headers=auth)
    await response.content()
    assert response.code == 200, response.code


async def _stream_download(url, auth, items):
    ids = json.dumps([name for name, _ in items]).encode()
    response = await treq.post(f"{url}/stream/bench?direction=download", data=ids, headers=auth)
    received = []
    await treq.collect(response, lambda chunk: received.append(len(chunk)))
    assert response.code == 200
    assert sum(received) == sum(33 + len(data) for _, data in items)


CROWD_SEED = """
    INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256)
    SELECT 'crowd', 'default', 'c' || i, %(oid)s, %(size)s, 'tag', '\\x00'
    FROM generate_series(1, %(count)s) AS i
"""


async def read_among_many(results, backend, dsn):
    """The same 10 KB read for a user with 100,000 blobs (no ANALYZE since
    they arrived) and for a user with one."""
    print(f"\none read among {CROWD:,} blobs of its user, against a lone read", flush=True)
    data = os.urandom(SMALL)
    await backend.write_blob("loner", "only", contenders.body(data))
    connection = SyncConnection.connect(dsn)
    oid = connection.fetch_one("version_large_object", {"row": _row_of(connection, "loner")})
    with connection.raw.cursor() as cursor:
        cursor.execute(CROWD_SEED, {"oid": oid.lo_oid, "size": SMALL, "count": CROWD})
    connection.close()
    rng = random.Random(11)
    lone, crowded = [], []
    for _ in range(201):
        lone.append(await _timed(_read(backend, "loner", "only")))
        crowded.append(await _timed(_read(backend, "crowd", f"c{rng.randint(1, CROWD)}")))
    for name, times in (("lone user", lone), (f"user with {CROWD:,} blobs", crowded)):
        results.add("one 10 KB read", "read", name, statistics.median(times), SMALL)


def _row_of(connection, user):
    with connection.raw.cursor() as cursor:
        cursor.execute("SELECT id FROM pgblobs.blobs WHERE user_id = %s", (user,))
        return cursor.fetchone()[0]


async def _read(backend, user, blob_id):
    consumer = contenders.Counting()
    await backend.read_blob(user, blob_id, consumer)
    assert consumer.received == SMALL


def import_speed(results, dsn, workdir):
    print(f"\nimport-fs, {IMPORTED:,} x 10 KB files", flush=True)
    root = Path(workdir) / "soledad-store"
    data = os.urandom(SMALL)
    for i in range(IMPORTED):
        blob_id = f"{i:08x}{'ab' * 12}"
        directory = root / "importer" / "default" / blob_id[0] / blob_id[:3] / blob_id[:6]
        directory.mkdir(parents=True, exist_ok=True)
        (directory / blob_id).write_bytes(data)
    connections = [SyncConnection.connect_at_head(dsn) for _ in range(2)]  # as --jobs 2
    started = time.perf_counter()
    report = importfs.import_tree(connections, root)
    seconds = time.perf_counter() - started
    for connection in connections:
        connection.close()
    assert report.imported == IMPORTED and not report.failed, report
    results.add("import-fs", "write", f"{IMPORTED:,} x 10 KB files", seconds, IMPORTED * SMALL)
    print(f"    {IMPORTED / seconds:,.0f} blobs/s", flush=True)
