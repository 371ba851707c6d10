"""Mail delivery: service tokens, and blobs stored together with their flags.

An MX delivers a message as a blob flagged PENDING; the blob and its flag
must commit together, or a crash between them hides the message from the
mail client. ``pgblobs.store_blob`` is ``put_blob`` followed, in the same
transaction, by the new blob's flags.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    # Like user tokens: 256 random bits, kept only as SHA-256 digests.
    op.execute("""
        CREATE TABLE pgblobs.service_tokens (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            service       text        NOT NULL,
            token_sha256  bytea       NOT NULL UNIQUE,
            created_at    timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("CREATE INDEX service_tokens_by_service ON pgblobs.service_tokens (service)")
    op.execute("""
        CREATE FUNCTION pgblobs.store_blob(
            p_user text, p_namespace text, p_blob_id text, p_oid oid,
            p_size bigint, p_tag text, p_sha256 bytea, p_default_quota bigint,
            p_flags text[])
        RETURNS void LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM pgblobs.put_blob(p_user, p_namespace, p_blob_id, p_oid,
                                     p_size, p_tag, p_sha256, p_default_quota);
            IF cardinality(p_flags) > 0 THEN  -- most writes have none: no second lookup
                INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id,
                                                created_at, flag)
                SELECT b.id, b.user_id, b.namespace, b.blob_id, b.created_at, f.flag
                FROM pgblobs.blobs AS b, unnest(p_flags) AS f(flag)
                WHERE b.user_id = p_user AND b.namespace = p_namespace
                  AND b.blob_id = p_blob_id AND b.deleted_at IS NULL;
            END IF;
        END
        $$
    """)


def downgrade():
    op.execute("DROP FUNCTION pgblobs.store_blob(text, text, text, oid, bigint, text, bytea, "
               "bigint, text[])")
    op.execute("DROP TABLE pgblobs.service_tokens")
