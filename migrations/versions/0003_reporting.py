"""Reporting views, the pgblobs_reporting role, and indexes for maintenance.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VIEWS = ("usage_by_user", "usage_by_namespace", "daily_activity")


def upgrade():
    # purge walks tombstones by age; fsck looks rows up by large object.
    op.execute("""
        CREATE INDEX blobs_tombstones_by_deletion ON pgblobs.blobs (deleted_at)
        WHERE deleted_at IS NOT NULL
    """)
    op.execute("CREATE INDEX blobs_by_large_object ON pgblobs.blobs (lo_oid) WHERE lo_oid IS NOT NULL")
    op.execute("""
        CREATE VIEW pgblobs.usage_by_user AS
        SELECT b.user_id,
               count(*) FILTER (WHERE b.deleted_at IS NULL)                 AS live_blobs,
               coalesce(sum(b.size) FILTER (WHERE b.deleted_at IS NULL), 0)::bigint
                                                                            AS live_bytes,
               (coalesce(sum(b.size) FILTER (WHERE b.deleted_at IS NULL), 0)::bigint + 1023)
                   / 1024                                                   AS live_kib,
               count(*) FILTER (WHERE b.deleted_at IS NOT NULL)             AS tombstones,
               min(b.created_at)                                            AS first_write,
               max(b.created_at)                                            AS last_write,
               q.quota_bytes                                                AS quota_override_bytes,
               q.user_id IS NOT NULL                                        AS has_quota_override
        FROM pgblobs.blobs AS b
        LEFT JOIN pgblobs.quotas AS q ON q.user_id = b.user_id
        GROUP BY b.user_id, q.user_id, q.quota_bytes
    """)
    op.execute("COMMENT ON VIEW pgblobs.usage_by_user IS "
               "'Per user: live blobs and bytes (live_kib as get_total_storage counts), "
               "tombstones, first and last write, quota override if any'")
    op.execute("""
        CREATE VIEW pgblobs.usage_by_namespace AS
        SELECT user_id, namespace,
               count(*) FILTER (WHERE deleted_at IS NULL)                 AS live_blobs,
               coalesce(sum(size) FILTER (WHERE deleted_at IS NULL), 0)::bigint AS live_bytes,
               count(*) FILTER (WHERE deleted_at IS NOT NULL)             AS tombstones,
               min(created_at)                                            AS first_write,
               max(created_at)                                            AS last_write
        FROM pgblobs.blobs
        GROUP BY user_id, namespace
    """)
    op.execute("""
        CREATE VIEW pgblobs.daily_activity AS
        SELECT day::date AS day,
               sum(written)::bigint       AS blobs_written,
               sum(written_bytes)::bigint AS bytes_written,
               sum(deleted)::bigint       AS blobs_deleted,
               sum(deleted_bytes)::bigint AS bytes_deleted
        FROM (
            SELECT date_trunc('day', created_at) AS day, 1 AS written, size AS written_bytes,
                   0 AS deleted, 0 AS deleted_bytes
            FROM pgblobs.blobs
            UNION ALL
            SELECT date_trunc('day', deleted_at), 0, 0, 1, size
            FROM pgblobs.blobs WHERE deleted_at IS NOT NULL
        ) AS events
        GROUP BY day
    """)
    # Roles belong to the whole cluster: another database may have made it.
    op.execute("""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgblobs_reporting') THEN
                CREATE ROLE pgblobs_reporting NOLOGIN;
            END IF;
        END $$
    """)
    op.execute("GRANT USAGE ON SCHEMA pgblobs TO pgblobs_reporting")
    for view in VIEWS:
        op.execute(f"GRANT SELECT ON pgblobs.{view} TO pgblobs_reporting")


def downgrade():
    for view in VIEWS:
        op.execute(f"REVOKE ALL ON pgblobs.{view} FROM pgblobs_reporting")
        op.execute(f"DROP VIEW pgblobs.{view}")
    op.execute("REVOKE ALL ON SCHEMA pgblobs FROM pgblobs_reporting")
    # Keep the role if another database still grants it something.
    op.execute("""
        DO $$ BEGIN
            DROP ROLE pgblobs_reporting;
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'pgblobs_reporting is still used elsewhere; kept';
        END $$
    """)
    op.execute("DROP INDEX pgblobs.blobs_by_large_object")
    op.execute("DROP INDEX pgblobs.blobs_tombstones_by_deletion")
