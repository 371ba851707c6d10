"""The live-key index leads with the blob id, so single-blob statements use it
whatever the planner's statistics say.

With 100,000 live blobs of one user and no ANALYZE yet (a bulk import, a new
table), the planner read one blob through ``blobs_live_by_date`` (user,
namespace, then a filter on the included blob id): 10.4 ms, against 0.04 ms
for a user with one blob. Led by the blob id, the unique index is the plan
for open_blob, blob_info, write_precheck, delete_blob and set_flags before
and after statistics (0.04 ms either way); listings keep the date index.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _replace_live_key(columns):
    # Built beside the old one and renamed in the same transaction, so
    # uniqueness is never unguarded.
    op.execute(
        f"CREATE UNIQUE INDEX blobs_live_key_next ON pgblobs.blobs ({columns}) "
        "WHERE deleted_at IS NULL"
    )
    op.execute("DROP INDEX pgblobs.blobs_live_key")
    op.execute("ALTER INDEX pgblobs.blobs_live_key_next RENAME TO blobs_live_key")


def upgrade():
    _replace_live_key("blob_id, namespace, user_id")


def downgrade():
    _replace_live_key("user_id, namespace, blob_id")
