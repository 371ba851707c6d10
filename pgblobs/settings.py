"""Every default pgblobs has, declared once.

The CLI, ``pgblobs serve``, ``web.site.Limits``, the backend and alembic's
env read them here. A default of a ``pgblobs serve`` option is named after
the option: ``--foo-bar`` defaults to ``FOO_BAR``, or to ``foo_bar(...)``
where it is computed. The one exception is ``--max-blob-bytes``, whose
default is the protocol's own ceiling (``web.stream.MAX_STREAMED_SIZE``).
"""

import os
import resource

DSN_VARIABLE = "PGBLOBS_DSN"
CONFIG_VARIABLE = "PGBLOBS_CONFIG"  # the configuration file of `pgblobs serve`
QUOTA_BYTES = 200 * 1024 * 1024  # each user's, unless overridden
QUOTA_BLOBS = 1_000_000  # live blobs each user may keep (each costs a large object, an OID)
POOL_SIZE = 8  # connections per pool: statements, and as many for content
WAITING_PER_CONNECTION = 32  # content transfers that may wait, per pooled connection
STATEMENT_TIMEOUT = 30.0  # seconds
# A statement the server has not answered this long after its own timeout
# would have stopped it is taken for lost on a silent link (DatabaseUnavailable).
STATEMENT_DEADLINE_MARGIN = 2.0  # seconds
HEALTH_DEADLINE = 2.5  # seconds /health waits for the database before it says 503
# TCP keepalives and tcp_user_timeout on every connection to PostgreSQL, so
# a link that stops carrying packets fails its connection within seconds
# (the kernel's defaults: two hours). Seconds, as libpq takes them.
KEEPALIVES_IDLE = 5
KEEPALIVES_INTERVAL = 2
KEEPALIVES_COUNT = 3
TCP_USER_TIMEOUT = 10  # seconds sent data may go unacknowledged
# Seconds a node remembers a valid token after the database last confirmed it.
TOKEN_CACHE_SECONDS = 30.0
# Where users' tokens are checked: "pgblobs" (its own table) or "couchdb:URL";
# --user-tokens defaults to $PGBLOBS_USER_TOKENS, else "pgblobs".
USER_TOKENS_VARIABLE = "PGBLOBS_USER_TOKENS"
USER_TOKENS = "pgblobs"
# The provider's CouchDB (--user-tokens couchdb:URL): seconds a token lookup
# (or a connection) may take before the request gets 503, seconds between
# the heartbeats of its _changes feed (a feed silent for three is dropped and
# followed again), and the most seconds between attempts to follow it again.
COUCHDB_TIMEOUT = 5.0
COUCHDB_HEARTBEAT = 1.0
COUCHDB_RETRY_MAX = 5.0
# Token lookups one node sends CouchDB at once (and the connections it keeps
# to it), and how many more may wait their turn; past that a request gets 503
# at once, so a flood of made-up tokens can neither hold a node's descriptors
# nor pass on to the CouchDB that Soledad's document sync also uses.
COUCHDB_LOOKUPS = 32
COUCHDB_LOOKUPS_WAITING = 320
MAX_BUFFERED_BYTES = 64 * 1024 * 1024  # small upload bodies held in memory at once, until committed
DATA_DIR = ".pgblobs"  # the embedded PostgreSQL and its development tokens
DRAIN_SECONDS = 30.0  # on SIGTERM, how long requests in flight may take
LISTEN = "tcp:9000:interface=127.0.0.1"  # the public endpoint when no --listen is given
WORKERS = 1  # processes serving the listening sockets (see workers.py)
LOG_FORMAT = "text"
# Ids per page of a paged listing: one statement, and a few milliseconds of
# the reactor, each.
LISTING_PAGE = 10_000
# Inbox claims (POST /claim/{user}): blobs one claim takes by default and at
# most, and the seconds of its lease, by default and at most.
CLAIM_LIMIT = 10
MAX_CLAIM_LIMIT = 1000
CLAIM_LEASE = 300
MAX_CLAIM_LEASE = 3600
# Seconds between a node's rounds that give claims whose lease ended back to
# PENDING, and the most leases one round ends (one short transaction).
CLAIM_EXPIRY_EVERY = 1.0
CLAIM_EXPIRY_BATCH = 1000

# Resumable uploads (tus, /uploads/{user}/): seconds an upload lives after its creation or
# its last PATCH step, uploads one user may have in progress, and the bytes of a PATCH body
# committed at a time (each step is durable on its own: a client cut off resumes from the
# last whole step, at most this far behind). Every node sweeps expired uploads this often,
# at most this many a round.
UPLOAD_EXPIRY = 24 * 3600.0
MAX_UPLOADS_PER_USER = 20
UPLOAD_STEP = 4 * 1024 * 1024
UPLOAD_EXPIRY_EVERY = 1.0
UPLOAD_EXPIRY_BATCH = 100
# Seconds `user delete` waits, by default, for PATCHes in progress that hold uploads of the
# user (each ends with its body, or when the stall clock cuts it).
HELD_UPLOAD_WAIT = 60.0


def dsn_from_environment() -> str | None:
    """The DSN set in the environment, or None."""
    return os.environ.get(DSN_VARIABLE) or None


def user_tokens() -> str:
    """The default of --user-tokens: a CouchDB URL's password may come from the
    environment (a systemd EnvironmentFile), as the DSN's does."""
    return os.environ.get(USER_TOKENS_VARIABLE) or USER_TOKENS


def max_transfers_per_user(pool_size: int) -> int:
    """Content transfers one user may run at once: half the content connections."""
    return max(1, pool_size // 2)


# Seconds a read replica may lag behind the primary and still answer reads.
REPLICA_MAX_LAG = 2.0

# The change feed (GET /changes/{user}): requests held waiting for a change, per user (a
# user's devices need a few each) and per process in all (the connection cap bounds them
# too); the most changes one answer carries, its default, and the longest wait in seconds.
HELD_CHANGES_PER_USER = 64
HELD_CHANGES = 10_000
CHANGES_LIMIT_MAX = 10_000
CHANGES_LIMIT = 1000
CHANGES_WAIT_MAX = 60.0

# Descriptors a process keeps for all but client connections: its database
# connections, files, pipes and the services listener's connections.
DESCRIPTOR_RESERVE = 256
MAX_SERVICES_CONNECTIONS = 64  # per process, on the services listeners

# The HTTP limits (web.site.Limits).
MAX_JSON_BYTES = 1024**2  # a flag list or a stream listing
MAX_STREAM_IDS = 1000  # blobs per stream request, download or upload
# Seconds a connection may keep the server waiting for it: silent between
# requests, or, within one, not sending the body or not reading the answer.
IDLE_TIMEOUT = 60.0
HEADER_TIMEOUT = 20.0  # seconds from accepting a connection to its last header
# The least pace of a body the server is reading (bytes/s, 0: none), over
# each window of that many seconds: below any real link (10 KiB in 10 s),
# yet a trickling client is cut within 10 s instead of holding a
# database connection for as long as it likes.
MIN_UPLOAD_RATE = 1024
UPLOAD_RATE_WINDOW = 10.0


def max_connections() -> int:
    """The default cap on a process's public client connections: its
    descriptor limit (``ulimit -n``) less DESCRIPTOR_RESERVE, e.g. 768 of 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 2**20
    return max(16, soft - DESCRIPTOR_RESERVE)
