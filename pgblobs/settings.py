"""Every default pgblobs has, declared once.

The CLI, ``pgblobs serve``, the backend and alembic's env read them here;
the HTTP limits are ``web.site.Limits``, whose field defaults are theirs.
"""

import os

DSN_VARIABLE = "PGBLOBS_DSN"
QUOTA_BYTES = 200 * 1024 * 1024  # each user's, unless overridden
POOL_SIZE = 8  # connections per pool: statements, and as many for content
WAITING_PER_CONNECTION = 32  # content transfers that may wait, per pooled connection
STATEMENT_TIMEOUT = 30.0  # seconds
BUFFER_BYTES = 64 * 1024 * 1024  # small upload bodies gathered in memory at once
DATA_DIR = ".pgblobs"  # the embedded PostgreSQL and its development tokens
DRAIN_SECONDS = 30.0  # on SIGTERM, how long requests in flight may take
# Ids per page of a paged listing: one statement, and a few milliseconds of
# the reactor, each.
LISTING_PAGE = 10_000


def dsn_from_environment() -> str | None:
    """The DSN set in the environment, or None."""
    return os.environ.get(DSN_VARIABLE) or None


def user_share(pool_size: int) -> int:
    """Content transfers one user may run at once: half the content connections."""
    return max(1, pool_size // 2)


# Seconds a read replica may lag behind the primary and still answer reads.
REPLICA_MAX_LAG = 2.0
