"""The blobs backend contract, in pgblobs' words.

It follows the Soledad design's ``IBlobsBackend`` method for method, and adds
the optional ``range`` of ``read_blob`` and ``flags`` of ``write_blob``.
Every method returns a Deferred; failures arrive as a failed Deferred
carrying an error from
:mod:`pgblobs.errors`. An empty namespace means ``default`` everywhere.
"""

import functools
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IBodyProducer
from zope.interface import Attribute, Interface

from pgblobs import settings

_P = ParamSpec("_P")
_T = TypeVar("_T")


class IBlobsBackend(Interface):
    """Stores the opaque, already-encrypted blobs of many users."""

    def read_blob(
        user: str,
        blob_id: str,
        consumer: IConsumer,
        namespace: str = "",
        range: tuple[int, int | None] | None = None,
    ) -> Deferred[None]:
        """Stream a blob's bytes into ``consumer`` (an ``IConsumer``).

        A streaming producer is registered on the consumer for the duration,
        so a consumer that pauses stops the flow. ``range`` is ``(start,
        end)``, end-exclusive like a slice. Fires once the last byte is
        written; fails with ``BlobNotFound`` when there is no such blob.
        """

    def write_blob(
        user: str,
        blob_id: str,
        producer: IBodyProducer,
        namespace: str = "",
        flags: Iterable[str] = (),
    ) -> Deferred[None]:
        """Store the bytes an ``IBodyProducer`` produces as a new blob.

        ``flags`` (pgblobs' addition) are set in the same transaction: the
        blob is never seen without them. Fires once the blob is durably
        stored. When a live blob has the id, the write is done without
        storing anything if it repeats that blob's very bytes (same size and
        sha256; for an ``IStampedBody``, the same bytes after the stamp): a
        client retrying a write whose answer it lost. Fails with
        ``BlobExists`` when the id is taken by other bytes, ``QuotaExceeded``
        when the user's quota would be passed; in both cases, and on any
        other failure, nothing is stored.
        """

    def delete_blob(user: str, blob_id: str, namespace: str = "") -> Deferred[None]:
        """Turn a blob into a tombstone and free its content at once.

        Fails with ``BlobNotFound`` when there is no live blob of that id.
        """

    def get_blob_size(user: str, blob_id: str, namespace: str = "") -> Deferred[int]:
        """Fire with the blob's size in bytes."""

    def count(user: str, namespace: str = "") -> Deferred[int]:
        """Fire with the number of live blobs of the user in the namespace."""

    def list_blobs(
        user: str,
        namespace: str = "",
        order_by: str | None = None,
        deleted: bool = False,
        filter_flag: str | None = None,
    ) -> Deferred[list[str]]:
        """Fire with a list of blob ids.

        Live blobs by default; with ``deleted`` true, only tombstones.
        ``order_by`` is ``date``/``+date`` (oldest first) or ``-date``;
        ``filter_flag`` keeps the blobs that carry that flag.
        """

    def list_blob_pages(
        user: str,
        each_page: Callable[[list[str]], Deferred[None] | None],
        namespace: str = "",
        order_by: str | None = None,
        deleted: bool = False,
        filter_flag: str | None = None,
        page_size: int = settings.LISTING_PAGE,
    ) -> Deferred[None]:
        """``list_blobs`` a page at a time (pgblobs' addition), for listings
        too long to build or encode at once.

        Calls ``each_page(ids)`` with the same ids in the same order, at most
        ``page_size`` at a time (not at all for an empty listing); when it
        returns a Deferred, the next page waits for it, so a consumer that
        cannot keep up holds the listing back. Fires after the last page;
        fails as ``list_blobs`` does, or as ``each_page`` did. Each page is
        read afresh: a blob live throughout is listed once, and one created
        or deleted while the listing runs may or may not be in it.
        """

    def get_total_storage(user: str) -> Deferred[int]:
        """Fire with the user's live bytes across namespaces, in KiB rounded up."""

    def get_tag(user: str, blob_id: str, namespace: str = "") -> Deferred[str]:
        """Fire with the blob's tag: urlsafe base64 of its last 16 bytes."""

    def get_flags(user: str, blob_id: str, namespace: str = "") -> Deferred[list[str]]:
        """Fire with the list of the blob's flags."""

    def set_flags(
        user: str, blob_id: str, flags: Iterable[str], namespace: str = ""
    ) -> Deferred[None]:
        """Replace the blob's flags; ``InvalidFlag`` leaves them unchanged."""


