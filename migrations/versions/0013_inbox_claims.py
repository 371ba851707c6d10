"""Inbox claims (POST /claim/{user}): a client reserves PENDING blobs before
it hands them out, so two devices of one user never take one message.

- ``pgblobs.claim_blobs`` moves up to N of a user's PENDING blobs in a
  namespace to PROCESSING, oldest first, and records a lease for each in
  ``pgblobs.claims``. It takes the user's lock (``pgblobs.lock_users``) in a
  statement of its own before it reads the flags, so claims of one user, on
  any node, follow one another and never return the same blob.
- ``pgblobs.expire_claims`` ends leases whose time is up: a blob that still
  carries PROCESSING goes back to PENDING; any other lease (its blob given
  other flags, or deleted) is simply dropped. Every serving node runs it
  every second or so (pgblobs/claims.py).

Flags change only by INSERT and DELETE on ``pgblobs.blob_flags``, as every
other writer changes them. Nothing older code calls changes: no code_floor.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-09
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("""
        CREATE TABLE pgblobs.claims (
            blob_row     bigint      PRIMARY KEY REFERENCES pgblobs.blobs (id) ON DELETE CASCADE,
            user_id      text        NOT NULL,
            lease_until  timestamptz NOT NULL
        )
    """)
    op.execute("""
        CREATE INDEX claims_by_lease_end ON pgblobs.claims (lease_until) INCLUDE (user_id)
    """)
    op.execute("""
        CREATE FUNCTION pgblobs.claim_blobs(
            p_user text, p_namespace text, p_limit int, p_lease_seconds int)
        RETURNS text[] LANGUAGE plpgsql VOLATILE
        SET plan_cache_mode = force_custom_plan AS $$
        DECLARE
            v_claimed text[];
        BEGIN
            PERFORM pgblobs.lock_users(ARRAY[p_user]);
            WITH chosen AS (
                SELECT f.blob_row, f.blob_id, f.created_at FROM pgblobs.blob_flags AS f
                WHERE f.user_id = p_user AND f.namespace = p_namespace AND f.flag = 'PENDING'
                ORDER BY f.created_at, f.blob_row
                LIMIT p_limit
                FOR UPDATE SKIP LOCKED
            ), unpending AS (
                DELETE FROM pgblobs.blob_flags AS f USING chosen
                WHERE f.blob_row = chosen.blob_row AND f.flag = 'PENDING'
            ), processing AS (
                INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id, created_at,
                                                flag)
                SELECT blob_row, p_user, p_namespace, blob_id, created_at, 'PROCESSING' FROM chosen
                ON CONFLICT DO NOTHING
            ), leased AS (
                -- A row left by an earlier lease (its blob made PENDING again by hand) is renewed.
                INSERT INTO pgblobs.claims (blob_row, user_id, lease_until)
                SELECT blob_row, p_user, now() + make_interval(secs => p_lease_seconds) FROM chosen
                ON CONFLICT (blob_row) DO UPDATE SET lease_until = EXCLUDED.lease_until
            )
            SELECT coalesce(array_agg(blob_id ORDER BY created_at, blob_row), '{}') INTO v_claimed
            FROM chosen;
            RETURN v_claimed;
        END
        $$
    """)
    op.execute("""

        -- End up to p_batch leases whose time is up, oldest first: a live blob still carrying
        -- PROCESSING goes back to PENDING (how many did is the answer); the other leases are
        -- simply dropped (a flag set since, or a delete, ended them). Several nodes run it at
        -- once: the users' locks come first (name order, as every writer takes them), then the
        -- leases are read again under them, passing over those another node is ending.
        CREATE FUNCTION pgblobs.expire_claims(p_batch int)
        RETURNS int LANGUAGE plpgsql VOLATILE
        SET plan_cache_mode = force_custom_plan AS $$
        DECLARE
            v_users text[];
            v_back  int;
        BEGIN
            SELECT coalesce(array_agg(DISTINCT user_id), '{}') INTO v_users
            FROM (SELECT user_id FROM pgblobs.claims WHERE lease_until <= now()
                  ORDER BY lease_until LIMIT p_batch) AS due;
            PERFORM pgblobs.lock_users(v_users);
            WITH due AS (
                SELECT c.blob_row, b.deleted_at IS NULL AS live
                FROM pgblobs.claims AS c JOIN pgblobs.blobs AS b ON b.id = c.blob_row
                WHERE c.user_id = ANY (v_users) AND c.lease_until <= now()
                ORDER BY c.lease_until
                LIMIT p_batch
                FOR UPDATE OF c SKIP LOCKED
            ), ended AS (
                DELETE FROM pgblobs.claims AS c USING due WHERE c.blob_row = due.blob_row
            ), lapsed AS (
                -- A tombstone's flags go too: a delete of the previous release (it takes no user's
                -- lock, so its snapshot may predate the claim) cannot see the PROCESSING added.
                DELETE FROM pgblobs.blob_flags AS f USING due
                WHERE f.blob_row = due.blob_row AND (f.flag = 'PROCESSING' OR NOT due.live)
                RETURNING f.blob_row, f.user_id, f.namespace, f.blob_id, f.created_at, f.flag,
                          due.live
            ), pending AS (
                INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id, created_at,
                                                flag)
                SELECT blob_row, user_id, namespace, blob_id, created_at, 'PENDING' FROM lapsed
                WHERE live AND flag = 'PROCESSING'
                ON CONFLICT DO NOTHING
            )
            SELECT count(*) INTO v_back FROM lapsed WHERE live AND flag = 'PROCESSING';
            RETURN v_back;
        END
        $$
    """)


def downgrade():
    op.execute("DROP FUNCTION pgblobs.expire_claims(int)")
    op.execute("DROP FUNCTION pgblobs.claim_blobs(text, text, int, int)")
    op.execute("DROP TABLE pgblobs.claims")
