"""The one table from errors to HTTP statuses, and the errors only HTTP has.

Soledad clients branch on 404, 409, 406, 507 and 416, so those stay exact.
Anything not in the table is a 500 whose body carries only a request id.
"""

from pgblobs.errors import (
    AccountClosed,
    BlobExists,
    BlobNotFound,
    ChecksumMismatch,
    CursorExpired,
    DatabaseUnavailable,
    InvalidArgument,
    InvalidFlag,
    InvalidName,
    QuotaExceeded,
    TokenStoreUnavailable,
    TooManyHeld,
    TooManyUploads,
    TransferStopped,
    UploadBusy,
    UploadNotFound,
    UploadOffsetMismatch,
    UploadTooLong,
)


class RequestError(Exception):
    """Something the client got wrong that only the HTTP layer can see."""


class MalformedBody(RequestError):
    """A body that is not what the route expects (bad JSON, sizes that do not add up)."""


class BodyTooLarge(RequestError):
    """A body beyond the configured limit."""


class LengthRequired(RequestError):
    """A body whose size must be known up front came without a Content-Length."""


class BodyStalled(RequestError):
    """The request body stopped arriving for longer than the idle timeout, or
    arrived slower than the rate floor."""


class TooManyIds(RequestError):
    """A stream download asking for more blobs than one request may."""


class RangeNotSatisfiable(RequestError):
    """A Range header that cannot be served: malformed, or outside the blob."""

    def __init__(self, size: int, reason: str | None = None) -> None:
        super().__init__(reason or f"the range is outside the blob's {size} bytes")
        self.size = size


class Unauthorized(RequestError):
    """No token, or one that is not valid."""


class Forbidden(RequestError):
    """A valid token used on another user's blobs."""


class NotFound(RequestError):
    """A path that names no resource."""


class UnsupportedMediaType(RequestError):
    """A body of a content type the route does not take (a tus PATCH's must
    be application/offset+octet-stream)."""


class TusVersionUnsupported(RequestError):
    """A tus request without ``Tus-Resumable: 1.0.0``."""


class MethodNotAllowed(RequestError):
    """A method the resource does not answer."""

    def __init__(self, allowed: list[str]) -> None:
        super().__init__("allowed: " + ", ".join(allowed))
        self.allowed = allowed


STATUS = {
    BlobNotFound: 404,
    NotFound: 404,
    UploadNotFound: 404,
    # BlobReserved is a BlobExists: a client of /blobs hears what it always has.
    BlobExists: 409,
    UploadOffsetMismatch: 409,
    InvalidFlag: 406,
    QuotaExceeded: 507,
    InvalidName: 400,
    InvalidArgument: 400,
    MalformedBody: 400,
    TransferStopped: 400,
    Unauthorized: 401,
    # A write that passed its token check before the account was closed.
    AccountClosed: 401,
    Forbidden: 403,
    MethodNotAllowed: 405,
    BodyStalled: 408,
    LengthRequired: 411,
    TusVersionUnsupported: 412,
    CursorExpired: 410,
    BodyTooLarge: 413,
    TooManyIds: 413,
    UploadTooLong: 413,
    UnsupportedMediaType: 415,
    RangeNotSatisfiable: 416,
    UploadBusy: 423,
    TooManyHeld: 429,
    TooManyUploads: 429,
    # tus's checksum extension: "Checksum Mismatch".
    ChecksumMismatch: 460,
    DatabaseUnavailable: 503,
    TokenStoreUnavailable: 503,
}

# Sent with 503 and 429: a restarting database (or the provider's CouchDB) is back in
# seconds, and so is room for a held feed request.
RETRY_AFTER_SECONDS = 2


def status_of(error: BaseException | None) -> int | None:
    """The HTTP status for ``error``, or None when it is not the client's doing."""
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return None
