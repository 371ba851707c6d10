"""`make bench`: one run, one machine, figures and the ratios between them.

Absolute times drift on shared machines; ratios taken in the same run do not,
so every goal is a ratio (or, for metadata, a latency at scale).
"""

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task

from bench import contenders, small
from bench.measure import RUNS, PeakRss, machine, median_seconds
from bench.small import REPLICA_WORKLOAD, WRK_WORKLOAD
from pgblobs import accounts
from pgblobs.cluster import LocalCluster
from pgblobs.db import schema
from pgblobs.db.sync import SyncConnection
from pgblobs.ops import report
from tests.processes import ServeProcess

HERE = Path(__file__).resolve().parent
BIG = 64 * 1024 * 1024
MATRIX = [
    ("1 x 10 MB", 1, 10_000_000),
    ("10 x 1 MB", 10, 1_000_000),
    ("100 x 100 KB", 100, 100_000),
    ("1000 x 10 KB", 1000, 10_000),
]
METADATA_RUNS = 21


class Results:
    def __init__(self):
        self.rows = []  # (workload, operation, contender, seconds, bytes)
        self.goals = []  # (description, measured, target, met, unit)
        self.rss = []  # (run, MiB)

    def peak_rss(self, run, growth_mib):
        earlier = dict(self.rss)
        earlier[run] = max(growth_mib, earlier.get(run, 0.0))
        self.rss = list(earlier.items())

    def add(self, workload, operation, contender, seconds, size):
        self.rows.append((workload, operation, contender, seconds, size))
        print(
            f"  {workload:<14} {operation:<6} {contender:<36} {seconds * 1000:9.1f} ms "
            f"{size / seconds / 1e6:9.1f} MB/s",
            flush=True,
        )

    def seconds(self, workload, operation, contender):
        return next(
            s for w, o, c, s, _ in self.rows if (w, o, c) == (workload, operation, contender)
        )

    def ratio(self, description, workload, operation, contender, reference, target):
        """Goal: ``contender`` at least ``target`` times as fast as ``reference``."""
        measured = self.seconds(workload, operation, reference) / self.seconds(
            workload, operation, contender
        )
        self.goals.append((description, measured, target, measured >= target, "x"))

    def slowdown(self, description, workload, operation, contender, reference, limit):
        """Goal: ``contender`` takes at most ``limit`` times as long as ``reference``."""
        measured = self.seconds(workload, operation, contender) / self.seconds(
            workload, operation, reference
        )
        self.goals.append((description, measured, limit, measured <= limit, "x slower"))

    def latency(self, description, seconds, limit):
        self.goals.append((description, seconds * 1000, limit * 1000, seconds <= limit, "ms"))


