"""/blobs/{user}/ and /blobs/{user}/{blob_id}: one blob at a time.

Each render checks names (400), then the token (401/403), then hands over to
the backend; its errors become statuses through web/status.py.
"""

from twisted.web.iweb import UNKNOWN_LENGTH

from pgblobs import names
from pgblobs.errors import InvalidArgument, InvalidFlag
from pgblobs.web import arguments
from pgblobs.web.resources import Handler, Missing, rendered
from pgblobs.web.responses import ExactBody, JsonList, send, send_json
from pgblobs.web.status import BodyTooLarge


class UserBlobs(Handler):
    """/blobs/{user}/: listing and counting; its children are blobs."""

    route = "blobs"

    def __init__(self, context, user):
        super().__init__()
        self._context = context
        self._user = user

    def getChild(self, path, request):
        if not path and not request.postpath:
            return self
        if request.postpath:
            return Missing()
        return Blob(self._context, self._user, arguments.segment(path))

    @rendered
    async def render_GET(self, request):
        request.route = self.route
        user = names.user_name(self._user)
        namespace = names.namespace_name(arguments.text(request, "namespace", ""))
        await self._context.auth.require(request, user)
        backend = self._context.backend
        if arguments.boolean(request, "only_count"):
            send_json(request, {"count": await backend.count(user, namespace)})
            return
        filter_flag = arguments.text(request, "filter_flag")
        try:
            if filter_flag is not None:
                names.flag(filter_flag)
        except InvalidFlag as error:
            raise InvalidArgument(str(error)) from None
        # Page by page: a listing of a million ids is never built, parsed
        # or encoded at once on the reactor every request shares.
        listing = JsonList(request)
        await backend.list_blob_pages(
            user,
            listing.add,
            namespace,
            order_by=arguments.text(request, "order_by"),
            deleted=arguments.boolean(request, "deleted"),
            filter_flag=filter_flag,
        )
        listing.finish()


class Blob(Handler):
    """/blobs/{user}/{blob_id}: store, read, flag and delete one blob."""

    isLeaf = True
    route = "blob"

    def __init__(self, context, user, blob_id):
        super().__init__()
        self._context = context
        self._user = user
        self._blob_id = blob_id

    async def _authorized_key(self, request):
        request.route = self.route
        key = names.BlobKey.of(self._user, self._blob_id, arguments.text(request, "namespace", ""))
        await self._context.auth.require(request, key.user)
        return key

    @rendered
    async def render_PUT(self, request):
        key = await self._authorized_key(request)
        limit = self._context.limits.max_blob_bytes
        body = request.body
        if body.length is not UNKNOWN_LENGTH and body.length > limit:
            raise BodyTooLarge(f"a blob may have at most {limit} bytes")
        body.limit = limit
        await self._context.backend.write_blob(key.user, key.blob_id, body, key.namespace)
        send(request, 200)

    @rendered
    async def render_GET(self, request):
        key = await self._authorized_key(request)
        backend = self._context.backend
        if arguments.boolean(request, "only_flags"):
            send_json(request, await backend.get_flags(*key_args(key)))
            return
        blob = await backend.open_blob(*key_args(key))
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
    async def render_POST(self, request):
        key = await self._authorized_key(request)
        raw = await request.body.read_all(self._context.limits.max_json_bytes)
        flags = arguments.json_body(raw, list)
        await self._context.backend.set_flags(key.user, key.blob_id, flags, key.namespace)
        send(request, 200)

    @rendered
    async def render_DELETE(self, request):
        key = await self._authorized_key(request)
        await self._context.backend.delete_blob(key.user, key.blob_id, key.namespace)
        send(request, 200)


def key_args(key):
    """(user, blob_id, namespace), the argument order of the backend's methods."""
    return key.user, key.blob_id, key.namespace
