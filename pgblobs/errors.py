"""Every error pgblobs reports, defined once.

The HTTP layer maps these to status codes in one table; the CLI turns them
into messages. Name errors are ``ValueError`` subclasses so callers that only
know the interface can still catch bad input generically.
"""


class BlobsError(Exception):
    """Base of the errors a blobs backend reports."""


class BlobNotFound(BlobsError):
    """No live blob has that user, namespace and id."""


class BlobExists(BlobsError):
    """A live blob already has that user, namespace and id."""


class BlobReserved(BlobExists):
    """A resumable upload in progress has reserved that user, namespace and
    id: no other write may make that blob until the upload ends."""


class QuotaExceeded(BlobsError):
    """Storing the blob would take its user past the quota."""


class AccountClosed(BlobsError):
    """The user's account is closed (``pgblobs user delete``): nothing of
    theirs is accepted any more."""


class InvalidFlag(BlobsError, ValueError):
    """A flag outside PENDING, PROCESSING, PROCESSED, FAILED."""


class InvalidName(BlobsError, ValueError):
    """A user, namespace or blob id that is not ``[A-Za-z0-9_-]{1,255}``."""


class InvalidArgument(BlobsError, ValueError):
    """Any other argument out of its domain (an order_by, a range)."""


class CursorExpired(BlobsError):
    """A change feed cursor older than the changes kept (``pgblobs purge``
    removed a delete after it), or not of this database: list again."""


class TooManyHeld(BlobsError):
    """More change feed requests held than the bounds allow (per user, per
    process); trying again shortly may succeed."""


class UploadNotFound(BlobsError):
    """No upload in progress has that id for that user (it completed, was
    terminated, expired, or never was)."""


class UploadOffsetMismatch(BlobsError):
    """A PATCH whose Upload-Offset is not the upload's offset now: the client
    asks HEAD where to go on from."""


class UploadBusy(BlobsError):
    """Another request is writing that upload now; trying again once it has
    ended may succeed."""


class UploadTooLong(BlobsError):
    """Bytes beyond an upload's declared Upload-Length."""


class ChecksumMismatch(BlobsError):
    """A PATCH body whose Upload-Checksum did not match: none of it was kept."""


class TooManyUploads(BlobsError):
    """The user has as many uploads in progress as allowed
    (``--max-uploads-per-user``); one must end before another begins."""


class DatabaseUnavailable(BlobsError):
    """The database cannot answer now (restarting, unreachable, overloaded);
    trying again shortly may succeed."""


class SchemaNotReady(BlobsError):
    """The database schema is missing or not at the revision this code needs."""


class UpgradeRefused(BlobsError):
    """``pgblobs db upgrade`` would be unsafe now (an unknown revision, another
    upgrade running, a lock held by long transactions, old nodes connected);
    nothing was changed by the revision refused."""


class TransferStopped(BlobsError):
    """The other side of a transfer went away before its end."""


class TokenStoreUnavailable(BlobsError):
    """The store a token must be checked against (the provider's CouchDB)
    cannot answer now, and the token is not one this node remembers; trying
    again shortly may succeed."""


class ServicesTokensFileInvalid(BlobsError):
    """A services tokens file that cannot be read, or a line of it that is
    not ``service:token``."""
