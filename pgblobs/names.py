"""Validation of the names and values clients choose, in one place.

Everything here runs before any database work, so bad input never costs a
round trip and never reaches SQL.
"""

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from pgblobs import settings
from pgblobs.errors import BlobExists, InvalidArgument, InvalidFlag, InvalidName

ByteRange = tuple[int, int | None]  # start, end (exclusive; None: to the end)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
DEFAULT_NAMESPACE = "default"


class Flags:
    """The four flags a blob may carry."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    PROCESSED = "PROCESSED"
    FAILED = "FAILED"
    ALL = (PENDING, PROCESSING, PROCESSED, FAILED)


class BlobKey(NamedTuple):
    """A validated (user, namespace, blob id)."""

    user: str
    namespace: str
    blob_id: str

    @classmethod
    def of(cls, user: object, blob_id: object, namespace: object = "") -> "BlobKey":
        return cls(user_name(user), namespace_name(namespace), blob_name(blob_id))

    def params(self) -> dict[str, str]:
        return {"user": self.user, "namespace": self.namespace, "blob_id": self.blob_id}


def distinct_keys(user: object, blob_ids: Sequence[object], namespace: object) -> list[BlobKey]:
    """The keys of the blobs of one multi-blob write; BlobExists when an id
    is listed twice, before any body is read."""
    keys = [BlobKey.of(user, blob_id, namespace) for blob_id in blob_ids]
    if len(set(keys)) != len(keys):
        raise BlobExists("the same id is listed twice")
    return keys


def _checked(kind: str, value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidName(f"invalid {kind} {value!r}: use 1-255 of A-Z a-z 0-9 _ -")
    return value


def user_name(value: object) -> str:
    return _checked("user", value)


def service_name(value: object) -> str:
    """A service that holds tokens of its own (an MX delivering mail)."""
    return _checked("service", value)


def blob_name(value: object) -> str:
    return _checked("blob id", value)


def upload_name(value: object) -> str:
    """An upload's id, as the server makes them (URL-safe base64)."""
    return _checked("upload id", value)


def namespace_name(value: object) -> str:
    """The empty (or absent) namespace is the default one."""
    if value is None or value == "":
        return DEFAULT_NAMESPACE
    return _checked("namespace", value)


def flag(value: object) -> str:
    if not isinstance(value, str) or value not in Flags.ALL:
        raise InvalidFlag(f"invalid flag {value!r}: use one of {', '.join(Flags.ALL)}")
    return value


def flag_list(values: Iterable[object]) -> list[str]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise InvalidFlag(f"flags must be a list, not {values!r}")
    return sorted({flag(value) for value in values})


def descending(order_by: str | None) -> bool:
    """True for newest first; False for oldest first (also the default)."""
    if order_by in (None, "date", "+date"):
        return False
    if order_by == "-date":
        return True
    raise InvalidArgument(f"invalid order_by {order_by!r}: use date, +date or -date")


def _whole_number(kind: str, value: object, most: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise InvalidArgument(f"invalid {kind} {value!r}: use a whole number from 1 to {most}")
    return value


def claim_limit(value: object) -> int:
    """How many blobs one claim may take."""
    return _whole_number("limit", value, settings.MAX_CLAIM_LIMIT)


def lease_seconds(value: object) -> int:
    """How long a claim's lease may last, in seconds."""
    return _whole_number("lease", value, settings.MAX_CLAIM_LEASE)


def byte_range(value: object) -> tuple[int, int | None]:
    """``(start, end)`` end-exclusive like a slice; ``end`` None means to the end."""
    if value is None:
        return 0, None
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise InvalidArgument(f"invalid range {value!r}: use (start, end)")
    start, end = value
    if (
        not isinstance(start, int)
        or start < 0
        or (end is not None and (not isinstance(end, int) or end < start))
    ):
        raise InvalidArgument(f"invalid range {value!r}: need 0 <= start <= end")
    return start, end
