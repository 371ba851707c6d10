"""The restore drill (`make drill`, README "Backups and restore"): a physical
base backup plus archived WAL, restored to a point in time into a new
cluster. Every blob acknowledged before the target time is there
byte-identical, none written after it, and `pgblobs fsck --verify-content`
is clean."""

import os
import time

import pytest

from pgblobs.cluster import LocalCluster
from pgblobs.db import schema
from tests.helpers import pgblobs_cli, sql
from tests.processes import ServeProcess
from tests.reliability.clients import Client, token_for
from tests.reliability.conftest import base_backup, postgres_ids

pytestmark = pytest.mark.slow


def write_blobs(client, prefix, count):
    written = {}
    for number in range(count):
        data = os.urandom(1000 + 97 * number)
        assert client.put(f"{prefix}{number}", data)[0] == 200
        written[f"{prefix}{number}"] = data
    return written


def stored(dsn):
    rows = sql(dsn, "SELECT blob_id, lo_get(lo_oid) FROM pgblobs.blobs WHERE deleted_at IS NULL")
    return {blob_id: bytes(content) for blob_id, content in rows}


def test_point_in_time_recovery_from_a_base_backup_and_archived_wal(open_tmp):
    archive = open_tmp / "wal-archive"
    archive.mkdir()
    os.chown(archive, *postgres_ids())
    primary = LocalCluster(open_tmp / "primary")
    restored = LocalCluster(open_tmp / "restored")
    primary.start()
    try:
        admin = primary.dsn.replace("dbname=pgblobs", "dbname=postgres")
        sql(admin, "ALTER SYSTEM SET archive_mode = 'on'")
        sql(admin, f"ALTER SYSTEM SET archive_command = 'cp %p {archive}/%f'")
        primary.stop()
        primary.start()
        schema.upgrade(primary.dsn)
        node = ServeProcess("--dsn", primary.dsn)
        try:
            client = Client(node.url, "alice", token_for(primary.dsn, "alice"))
            kept = write_blobs(client, "before-backup-", 20)

            started = time.perf_counter()
            base_backup(primary, restored)
            backup_seconds = time.perf_counter() - started

            kept.update(write_blobs(client, "after-backup-", 20))
            # Clock time between the commits and the target on either side:
            # the scenario itself, what recovery_target_time tells apart.
            time.sleep(0.5)
            target = sql(primary.dsn, "SELECT clock_timestamp()::text")[0][0]
            time.sleep(0.5)
            lost = write_blobs(client, "after-target-", 20)
        finally:
            node.stop()
        # Close the WAL segment holding the last writes, and wait until it is archived.
        segment = sql(primary.dsn, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        deadline = time.monotonic() + 30
        while not (archive / segment).exists():
            assert time.monotonic() < deadline, "the WAL segment was never archived"
            time.sleep(0.1)
    finally:
        primary.stop()

    # The runbook: restore_command, the target, recovery.signal, start.
    with open(restored.data / "postgresql.auto.conf", "a") as settings:
        settings.write(
            f"restore_command = 'cp {archive}/%f %p'\n"
            f"recovery_target_time = '{target}'\n"
            "recovery_target_action = 'promote'\n"
            "archive_mode = 'off'\n"
        )
    (restored.data / "recovery.signal").touch()
    started = time.perf_counter()
    restored.start()
    try:
        deadline = time.monotonic() + 60
        while sql(restored.dsn, "SELECT pg_is_in_recovery()")[0][0]:
            assert time.monotonic() < deadline, "recovery never reached its target"
            time.sleep(0.1)
        restore_seconds = time.perf_counter() - started
        assert stored(restored.dsn) == kept
        assert not set(lost) & set(stored(restored.dsn))
        check = pgblobs_cli("fsck", "--verify-content", "--dsn", restored.dsn)
        assert check.returncode == 0 and "clean" in check.stdout, check.stdout + check.stderr
        print(
            f"drill: base backup {backup_seconds:.1f} s, restore to {target} "
            f"{restore_seconds:.1f} s; {len(kept)} blobs back, {len(lost)} after the target gone"
        )
    finally:
        restored.stop()
