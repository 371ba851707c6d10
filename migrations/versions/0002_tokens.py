"""Access tokens, stored as SHA-256 digests only.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    # Tokens are 256 random bits, so a plain SHA-256 is enough to make a
    # stolen table useless; a slow password hash would only cost every request.
    op.execute("""
        CREATE TABLE pgblobs.tokens (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id       text        NOT NULL,
            token_sha256  bytea       NOT NULL UNIQUE,
            created_at    timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("CREATE INDEX tokens_by_user ON pgblobs.tokens (user_id)")


def downgrade():
    op.execute("DROP TABLE pgblobs.tokens")
