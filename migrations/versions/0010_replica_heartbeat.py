"""A heartbeat the primary writes, so a node can tell how far behind a read
replica really is.

- ``pgblobs.heartbeat`` holds one row (the first beat makes it). Every node
  with read replicas bumps its ``beat`` a few times a second (the ``beat``
  statement) and remembers when it sent each value; a replica that has
  replayed a value has every commit acknowledged before that moment. A
  replica's own view (streaming, replayed all it received, the time of its
  last replayed transaction) says nothing of what it never received, and
  nothing at all while no one writes.
- ``beaten_at`` is the primary's clock at the last beat, for operators:
  ``SELECT now() - beaten_at FROM pgblobs.heartbeat`` on a replica is its lag,
  give or take the skew between the two hosts' clocks (pgblobs itself never
  compares clocks of different hosts).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("""
        CREATE TABLE pgblobs.heartbeat (
            one boolean PRIMARY KEY DEFAULT true CHECK (one),
            beat bigint NOT NULL,
            beaten_at timestamptz NOT NULL
        )
    """)


def downgrade():
    op.execute("DROP TABLE pgblobs.heartbeat")
