"""Connection strings: the session settings every pgblobs connection gets."""

from psycopg2.extensions import make_dsn, parse_dsn

from pgblobs import settings
from pgblobs.db import schema


def with_statement_timeout(dsn: str, milliseconds: int) -> str:
    """``dsn`` whose sessions stop any statement running past ``milliseconds``,
    so a stuck query cannot hold a connection forever."""
    options = parse_dsn(dsn).get("options", "")
    return make_dsn(dsn, options=f"{options} -c statement_timeout={milliseconds}".strip())


def with_session_settings(dsn: str) -> str:
    """``dsn`` whose connections notice a link that stopped carrying packets
    within seconds (libpq ignores these on Unix-domain sockets), and name
    this code's revision unless the DSN names them (`db upgrade` reads it)."""
    return make_dsn(
        dsn,
        application_name=parse_dsn(dsn).get("application_name", schema.node_name()),
        keepalives=1,
        keepalives_idle=settings.KEEPALIVES_IDLE,
        keepalives_interval=settings.KEEPALIVES_INTERVAL,
        keepalives_count=settings.KEEPALIVES_COUNT,
        tcp_user_timeout=settings.TCP_USER_TIMEOUT * 1000,
    )