class IOpenBlob(Interface):
    """One version of a blob, as ``IBlobStore.open_blob`` found it.

    Its size and tag describe this very version: reading it gives this
    version's bytes or fails with ``BlobNotFound`` (it was deleted
    meanwhile), never another version's bytes under this size and tag.
    """

    user = Attribute("The owner's name (str), as validated.")
    blob_id = Attribute("The blob's id (str).")
    size = Attribute("The version's size in bytes (int).")
    tag = Attribute("The version's tag (str), as ``get_tag`` gives it.")
    content = Attribute(
        "The version's bytes when they came with it (small blobs), else None: reading fetches them."
    )

    def read(consumer: IConsumer, range: tuple[int, int | None] | None = None) -> Deferred[None]:
        """Stream this version's bytes (``range`` as in ``read_blob``) into
        ``consumer``; fails with ``BlobNotFound`` if it was deleted meanwhile."""


class IBlobStore(IBlobsBackend):
    """What the web site needs of a store beyond ``IBlobsBackend``: opening
    versions (so the status line and headers are known before any byte is
    sent), many at once, writing many blobs in one transaction, and a
    listing's pages one request at a time."""

    def open_blob(user: str, blob_id: str, namespace: str = "") -> Deferred[IOpenBlob]:
        """The blob's live version; fails with ``BlobNotFound`` when there is none."""

    def open_blobs(
        user: str, blob_ids: Iterable[str], namespace: str = ""
    ) -> Deferred[list[IOpenBlob]]:
        """``open_blob`` for many ids, in their order (repeats included);
        fails with ``BlobNotFound`` naming the first id with no live blob."""

    def load_small(opened: Sequence[IOpenBlob]) -> Deferred[list[IOpenBlob]]:
        """The same versions, in the same order, the small ones carrying
        their ``content``: fetched together, so a stream of many small blobs
        costs a round trip per batch rather than per blob. A version deleted
        meanwhile stays without content; reading it is the usual
        ``BlobNotFound``."""

    def write_blobs(
        user: str,
        blobs: Sequence[tuple[str, int, Callable[[], IBodyProducer]]],
        namespace: str = "",
        before_commit: Callable[[], Deferred[Any]] | None = None,
    ) -> Deferred[None]:
        """Store several blobs in one transaction: all of them, or none.

        ``blobs`` lists ``(blob_id, size, producer_factory)``; each factory is
        called, on the reactor, when its blob's turn comes, and returns the
        IBodyProducer of exactly ``size`` bytes. ``before_commit`` (a
        callable returning a Deferred) may still refuse the whole lot once
        every byte is in. A blob whose id a live blob has is done, and not
        stored again, when its bytes repeat that blob's (as in
        ``write_blob``); the others are stored. Fails with ``BlobExists``
        when an id is taken by other bytes or listed twice,
        ``QuotaExceeded`` when the new blobs do not fit.
        """

    def list_blob_page(
        user: str,
        limit: int,
        page: str | None = None,
        namespace: str = "",
        order_by: str | None = None,
        deleted: bool = False,
        filter_flag: str | None = None,
    ) -> Deferred[tuple[list[str], str | None]]:
        """One page of ``list_blobs``, for clients that page through a
        listing request by request: fire with ``(ids, next_page)``.

        ``ids`` are at most ``limit`` (1 or more) ids in the listing's
        order, from the start of the listing, or from where the ``page``
        token given with the previous page says. ``next_page`` is the token
        of the page after, None when no id follows. Following the tokens
        gives every id listed throughout exactly once, in order, whatever is
        added or deleted meanwhile; one added or deleted meanwhile may or
        may not be in it. A token is opaque, URL-safe text; a malformed one,
        or one made for other arguments, fails with ``InvalidArgument``;
        other failures are those of ``list_blobs``.
        """

    def close() -> Deferred[None]:
        """Let go of whatever the store holds (connections); fires when done."""


class IChangeFeed(Interface):
    """What changed in a user's blobs after a cursor (GET /changes/{user}): a
    sync that costs what changed instead of listing everything."""

    held_changes = Attribute("How many requests are held now, waiting for a change (int).")

    def changes(
        user: str,
        since: str | None = None,
        namespace: str | None = None,
        limit: int = 1000,
        wait: float = 0,
        abandoned: Deferred[Any] | None = None,
    ) -> Deferred[Any]:
        """A ``feed.ChangesPage``: the blobs of ``user`` (of ``namespace``
        only, unless None) changed after the cursor ``since`` (None: from the
        oldest change kept), each once in its latest state, in the order the
        changes committed, at most ``limit``; its ``cursor`` goes on from
        there. A client that passes each answer's cursor as the next
        ``since`` misses no change. With no change to give, it waits up to
        ``wait`` seconds for one (or until ``abandoned`` fires). Fails with
        ``CursorExpired`` for a cursor older than what is kept,
        ``InvalidArgument`` for a malformed one, ``TooManyHeld`` past the
        bounds of waiting requests."""


