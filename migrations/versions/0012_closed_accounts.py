"""Closed accounts: ``pgblobs user delete`` closes a user's account before it
removes what the user has, so that nothing it removes can be made again.

- ``pgblobs.closed_accounts`` holds one row per user whose account is being
  deleted or was deleted (``emptied_at`` says when the deletion finished).
  The row stays: the name stays closed, and deleting the row gives it back.
- ``pgblobs.refuse_closed_accounts`` is an AFTER INSERT statement trigger on
  ``pgblobs.blobs`` and ``pgblobs.tokens``: a statement that adds a blob row or
  a token of a closed account fails with SQLSTATE PB410. It checks the rows
  after they are in, on every path that makes them (the API, import-fs, an
  operator's own SQL), so no write function changes and nodes of the
  previous release keep working (they answer such a write with a 500 rather
  than a 401).

Why a marker and not only revoked tokens: a write that passed its token
check before the tokens went (a slow upload, say) would otherwise commit its
blob after the deletion ended. ``user delete`` commits the marker together
with the revocation, under the user's lock (``pgblobs.lock_users``), which
every writer holds from the moment it inserts blob rows until it commits:
a writer that inserted before has committed when the marker does (and its
rows are deleted), and every insert after it sees the marker and fails.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("""
        CREATE TABLE pgblobs.closed_accounts (
            user_id    text PRIMARY KEY,
            closed_at  timestamptz NOT NULL DEFAULT now(),
            emptied_at timestamptz
        )
    """)
    op.execute("""
        COMMENT ON TABLE pgblobs.closed_accounts IS
            'Users whose account pgblobs user delete closed: no blob or token of theirs is '
            'accepted; deleting the row gives the name back'
    """)
    op.execute("""
        CREATE FUNCTION pgblobs.refuse_closed_accounts() RETURNS trigger
        LANGUAGE plpgsql VOLATILE
        SET plan_cache_mode = force_custom_plan AS $$
        DECLARE
            v_user text;
        BEGIN
            -- One probe of the key per user the statement wrote.
            SELECT c.user_id INTO v_user FROM pgblobs.closed_accounts AS c
            WHERE c.user_id = ANY (ARRAY(SELECT DISTINCT n.user_id FROM new_rows AS n))
            LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'the account of user % is closed (pgblobs user delete)', v_user
                    USING ERRCODE = 'PB410';
            END IF;
            RETURN NULL;
        END
        $$
    """)
    for table in ("blobs", "tokens"):
        op.execute(f"""
            CREATE TRIGGER {table}_refuse_closed_accounts
                AFTER INSERT ON pgblobs.{table} REFERENCING NEW TABLE AS new_rows
                FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.refuse_closed_accounts()
        """)


def downgrade():
    for table in ("blobs", "tokens"):
        op.execute(f"DROP TRIGGER {table}_refuse_closed_accounts ON pgblobs.{table}")
    op.execute("DROP FUNCTION pgblobs.refuse_closed_accounts()")
    op.execute("DROP TABLE pgblobs.closed_accounts")
