"""What a database error means: the link is gone, the server is busy, or a
pgblobs error (quota, a blob that already exists) raised by SQL.

Everything that talks to PostgreSQL asks here, so each error is read one way
whether it came from the asynchronous pool or a synchronous connection.
"""

import psycopg2
from psycopg2 import errorcodes
from twisted.internet import error as internet_error
from txpostgres import reconnection, txpostgres

from pgblobs.errors import (
    AccountClosed,
    BlobExists,
    BlobReserved,
    DatabaseUnavailable,
    QuotaExceeded,
    TooManyUploads,
)

_QUOTA_EXCEEDED = "PB507"  # raised by the write functions (db/schema.sql)
_ACCOUNT_CLOSED = "PB410"  # raised by the trigger refuse_closed_accounts (db/schema.sql)
_NAME_RESERVED = "PB409"  # an upload has the name: refuse_reserved_names, create_upload
_TOO_MANY_UPLOADS = "PB429"  # raised by pgblobs.create_upload
_SERVER_GOING_AWAY = {"57P01", "57P02", "57P03"}  # admin/crash shutdown, cannot connect now
# A deadlock is broken by failing one side, which may try again at once: the one a
# previous-release node's delete can meet during a rolling upgrade (revision 0014).
_BUSY = {errorcodes.QUERY_CANCELED, errorcodes.TOO_MANY_CONNECTIONS, errorcodes.DEADLOCK_DETECTED}

# How txpostgres reports a link that broke under a statement, beside psycopg2's own errors.
_LINK_BROKEN = (
    txpostgres.RollbackFailed,
    internet_error.ConnectionLost,
    internet_error.ConnectionDone,
)
# What a statement fails with once sent: the server's refusal, or the link
# breaking under it (our own deadline raises NoAnswer instead).
STATEMENT_FAILED = (psycopg2.Error, *_LINK_BROKEN)


class NoAnswer(Exception):
    """The server did not answer within a deadline; the connection was cut."""


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` means the connection itself is gone."""
    if isinstance(error, (psycopg2.InterfaceError, *_LINK_BROKEN)):
        return True
    if isinstance(error, psycopg2.OperationalError):
        code = error.pgcode
        return code is None or code.startswith("08") or code in _SERVER_GOING_AWAY
    return False


def translate(error: BaseException) -> BaseException:
    """The pgblobs error a database error stands for, or the error itself."""
    code = getattr(error, "pgcode", None)
    if isinstance(error, psycopg2.Error):
        if code == _QUOTA_EXCEEDED:
            return QuotaExceeded(str(error.diag.message_primary))
        if code == _ACCOUNT_CLOSED:
            # The client's answer; the database's own message names the command.
            return AccountClosed("the user's account is closed")
        if code == _NAME_RESERVED:
            return BlobReserved("an upload in progress has reserved this id")
        if code == _TOO_MANY_UPLOADS:
            return TooManyUploads(str(error.diag.message_primary))
        if code == errorcodes.UNIQUE_VIOLATION and error.diag.constraint_name == "blobs_live_key":
            return BlobExists("a live blob already has this id")
    if isinstance(error, reconnection.ConnectionDead) or connection_lost(error):
        return DatabaseUnavailable("the database is unavailable; try again shortly")
    if code in _BUSY:
        return DatabaseUnavailable("the database is too busy; try again shortly")
    return error
