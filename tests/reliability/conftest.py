"""Shared by the reliability tests: PostgreSQL servers in replication."""

import contextlib
import os
import pwd
import subprocess
import time

import pytest

from pgblobs.cluster import SERVICE_ACCOUNT, LocalCluster, find_program
from pgblobs.db import schema
from tests.helpers import sql


def as_postgres(*command):
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={SERVICE_ACCOUNT}",
            f"--regid={SERVICE_ACCOUNT}",
            "--init-groups",
            "--",
            *command,
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done


@contextlib.contextmanager
def _primary_and_standby(directory):
    """(primary, standby): LocalClusters in ``directory``, the standby streaming
    (asynchronously) from the migrated primary; both stopped on leaving."""
    primary = LocalCluster(directory / "primary")
    primary.start()
    standby = LocalCluster(directory / "standby")
    try:
        schema.upgrade(primary.dsn)
        start_standby(primary, standby)
        deadline = time.monotonic() + 10
        while sql(primary.dsn, "SELECT state FROM pg_stat_replication") != [("streaming",)]:
            assert time.monotonic() < deadline, "the standby never started streaming"
            time.sleep(0.1)
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()


@pytest.fixture
def replicated(open_tmp):
    """(primary, standby): LocalClusters, the standby streaming synchronously."""
    with _primary_and_standby(open_tmp) as (primary, standby):
        # Commits now wait until the standby has the WAL: an acknowledged
        # blob survives losing the primary.
        sql(
            primary.dsn.replace("dbname=pgblobs", "dbname=postgres"),
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
        )
        sql(primary.dsn, "SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while sql(primary.dsn, "SELECT sync_state FROM pg_stat_replication") != [("sync",)]:
            assert time.monotonic() < deadline, "the standby never became synchronous"
            time.sleep(0.1)
        yield primary, standby


@pytest.fixture
def streaming(open_tmp):
    """(primary, standby): LocalClusters, the standby streaming asynchronously,
    so the primary commits while the standby (or the link to it) is stalled."""
    with _primary_and_standby(open_tmp) as pair:
        yield pair


def base_backup(primary, target, *options):
    """pg_basebackup of ``primary`` into the data directory of ``target`` (a
    LocalCluster not yet created), with its WAL."""
    target.directory.mkdir(parents=True)
    os.chown(target.directory, *postgres_ids())
    as_postgres(
        find_program("pg_basebackup"),
        "-D",
        str(target.data),
        "-h",
        str(primary.socket_dir),
        "-p",
        str(primary.PORT),
        "-U",
        "postgres",
        "-X",
        "stream",
        "--checkpoint=fast",  # a spread checkpoint would take a minute and more
        *options,
    )


def start_standby(primary, standby):
    """Make ``standby`` (a LocalCluster not yet created) a streaming replica
    of ``primary`` with pg_basebackup -R, and start it."""
    base_backup(primary, standby, "-R")
    standby.start()


def postgres_ids():
    account = pwd.getpwnam(SERVICE_ACCOUNT)
    return account.pw_uid, account.pw_gid
