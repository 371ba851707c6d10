"""What one benchmark run stands on: a new migrated PostgreSQL cluster (the
server's normal settings, fsync on), and `pgblobs serve` processes on it,
each gone once the run is over."""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pgblobs.cluster import LocalCluster
from pgblobs.db import schema
from tests.processes import ServeProcess


@contextlib.contextmanager
def new_database(prefix: str) -> Iterator[str]:
    """The DSN of a new cluster's database at the schema head."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(workdir, 0o755)  # the postgres account reaches it
    cluster = LocalCluster(workdir / "pg")
    cluster.start()
    try:
        schema.upgrade(cluster.dsn)
        yield cluster.dsn
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def serving(dsn: str, *args: str) -> Iterator[ServeProcess]:
    """`pgblobs serve --dsn DSN ARGS`, stopped afterwards."""
    node = ServeProcess("--dsn", dsn, *args)
    try:
        yield node
    finally:
        node.stop()