async def measure(results, workload, items, stores, reactor, watched, pid, runs=RUNS):
    """Median write and read times of ``items`` through each store.

    Runs go round-robin over the stores, starting each round one store
    later, so a checkpoint, the WAL flush left by the previous writer or a
    busy neighbour lands on every contender alike instead of on whichever
    happened to follow the heaviest one. The RSS of process ``pid`` is watched
    while ``watched`` works.
    """
    size = sum(len(data) for _, data in items)
    timings = {store.name: {"write": [], "read": []} for store in stores}
    named = {}
    for run in range(runs):
        for store in stores[run % len(stores) :] + stores[: run % len(stores)]:
            prefix = "".join(ch for ch in store.name if ch.isalnum())[:12]
            named[store.name] = [(f"{prefix}-{name}-r{run}", data) for name, data in items]
            watch = PeakRss(pid, reactor) if store is watched else None
            started = time.perf_counter()
            await store.write(named[store.name])
            timings[store.name]["write"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await store.read(named[store.name])
            timings[store.name]["read"].append(time.perf_counter() - started)
            if watch is not None:
                results.peak_rss(f"{workload} over HTTP", watch.stop())
    for store in stores:
        for operation in ("write", "read"):
            results.add(
                workload,
                operation,
                store.name,
                statistics.median(timings[store.name][operation]),
                size,
            )


async def main(reactor):
    info = machine()
    print(f"pgblobs benchmark, {info['date']}, {info['revision']}\n{info['machine']}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="pgblobs-bench-"))
    os.chmod(workdir, 0o755)
    cluster = LocalCluster(workdir / "pg")
    cluster.start()  # the server's normal settings: fsync on
    nodes, stores, nginx = [], [], None
    results = Results()
    try:
        schema.upgrade(cluster.dsn)
        backend = await contenders.Backend.connect(cluster.dsn)
        connection = SyncConnection.connect(cluster.dsn)
        token = accounts.create_token(connection, "bench")
        connection.close()
        serve_args = ("--dsn", cluster.dsn, "--quota-bytes", "unlimited")
        nodes = [ServeProcess(*serve_args), ServeProcess(*serve_args)]
        auth = {
            b"Authorization": [
                b"Token " + __import__("base64").b64encode(f"bench:{token}".encode())
            ]
        }
        one_node = contenders.HttpStore(
            "pgblobs HTTP, 1 node", [nodes[0].url + "/blobs/bench"], auth
        )
        two_nodes = contenders.HttpStore(
            "pgblobs HTTP, 2 nodes", [n.url + "/blobs/bench" for n in nodes], auth
        )
        files = contenders.Files(workdir / "files")
        synced = contenders.Files(workdir / "synced", fsync=True)
        stores = [files, synced, backend, one_node, two_nodes]
        if contenders.nginx_available():
            from tests.processes import free_port

            nginx = contenders.Nginx(free_port())
            stores.append(contenders.HttpStore("nginx WebDAV", [nginx.url + "/dav"]))
        else:
            print("nginx is not installed: its rows are left out")

        big = os.urandom(BIG)
        print("\n64 MiB blob", flush=True)
        ceiling = contenders.Ceiling(cluster.dsn)
        await measure(
            results,
            "64 MiB",
            [("big", big)],
            [ceiling, *stores],
            reactor,
            one_node,
            nodes[0].process.pid,
            runs=len(stores) + 1,
        )
        await ceiling.close()

        for workload, count, size in MATRIX:
            print(f"\n{workload}, {contenders.IN_FLIGHT} in flight", flush=True)
            pool = os.urandom(size * count)
            items = [
                (f"{workload.split()[0]}x{size}-{i}", pool[i * size : (i + 1) * size])
                for i in range(count)
            ]
            await measure(results, workload, items, stores, reactor, one_node, nodes[0].process.pid)

        print("\ndiagnostics for the small-blob figures", flush=True)
        await diagnostics(results, backend.backend, cluster.dsn)

        await small.run_all(results, backend.backend, cluster.dsn, token, nginx, workdir, cluster)

        print("\nmetadata: one user with 100,000 blobs among 1,000,000 rows", flush=True)
        await metadata(results, backend.backend, cluster.dsn)
        await backend.close()
        for store in stores[3:]:  # the HTTP stores
            await store.close()
    finally:
        for node in nodes:
            node.stop()
        if nginx is not None:
            nginx.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    judge(results)
    write_results(results, info)


async def diagnostics(results, backend, dsn):
    """What a small blob's time is made of: the floor of one statement through
    the asynchronous pool, and the share of the durable commit (fsync)."""
    pings = [lambda: backend.database.ping() for _ in range(1000)]

    async def ping_all():
        await contenders.bounded(pings)

    floor = statistics.median([await timed(ping_all) for _ in range(RUNS)])
    results.add("1000 x SELECT 1", "query", "txpostgres pool (floor of a small op)", floor, 0)
    relaxed = await contenders.Backend.connect(
        dsn + " options='-c synchronous_commit=off'", "pgblobs backend, no fsync wait"
    )
    items = [(f"nosync-{i}", os.urandom(10_000)) for i in range(1000)]
    runs = []
    for run in range(RUNS):
        named = [(f"{name}-{run}", data) for name, data in items]
        runs.append(await timed(lambda named=named: relaxed.write(named)))
    results.add("1000 x 10 KB", "write", relaxed.name, statistics.median(runs), 10_000_000)
    await relaxed.close()


async def timed(run):
    started = time.perf_counter()
    await run()
    return time.perf_counter() - started


SEED = """
    -- One statement: the usage counters (statement triggers) move once.
    INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256,
                               created_at, deleted_at)
    SELECT CASE WHEN i <= 110000 THEN 'heavy' ELSE 'user-' || (i %% 9999) END,
           'default', 'm' || i,
           CASE WHEN i BETWEEN 100001 AND 110000 THEN NULL ELSE i END,
           1000 + i %% 5000, 'tag', '\\x00', now() - make_interval(secs => i),
           CASE WHEN i BETWEEN 100001 AND 110000 THEN now() END
    FROM generate_series(1, 1000000) AS i;
    INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id, created_at, flag)
    SELECT id, user_id, namespace, blob_id, created_at, 'PENDING' FROM pgblobs.blobs
    WHERE user_id = 'heavy' AND deleted_at IS NULL AND blob_id ~ '^m[0-9]*00$';
"""


async def metadata(results, backend, dsn):
    import psycopg2

    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    with connection.cursor() as cursor:
        started = time.perf_counter()
        cursor.execute(SEED, {})
        cursor.execute("VACUUM ANALYZE pgblobs.blobs")
        cursor.execute("VACUUM ANALYZE pgblobs.blob_flags")
        cursor.execute("VACUUM ANALYZE pgblobs.usage")
        print(f"  seeded in {time.perf_counter() - started:.1f} s", flush=True)
    connection.close()

    async def p50(call, expected):
        times = []
        for _ in range(METADATA_RUNS):
            started = time.perf_counter()
            answer = await call()
            times.append(time.perf_counter() - started)
        assert expected(answer), answer
        return statistics.median(times)

    figures = [
        ("count", lambda: backend.count("heavy"), lambda a: a == 100_000, 0.005),
        ("get_total_storage", lambda: backend.get_total_storage("heavy"), lambda a: a > 0, 0.005),
        (
            "list_blobs (100,000 ids)",
            lambda: backend.list_blobs("heavy"),
            lambda a: len(a) == 100_000,
            0.150,
        ),
        (
            "list_blobs filter_flag (1,000)",
            lambda: backend.list_blobs("heavy", filter_flag="PENDING"),
            lambda a: len(a) == 1000,
            0.020,
        ),
        (
            "list_blobs deleted=True (10,000)",
            lambda: backend.list_blobs("heavy", deleted=True),
            lambda a: len(a) == 10_000,
            None,
        ),
    ]
    for name, call, expected, limit in figures:
        seconds = await p50(call, expected)
        print(f"  {name:<36} p50 {seconds * 1000:8.2f} ms", flush=True)
        results.rows.append(("metadata", "query", name, seconds, 0))
        if limit is not None:
            results.latency(f"metadata: {name} p50", seconds, limit)

    connection = SyncConnection.connect_at_head(dsn)
    seconds = median_seconds(lambda: report.usage(connection, None, top=20))
    connection.close()
    print(f"  {'report usage --top 20 (10,000 users)':<36} {seconds * 1000:8.1f} ms", flush=True)
    results.rows.append(("metadata", "query", "report usage --top 20", seconds, 0))
    results.latency("report usage --top 20 over 1,000,000 rows", seconds, 1.0)


def judge(results):
    names = {
        "ceiling": "ceiling (sync lobject)",
        "files": "files (FileBodyProducer / static)",
        "synced": "files that fsync",
        "api": "pgblobs backend API",
        "http": "pgblobs HTTP, 1 node",
    }
    for operation in ("write", "read"):
        results.ratio(
            f"64 MiB {operation}: backend / ceiling",
            "64 MiB",
            operation,
            names["api"],
            names["ceiling"],
            0.9,
        )
        results.ratio(
            f"64 MiB {operation}: HTTP / ceiling",
            "64 MiB",
            operation,
            names["http"],
            names["ceiling"],
            0.75,
        )
    small = "1000 x 10 KB"
    results.ratio(
        f"{small} write: backend / files", small, "write", names["api"], names["files"], 0.6
    )
    results.ratio(
        f"{small} write: backend / files that fsync",
        small,
        "write",
        names["api"],
        names["synced"],
        1.2,
    )
    results.ratio(
        f"{small} read: backend / files", small, "read", names["api"], names["files"], 0.3
    )
    wrk_rows = {(o, c) for w, o, c, _, _ in results.rows if w == WRK_WORKLOAD}
    bare, one, two = (
        "bare twisted.web (no work)",
        "pgblobs HTTP, 1 worker",
        "pgblobs HTTP, 2 workers",
    )
    if wrk_rows:
        for operation, target in (("GET", 0.25), ("PUT", 0.3)):
            results.ratio(
                f"10 KB {operation} under wrk: pgblobs 1 worker / bare twisted.web",
                WRK_WORKLOAD,
                operation,
                one,
                bare,
                target,
            )
            results.ratio(
                f"10 KB {operation} under wrk: 2 workers / 1 worker",
                WRK_WORKLOAD,
                operation,
                two,
                one,
                1.0,
            )
    streamed = f"{small}, /stream"
    results.ratio(
        f"{streamed} download: one /stream / 1000 GETs",
        streamed,
        "download",
        "one /stream request",
        "1000 single requests",
        1.0,
    )
    results.slowdown(
        "one 10 KB read: user with 100,000 blobs / lone user",
        "one 10 KB read",
        "read",
        "user with 100,000 blobs",
        "lone user",
        1.2,
    )
    *_, seconds, size = next(r for r in results.rows if r[0] == "import-fs")
    rate = size / 10_000 / seconds
    results.goals.append(("import-fs of 10 KB files", rate, 2000, rate >= 2000, "blobs/s"))
    for run, growth in results.rss:
        results.goals.append((f"server RSS growth, {run}", growth, 100, growth <= 100, "MiB"))


def write_results(results, info):
    lines = [
        "# pgblobs benchmark results",
        "",
        f"- date: {info['date']}",
        f"- git revision: {info['revision']}",
        f"- machine: {info['machine']}",
        f"- Python {info['python']}, {info['postgres']}",
        f"- {contenders.IN_FLIGHT} operations in flight; each figure is the median of "
        f"several runs; PostgreSQL with its normal settings (fsync on).",
        "",
        "Produced by `make bench` (bench/run.py); the chart is `results.png`.",
        "",
        "## Goals",
        "",
        "| goal | measured | target | met |",
        "|---|---:|---:|---|",
    ]
    for description, measured, target, met, unit in results.goals:
        sign = "<=" if unit in ("ms", "MiB", "x slower") else ">="
        lines.append(
            f"| {description} | {measured:.2f} {unit} | {sign} {target:g} {unit} | "
            f"{'yes' if met else '**no**'} |"
        )
    lines += [
        "",
        "## Figures",
        "",
        "| workload | operation | contender | median | MB/s |",
        "|---|---|---|---:|---:|",
    ]
    for workload, operation, contender, seconds, size in results.rows:
        speed = f"{size / seconds / 1e6:.1f}" if size else ""
        # Under wrk a row is seconds per request: say requests per second.
        per_request = workload in (WRK_WORKLOAD, REPLICA_WORKLOAD)
        median = f"{1 / seconds:,.0f} req/s" if per_request else f"{seconds * 1000:.1f} ms"
        lines.append(f"| {workload} | {operation} | {contender} | {median} | {speed} |")
    findings = HERE / "findings.md"
    if findings.exists():
        lines += ["", findings.read_text().rstrip()]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    chart(results)
    print("\n" + "\n".join(lines[lines.index("## Goals") : lines.index("## Figures")]))
    print(f"written: {HERE / 'results.md'}, {HERE / 'results.png'}")


def chart(results):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    ratios = [(d, m / t) for d, m, t, _, unit in results.goals if unit == "x"]
    figure, axes = pyplot.subplots(figsize=(10, 0.45 * len(ratios) + 1.5))
    labels = [d for d, _ in ratios]
    values = [v for _, v in ratios]
    axes.barh(labels, values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xlabel("measured ratio / goal ratio (1.0 = goal just met)")
    axes.invert_yaxis()
    axes.set_title("pgblobs against its goals")
    figure.tight_layout()
    figure.savefig(HERE / "results.png", dpi=100)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
