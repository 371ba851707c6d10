"""Blobs: metadata rows pointing at large objects, flags, per-user quotas.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("""
        CREATE TABLE pgblobs.blobs (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id     text        NOT NULL,
            namespace   text        NOT NULL,
            blob_id     text        NOT NULL,
            lo_oid      oid,
            size        bigint      NOT NULL DEFAULT 0 CHECK (size >= 0),
            tag         text,
            sha256      bytea,
            created_at  timestamptz NOT NULL DEFAULT now(),
            deleted_at  timestamptz,
            -- A live blob always has content; a tombstone never keeps any.
            CONSTRAINT blobs_live_has_content CHECK (
                (deleted_at IS NULL AND lo_oid IS NOT NULL AND tag IS NOT NULL AND sha256 IS NOT NULL)
                OR (deleted_at IS NOT NULL AND lo_oid IS NULL)
            )
        )
    """)
    op.execute("COMMENT ON TABLE pgblobs.blobs IS "
               "'One row per blob; rows with deleted_at set are tombstones'")
    # At most one live blob per name; tombstones may repeat an id.
    op.execute("""
        CREATE UNIQUE INDEX blobs_live_key
            ON pgblobs.blobs (user_id, namespace, blob_id) WHERE deleted_at IS NULL
    """)
    # Serves count, list_blobs and get_total_storage as index-only scans.
    op.execute("""
        CREATE INDEX blobs_live_by_date
            ON pgblobs.blobs (user_id, namespace, created_at, id) INCLUDE (blob_id, size)
            WHERE deleted_at IS NULL
    """)
    op.execute("""
        CREATE INDEX blobs_tombstones_by_date
            ON pgblobs.blobs (user_id, namespace, created_at, id) INCLUDE (blob_id)
            WHERE deleted_at IS NOT NULL
    """)
    op.execute("""
        CREATE TABLE pgblobs.blob_flags (
            blob_row   bigint NOT NULL REFERENCES pgblobs.blobs (id) ON DELETE CASCADE,
            user_id    text   NOT NULL,
            namespace  text   NOT NULL,
            flag       text   NOT NULL
                CHECK (flag IN ('PENDING', 'PROCESSING', 'PROCESSED', 'FAILED')),
            PRIMARY KEY (blob_row, flag)
        )
    """)
    # filter_flag is a range scan here, then one primary-key probe per match.
    op.execute("""
        CREATE INDEX blob_flags_lookup ON pgblobs.blob_flags (user_id, namespace, flag)
    """)
    op.execute("""
        CREATE TABLE pgblobs.quotas (
            user_id      text PRIMARY KEY,
            quota_bytes  bigint CHECK (quota_bytes >= 0)
        )
    """)
    op.execute("COMMENT ON COLUMN pgblobs.quotas.quota_bytes IS "
               "'Overrides the server default for this user; NULL means unlimited'")
    op.execute("""
        CREATE FUNCTION pgblobs.effective_quota(p_user text, p_default bigint)
        RETURNS bigint LANGUAGE sql STABLE AS $$
            SELECT CASE WHEN q.user_id IS NULL THEN p_default ELSE q.quota_bytes END
            FROM (SELECT 1) AS one
            LEFT JOIN pgblobs.quotas AS q ON q.user_id = p_user
        $$
    """)
    # The commit step of every write. It is a function so that a small blob is
    # one statement (one round trip) including its content, and so that the
    # quota check runs after the per-user lock, in a fresh READ COMMITTED
    # snapshot that sees every write committed by any node.
    op.execute("""
        CREATE FUNCTION pgblobs.put_blob(
            p_user text, p_namespace text, p_blob_id text, p_oid oid,
            p_size bigint, p_tag text, p_sha256 bytea, p_default_quota bigint)
        RETURNS void LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            v_limit bigint;
            v_used  bigint;
        BEGIN
            PERFORM pg_advisory_xact_lock(hashtextextended('pgblobs.user:' || p_user, 0));
            v_limit := pgblobs.effective_quota(p_user, p_default_quota);
            IF v_limit IS NOT NULL THEN
                SELECT coalesce(sum(size), 0) INTO v_used
                FROM pgblobs.blobs WHERE user_id = p_user AND deleted_at IS NULL;
                IF v_used + p_size > v_limit THEN
                    RAISE EXCEPTION 'quota exceeded for user %', p_user
                        USING ERRCODE = 'PB507';
                END IF;
            END IF;
            -- Writing an id again revives it: it stops being a tombstone.
            DELETE FROM pgblobs.blobs
            WHERE user_id = p_user AND namespace = p_namespace
              AND blob_id = p_blob_id AND deleted_at IS NOT NULL;
            INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256)
            VALUES (p_user, p_namespace, p_blob_id, p_oid, p_size, p_tag, p_sha256);
        END
        $$
    """)


def downgrade():
    # The large objects referenced by live rows are pgblobs' own; nothing else
    # in the database is touched.
    op.execute("SELECT lo_unlink(lo_oid) FROM pgblobs.blobs WHERE lo_oid IS NOT NULL")
    op.execute("DROP FUNCTION pgblobs.put_blob(text, text, text, oid, bigint, text, bytea, bigint)")
    op.execute("DROP FUNCTION pgblobs.effective_quota(text, bigint)")
    op.execute("DROP TABLE pgblobs.blob_flags")
    op.execute("DROP TABLE pgblobs.quotas")
    op.execute("DROP TABLE pgblobs.blobs")
