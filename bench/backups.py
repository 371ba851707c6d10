"""Backups of many small large objects: pg_dump -Fc and pg_restore against a
physical base backup (pg_basebackup) of the same cluster.

Run by `make bench` (BACKUP_COUNTS), or: python -m bench.backups [COUNT ...]
(default 100000). Writes bench/backups.md, the table README's "Backups and
restore" quotes. Contents are random (encrypted blobs do not compress),
10 KB each.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

from pgblobs.cluster import LocalCluster, find_program
from pgblobs.db import schema

SIZE = 10_000
CHUNK = 1000  # blobs per seeding statement

SEED = """
INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256)
SELECT 'user-' || ((%(first)s + n) %% 1000), 'default', 'b' || (%(first)s + n),
       lo_from_bytea(0, content), octet_length(content), 'tag', '\\x00'
FROM unnest(%(contents)s::bytea[]) WITH ORDINALITY AS item(content, n)
"""


def seed(dsn, count):
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    with connection.cursor() as cursor:
        for first in range(0, count, CHUNK):
            contents = [psycopg2.Binary(os.urandom(SIZE)) for _ in range(min(CHUNK, count - first))]
            cursor.execute(SEED, {"first": first, "contents": contents})
    connection.close()


def timed(command):
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def measure(count, workdir):
    cluster = LocalCluster(workdir / "pg")
    cluster.start()
    try:
        schema.upgrade(cluster.dsn)
        started = time.perf_counter()
        seed(cluster.dsn, count)
        print(
            f"{count:,} large objects seeded in {time.perf_counter() - started:.0f} s", flush=True
        )
        dump = workdir / "blobs.dump"
        figures = {
            "pg_dump -Fc": timed([find_program("pg_dump"), "-Fc", "-f", str(dump), cluster.dsn]),
        }
        target = cluster.dsn.replace("dbname=pgblobs", "dbname=restored")
        admin = psycopg2.connect(cluster.dsn)
        admin.autocommit = True
        admin.cursor().execute("CREATE DATABASE restored")
        admin.close()
        figures["pg_restore"] = timed([find_program("pg_restore"), "-d", target, str(dump)])
        figures["pg_basebackup"] = timed(
            [
                find_program("pg_basebackup"),
                "-D",
                str(workdir / "base"),
                "-d",
                cluster.dsn,
                "-X",
                "stream",
                "--checkpoint=fast",
            ]
        )
        figures["dump size GB"] = dump.stat().st_size / 1e9
        return figures
    finally:
        cluster.stop()


def main(counts):
    rows = []
    for count in counts:
        workdir = Path(tempfile.mkdtemp(prefix="pgblobs-backups-"))
        os.chmod(workdir, 0o755)
        try:
            figures = measure(count, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        rows.append((count, figures))
        print(count, figures, flush=True)
    lines = [
        "# Backups of small large objects",
        "",
        f"`python -m bench.backups`, {time.strftime('%Y-%m-%d', time.gmtime())}: 10 KB of "
        "random bytes each, PostgreSQL's normal settings.",
        "",
        "| large objects (10 KB) | pg_dump -Fc | pg_restore | pg_basebackup | dump size |",
        "|---:|---:|---:|---:|---:|",
    ]
    for count, f in rows:
        lines.append(
            f"| {count:,} | {f['pg_dump -Fc']:.1f} s | {f['pg_restore']:.1f} s | "
            f"{f['pg_basebackup']:.1f} s | {f['dump size GB']:.1f} GB |"
        )
    (Path(__file__).resolve().parent / "backups.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main([int(count) for count in sys.argv[1:]] or [100_000])
