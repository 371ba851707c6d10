"""The test harness: one real PostgreSQL for the session, a clean schema per test.

The server comes from testing.postgresql, started through pgblobs.cluster's
root-safe programs; if it cannot start, every test that needs it errors (no
test is skipped for want of a database).
"""

import itertools
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
import testing.postgresql

from pgblobs import PostgresBlobsBackend, cluster
from pgblobs.db import schema
from tests.helpers import create_token, sql, token_header

# A shell without job control starts background commands with SIGINT ignored,
# and every server the suite starts would inherit that; the tests stop some
# of them with SIGINT, as Ctrl-C would.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_scratch_names = itertools.count(1)


def libpq_dsn(parts):
    return "host={host} port={port} user={user} dbname={database}".format(**parts)


@pytest.fixture(scope="session")
def postgresql(tmp_path_factory):
    programs = cluster.server_programs(tmp_path_factory.mktemp("postgres-programs"))
    factory = testing.postgresql.PostgresqlFactory(cache_initialized_db=True, **programs)
    server = factory()
    yield server
    server.stop()
    factory.clear_cache()


@pytest.fixture(scope="session")
def migrated_dsn(postgresql):
    dsn = libpq_dsn(postgresql.dsn())
    schema.upgrade(dsn)
    return dsn


ORPHANS = """
    SELECT count(*) FROM pg_largeobject_metadata AS m
    WHERE NOT EXISTS (SELECT 1 FROM pgblobs.blobs AS b
                      WHERE b.lo_oid = m.oid AND b.deleted_at IS NULL)
      AND NOT EXISTS (SELECT 1 FROM pgblobs.uploads AS u WHERE u.lo_oid = m.oid)
"""


@pytest.fixture
def dsn(migrated_dsn):
    """A migrated database with no blobs; after the test, no orphan large object."""
    sql(migrated_dsn, "SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
    sql(
        migrated_dsn,
        "TRUNCATE pgblobs.blobs, pgblobs.blob_flags, pgblobs.quotas, pgblobs.tokens, "
        "pgblobs.service_tokens, pgblobs.usage, pgblobs.closed_accounts, pgblobs.claims, "
        "pgblobs.change_horizons, pgblobs.uploads, pgblobs.finished_uploads "
        "RESTART IDENTITY",
    )
    yield migrated_dsn
    assert sql(migrated_dsn, ORPHANS)[0][0] == 0, "a large object outlived its blob"


@pytest.fixture
def open_tmp():
    """A directory the postgres account can reach (pytest's own tmp is 0700),
    for clusters of a test's own."""
    path = tempfile.mkdtemp(prefix="pgblobs-")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def scratch_dsn(postgresql):
    """An empty database of its own, for tests that migrate up and down."""
    name = f"scratch_{next(_scratch_names)}"
    base = libpq_dsn(postgresql.dsn())
    sql(base, f"DROP DATABASE IF EXISTS {name}")
    sql(base, f"CREATE DATABASE {name}")
    yield libpq_dsn(postgresql.dsn(database=name))
    sql(base, f"DROP DATABASE {name} WITH (FORCE)")


@pytest_twisted.async_yield_fixture
async def backend(dsn):
    blobs = await PostgresBlobsBackend.connect(dsn, pool_size=4)
    yield blobs
    await blobs.close()


class Server:
    """A pgblobs site listening on a real loopback socket, with a token for alice."""

    def __init__(self, port, backend, token):
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.port = port
        self.backend = backend
        self.token = token

    def auth(self, user="alice", token=None):
        return {b"Authorization": [token_header(user, token or self.token).encode()]}


def site_of(backend, limits=None):
    """The public site over ``backend``, its tokens and health from the backend's
    database (tokens checked in the database every time: nothing listens here)."""
    from pgblobs.tokens import KnownTokens
    from pgblobs.web.site import Limits, build_site

    database = backend.database
    return build_site(
        backend,
        KnownTokens(database).user_token_is_valid,
        database.ping,
        limits or Limits(),
        database.usage,
    )


@pytest_twisted.async_yield_fixture
async def server(backend, dsn):
    from twisted.internet import reactor

    from pgblobs.web.site import Limits

    token = create_token(dsn, "alice")
    site = site_of(
        backend, Limits(max_blob_bytes=64 * 1024 * 1024, max_json_bytes=64 * 1024, idle_timeout=5)
    )
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield Server(port, backend, token)
    await port.stopListening()
    for channel in list(site.open_channels):
        channel.transport.abortConnection()
