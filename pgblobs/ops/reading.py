"""Reading blobs from the database for the batch tools (fsck, export-fs):
rows a batch at a time, the bytes a run will read, content chunk by chunk."""

from collections.abc import Iterator

from psycopg2.extensions import lobject

from pgblobs.db.queries import Row
from pgblobs.db.sync import SyncConnection
from pgblobs.transfer import CHUNK

_BATCH = 500  # rows per statement


def each_row(connection: SyncConnection, statement: str, **params: object) -> Iterator[Row]:
    """Every row of ``statement``, fetched ``_BATCH`` at a time in id order:
    each statement asks for the rows after the last id seen (keyset paging),
    so a batch far into the table costs what the first one does and no
    transaction is held open between batches."""
    after = 0
    while rows := connection.fetch(statement, dict(params, after=after, batch=_BATCH)):
        yield from rows
        after = rows[-1].id


def live_bytes(connection: SyncConnection) -> int:
    """The bytes of every live blob: what reading all their content comes to."""
    return int(connection.fetch("live_totals")[0].bytes)


def large_object_chunks(large_object: lobject) -> Iterator[bytes]:
    """A large object's content from where it stands, ``CHUNK`` bytes at a time."""
    while chunk := large_object.read(CHUNK):
        yield chunk
