"""The blobs backend contract, in pgblobs' words.

It follows the Soledad design's ``IBlobsBackend`` method for method, and adds
the optional ``range`` of ``read_blob`` and ``flags`` of ``write_blob``. Every method returns a Deferred;
failures arrive as a failed Deferred carrying an error from
:mod:`pgblobs.errors`. An empty namespace means ``default`` everywhere.
"""
import functools

from twisted.internet import defer
from zope.interface import Interface


class IBlobsBackend(Interface):
    """Stores the opaque, already-encrypted blobs of many users."""

    def read_blob(user, blob_id, consumer, namespace="", range=None):
        """Stream a blob's bytes into ``consumer`` (an ``IConsumer``).

        A streaming producer is registered on the consumer for the duration,
        so a consumer that pauses stops the flow. ``range`` is ``(start,
        end)``, end-exclusive like a slice. Fires once the last byte is
        written; fails with ``BlobNotFound`` when there is no such blob.
        """

    def write_blob(user, blob_id, producer, namespace="", flags=()):
        """Store the bytes an ``IBodyProducer`` produces as a new blob.

        ``flags`` (pgblobs' addition) are set in the same transaction: the
        blob is never seen without them. Fires once the blob is durably
        stored. Fails with ``BlobExists`` when
        the id is taken, ``QuotaExceeded`` when the user's quota would be
        passed; in both cases, and on any other failure, nothing is stored.
        """

    def delete_blob(user, blob_id, namespace=""):
        """Turn a blob into a tombstone and free its content at once.

        Fails with ``BlobNotFound`` when there is no live blob of that id.
        """

    def get_blob_size(user, blob_id, namespace=""):
        """Fire with the blob's size in bytes."""

    def count(user, namespace=""):
        """Fire with the number of live blobs of the user in the namespace."""

    def list_blobs(user, namespace="", order_by=None, deleted=False,
                   filter_flag=None):
        """Fire with a list of blob ids.

        Live blobs by default; with ``deleted`` true, only tombstones.
        ``order_by`` is ``date``/``+date`` (oldest first) or ``-date``;
        ``filter_flag`` keeps the blobs that carry that flag.
        """

    def get_total_storage(user):
        """Fire with the user's live bytes across namespaces, in KiB rounded up."""

    def get_tag(user, blob_id, namespace=""):
        """Fire with the blob's tag: urlsafe base64 of its last 16 bytes."""

    def get_flags(user, blob_id, namespace=""):
        """Fire with the list of the blob's flags."""

    def set_flags(user, blob_id, flags, namespace=""):
        """Replace the blob's flags; ``InvalidFlag`` leaves them unchanged."""


def deferred(method):
    """Run a coroutine method as a Deferred, so every failure is a failed Deferred."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        return defer.ensureDeferred(method(*args, **kwargs))
    return wrapper
