"""/blobs/{user}/ and /blobs/{user}/{blob_id}: one blob at a time.

Each render checks names (400), then the token (401/403), then hands over to
the backend; its errors become statuses through web/status.py.
"""

from urllib.parse import quote, urlencode

from twisted.web.resource import IResource

from pgblobs import names
from pgblobs.errors import InvalidArgument, InvalidFlag
from pgblobs.web import arguments
from pgblobs.web.request import StreamingRequest
from pgblobs.web.resources import Missing, OfBlob, OfUser, body_of, rendered
from pgblobs.web.responses import ExactBody, JsonList, send, send_json
from pgblobs.web.status import BodyTooLarge

# The most ids one page of a listing holds: an answer a client can take whole.
MAX_LIMIT = 10_000


class UserBlobs(OfUser):
    """/blobs/{user}/: listing and counting; its children are blobs."""

    route = "blobs"

    def getChild(self, path: bytes, request: StreamingRequest) -> IResource:
        if not path and not request.postpath:
            return self
        if request.postpath:
            return Missing()
        return Blob(self._context, self._user, arguments.segment(path))

    @rendered
    async def render_GET(self, request: StreamingRequest) -> None:
        user = names.user_name(self._user)
        namespace = names.namespace_name(arguments.text(request, "namespace", ""))
        await self._context.auth.require(request, user)
        store = self._context.store
        if arguments.boolean(request, "only_count"):
            send_json(request, {"count": await store.count(user, namespace)})
            return
        filter_flag = arguments.text(request, "filter_flag")
        try:
            if filter_flag is not None:
                names.flag(filter_flag)
        except InvalidFlag as error:
            raise InvalidArgument(str(error)) from None
        order_by = arguments.text(request, "order_by")
        deleted = arguments.boolean(request, "deleted")
        limit = arguments.number(request, "limit", 1, MAX_LIMIT)
        page = arguments.text(request, "page")
        if limit is not None:
            ids, next_page = await store.list_blob_page(
                user, limit, page, namespace, order_by, deleted, filter_flag
            )
            if next_page is not None:
                request.setHeader(b"Link", next_link(request, next_page))
            send_json(request, ids)
            return
        if page is not None:
            # A page token says where a page begins, not how long it is: a
            # client that follows Link headers always sends both.
            raise InvalidArgument("page needs limit")
        # Page by page: a listing of a million ids is never built, parsed
        # or encoded at once on the reactor every request shares.
        listing = JsonList(request)
        await store.list_blob_pages(
            user,
            listing.add,
            namespace,
            order_by=order_by,
            deleted=deleted,
            filter_flag=filter_flag,
        )
        listing.finish()


class Blob(OfBlob):
    """/blobs/{user}/{blob_id}: store, read, flag and delete one blob."""

    isLeaf = True
    route = "blob"

    async def _authorized_key(self, request: StreamingRequest) -> names.BlobKey:
        key = names.BlobKey.of(self._user, self._blob_id, arguments.text(request, "namespace", ""))
        await self._context.auth.require(request, key.user)
        return key

    @rendered
    async def render_PUT(self, request: StreamingRequest) -> None:
        key = await self._authorized_key(request)
        limit = self._context.limits.max_blob_bytes
        body = body_of(request)
        if isinstance(body.length, int) and body.length > limit:  # else UNKNOWN_LENGTH
            raise BodyTooLarge(f"a blob may have at most {limit} bytes")
        body.refuse_beyond(limit)
        await self._context.store.write_blob(key.user, key.blob_id, body, key.namespace)
        send(request, 200)

    @rendered
    async def render_GET(self, request: StreamingRequest) -> None:
        key = await self._authorized_key(request)
        store = self._context.store
        if arguments.boolean(request, "only_flags"):
            send_json(request, await store.get_flags(*key_args(key)))
            return
        blob = await store.open_blob(*key_args(key))
        wanted = arguments.byte_range(request.getHeader(b"range"), blob.size)
        headers = [
            (b"Tag", blob.tag.encode("ascii")),
            (b"Accept-Ranges", b"bytes"),
            (b"Content-Type", b"application/octet-stream"),
        ]
        if wanted is None:
            code, (first, last) = 200, (0, blob.size - 1)
        else:
            code, (first, last) = 206, wanted
            headers.append((b"Content-Range", b"bytes %d-%d/%d" % (first, last, blob.size)))
        length = last - first + 1
        headers.append((b"Content-Length", b"%d" % length))
        body = ExactBody(request, length, code, headers)
        if request.method != b"HEAD":
            await blob.read(body, range=(first, last + 1))
        body.finish()

    @rendered
    async def render_POST(self, request: StreamingRequest) -> None:
        key = await self._authorized_key(request)
        raw = await body_of(request).read_all(self._context.limits.max_json_bytes)
        flags = arguments.json_body(raw, list)
        await self._context.store.set_flags(key.user, key.blob_id, flags, key.namespace)
        send(request, 200)

    @rendered
    async def render_DELETE(self, request: StreamingRequest) -> None:
        key = await self._authorized_key(request)
        await self._context.store.delete_blob(key.user, key.blob_id, key.namespace)
        send(request, 200)


def next_link(request: StreamingRequest, token: str) -> bytes:
    """The Link header (RFC 8288) to the page of ``token``: this request's
    path and parameters, ``page`` replaced. An absolute-path reference, so
    it means the same wherever the client resolves it against this
    request's URL; every parameter percent-encoded (a ``+`` in a query
    would read as a space)."""
    segments = request.prepath or []  # the path up to this resource, decoded
    path = b"/" + b"/".join(quote(segment, safe="").encode("ascii") for segment in segments)
    query = [
        (name, value)
        for name, values in (request.args or {}).items()
        if name != b"page"
        for value in values
    ]
    query.append((b"page", token.encode("ascii")))
    return b'<%s?%s>; rel="next"' % (path, urlencode(query, safe="", quote_via=quote).encode())


def key_args(key: names.BlobKey) -> tuple[str, str, str]:
    """(user, blob_id, namespace), the argument order of the backend's methods."""
    return key.user, key.blob_id, key.namespace
