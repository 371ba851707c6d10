"""pgblobs: a blob store for end-to-end-encrypted sync services, on PostgreSQL."""

__version__ = "0.1.0"

from pgblobs.backend import PostgresBlobsBackend
from pgblobs.errors import (
    BlobExists,
    BlobNotFound,
    BlobsError,
    DatabaseUnavailable,
    InvalidArgument,
    InvalidFlag,
    InvalidName,
    QuotaExceeded,
    SchemaNotReady,
    TransferStopped,
)
from pgblobs.interfaces import IBlobsBackend
from pgblobs.memory import MemoryBlobsBackend
from pgblobs.names import Flags

__all__ = [
    "BlobExists",
    "BlobNotFound",
    "BlobsError",
    "DatabaseUnavailable",
    "Flags",
    "IBlobsBackend",
    "InvalidArgument",
    "InvalidFlag",
    "InvalidName",
    "MemoryBlobsBackend",
    "PostgresBlobsBackend",
    "QuotaExceeded",
    "SchemaNotReady",
    "TransferStopped",
]