class IClaims(Interface):
    """Inbox claims (pgblobs' addition): a client reserves PENDING blobs
    before it hands them out, so two clients of one user never both take one
    (Soledad's incoming box). The site serves /claim only for a store that
    provides it."""

    def claim_blobs(
        user: str,
        namespace: str = "",
        limit: int = settings.CLAIM_LIMIT,
        lease: int = settings.CLAIM_LEASE,
    ) -> Deferred[list[str]]:
        """Move up to ``limit`` of the user's blobs in ``namespace`` that
        carry PENDING to PROCESSING, oldest first, and fire with their ids in
        that order. Claims at once, on any node, never return the same id.

        Each claim is leased for ``lease`` seconds: a blob that still carries
        PROCESSING when its lease ends goes back to PENDING within a few
        seconds and may be claimed again; giving it other flags (PROCESSED,
        FAILED), or deleting it, ends the lease. ``InvalidArgument`` when
        ``limit`` is outside 1 to settings.MAX_CLAIM_LIMIT or ``lease``
        outside 1 to settings.MAX_CLAIM_LEASE.
        """


class IUploads(Interface):
    """Resumable uploads (pgblobs' addition, served as tus 1.0 under
    /uploads/{user}/): a blob's bytes arrive over many requests, to any
    node, and it becomes live when the last one is in. Each method fires
    with an ``uploads.UploadState``, and fails with ``UploadNotFound`` for
    an upload that is not in progress (never made, completed, terminated
    or expired)."""

    def create_upload(
        user: str, blob_id: str, length: int, namespace: str = "", metadata: str = ""
    ) -> Deferred[Any]:
        """Begin an upload of ``length`` bytes that will be the blob
        ``blob_id``; ``metadata`` is kept for the client (tus's
        Upload-Metadata). From now until it ends the id is reserved (a write
        of it fails with ``BlobReserved``) and so are ``length`` bytes and
        one blob of the user's quota. ``BlobExists`` when a live blob or
        another upload has the id, ``QuotaExceeded`` when it does not fit,
        ``TooManyUploads`` past the uploads a user may have in progress. An
        upload of no bytes is its blob at once."""

    def upload_state(user: str, upload_id: str) -> Deferred[Any]:
        """Where the upload stands: every byte its offset counts is durable."""

    def reserving_upload(user: str, blob_id: str, namespace: str = "") -> Deferred[Any]:
        """The upload in progress that has reserved the blob's id, or None:
        a client that lost the answer to its creation finds it again."""

    def append_upload(
        user: str,
        upload_id: str,
        offset: int,
        producer: IBodyProducer,
        checksum: Any = None,
    ) -> Deferred[Any]:
        """Append what ``producer`` produces at ``offset``, which must be the
        upload's offset now (else ``UploadOffsetMismatch``); when the offset
        reaches the length, the blob is live in the same transaction.
        ``checksum`` (an ``upload_steps.Checksum``, optional): the body is kept
        only if it matches (else ``ChecksumMismatch``). ``UploadBusy`` while
        another append of the upload runs, on any node; ``UploadTooLong``
        for bytes past the length. Without a checksum, a body cut short
        keeps what arrived, in whole committed steps."""

    def terminate_upload(user: str, upload_id: str) -> Deferred[None]:
        """End the upload and remove its bytes; ``UploadBusy`` while an
        append of it runs."""


class IBodyOnDemand(IBodyProducer):
    """A body the client sends only once the server asks for it (HTTP's
    ``Expect: 100-continue``): refusing a write before reading such a body
    saves the client the upload, so a store checks what it can first."""

    sent_on_demand = Attribute("True when the body comes only once production starts.")


class IStampedBody(IBodyProducer):
    """A body whose head the server writes, not the client (a delivered
    mail's preamble, which carries the time of delivery): a retried write
    repeats the live blob when its bytes after the stamp are that blob's."""

    stamp_length = Attribute("How many bytes at the head of the body are the server's (int).")


def stamp_length(body: IBodyProducer) -> int:
    """How many bytes at the head of ``body`` are the server's: none unless
    it is an IStampedBody."""
    return int(body.stamp_length) if IStampedBody.providedBy(body) else 0


def deferred(
    method: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Deferred[_T]]:
    """Run a coroutine method as a Deferred, so every failure is a failed Deferred."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        return defer.ensureDeferred(method(*args, **kwargs))

    return wrapper
