"""Hardening the write path: one user lock taken by every writer of blob rows.

- ``pgblobs.lock_users(users)`` takes the per-user lock of each distinct user
  in name order. Every path that writes blob rows (the API's small and large
  writes, stream uploads, deliveries, import-fs) takes it, so two writers of
  one user never race on a name or a quota, and writers of several users
  cannot wait on each other crosswise.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("""
        CREATE FUNCTION pgblobs.user_lock_key(p_user text) RETURNS bigint
        LANGUAGE sql IMMUTABLE AS $$
            SELECT hashtextextended('pgblobs.user:' || p_user, 0)
        $$
    """)
    op.execute("""
        CREATE FUNCTION pgblobs.lock_users(p_users text[]) RETURNS void
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock(pgblobs.user_lock_key(name))
            FROM (SELECT DISTINCT name FROM unnest(p_users) AS name ORDER BY name) AS users;
        END
        $$
    """)


def downgrade():
    op.execute("DROP FUNCTION pgblobs.lock_users(text[])")
    op.execute("DROP FUNCTION pgblobs.user_lock_key(text)")
