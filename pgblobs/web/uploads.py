"""/uploads/{user}/ and /uploads/{user}/{upload}: resumable uploads, as tus 1.0
speaks them (tus.io/protocols/resumable-upload), so its clients work
unchanged: the core protocol (HEAD, PATCH, OPTIONS) and the creation,
creation-with-upload, termination, expiration and checksum extensions.

``Upload-Metadata`` names the blob: ``blob_id`` (required) and ``namespace``
(optional); any other key (``filename``, ``filetype``) is kept for HEAD and
otherwise ignored. The backend (IUploads) holds every upload in the
database, so each request may go to any node.
"""

import base64
import binascii
import re

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import IResource

from pgblobs import names
from pgblobs.db.upload_steps import Checksum
from pgblobs.errors import BlobReserved, InvalidArgument
from pgblobs.interfaces import IUploads
from pgblobs.uploads import UploadState
from pgblobs.web import arguments
from pgblobs.web.request import StreamingRequest
from pgblobs.web.resources import Context, Missing, OfUser, body_of, rendered
from pgblobs.web.responses import send
from pgblobs.web.status import BodyTooLarge, TusVersionUnsupported, UnsupportedMediaType

_log = Logger()

TUS_VERSION = b"1.0.0"
EXTENSIONS = b"creation,creation-with-upload,termination,expiration,checksum"
CHECKSUM_ALGORITHMS = ("sha1", "sha256")
_OFFSET_CONTENT = b"application/offset+octet-stream"
_MOST_BYTES = 2**63 - 1  # a PostgreSQL bigint
# A Host header that may be written back in a URL: a name or address, and a port.
_HOST = re.compile(rb"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class _Tus(OfUser):
    """What every tus resource does first: say its version on every answer,
    and refuse a request of another version (OPTIONS asks which there are)."""

    def render(self, request: StreamingRequest) -> int | bytes:
        request.setHeader(b"Tus-Resumable", TUS_VERSION)
        # tus: a client whose environment sends no PATCH or DELETE names the
        # method here, and the request's own is ignored.
        override = request.getHeader(b"x-http-method-override")
        if override is not None:
            request.method = override.strip().upper()
        return super().render(request)

    def _uploads(self, request: StreamingRequest) -> IUploads:
        if request.getHeader(b"tus-resumable") != TUS_VERSION:
            raise TusVersionUnsupported("this server speaks tus 1.0.0 (Tus-Resumable)")
        # The site mounts /uploads only for a store that provides IUploads.
        return IUploads(self._context.store)

    @rendered
    async def render_OPTIONS(self, request: StreamingRequest) -> None:
        request.setHeader(b"Tus-Version", TUS_VERSION)
        request.setHeader(b"Tus-Extension", EXTENSIONS)
        request.setHeader(b"Tus-Max-Size", b"%d" % self._context.limits.max_blob_bytes)
        request.setHeader(b"Tus-Checksum-Algorithm", ",".join(CHECKSUM_ALGORITHMS).encode())
        send(request, 204)


class UserUploads(_Tus):
    """/uploads/{user}/: creation; its children are the user's uploads."""

    route = "uploads"

    def getChild(self, path: bytes, request: StreamingRequest) -> IResource:
        if not path and not request.postpath:
            return self
        if request.postpath not in ([], [b""]):
            return Missing()
        return Upload(self._context, self._user, arguments.segment(path))

    @rendered
    async def render_POST(self, request: StreamingRequest) -> None:
        uploads = self._uploads(request)
        user = names.user_name(self._user)
        length = arguments.header_number(request, "Upload-Length", 0, _MOST_BYTES)
        if length is None:
            raise InvalidArgument("Upload-Length is required (Upload-Defer-Length is not offered)")
        limit = self._context.limits.max_blob_bytes
        if length > limit:
            raise BodyTooLarge(f"a blob may have at most {limit} bytes")
        raw_metadata = (request.getHeader(b"upload-metadata") or b"").decode("latin-1").strip()
        metadata = _metadata(raw_metadata)
        if "blob_id" not in metadata:
            raise InvalidArgument("Upload-Metadata must name the blob: blob_id")
        blob_id = names.blob_name(metadata["blob_id"])
        namespace = names.namespace_name(metadata.get("namespace", ""))
        with_upload, checksum = _has_body(request), None
        if with_upload:
            _require_offset_content(request)
            checksum = _checksum(request)  # refused before anything is made
        await self._context.auth.require(request, user)
        try:
            state = await uploads.create_upload(user, blob_id, length, namespace, raw_metadata)
        except BlobReserved:
            # The user's own upload of the blob: a client that lost the answer
            # to its creation hears where it is, and resumes it (HEAD).
            reserving = await uploads.reserving_upload(user, blob_id, namespace)
            if reserving is not None:
                request.setHeader(b"Location", _location(request, user, reserving))
            raise
        if with_upload and not state.completed:
            try:
                state = await uploads.append_upload(
                    user, state.upload_id, 0, body_of(request), checksum
                )
            except BaseException:
                # The client never heard where the upload is, so none could
                # resume it: it goes, and the blob's id and quota are free
                # (or, if the database cannot say so now, at its expiry).
                try:
                    await uploads.terminate_upload(user, state.upload_id)
                except Exception as error:
                    _log.warn("could not end upload {id}: {error}", id=state.upload_id, error=error)
                raise
        request.setHeader(b"Location", _location(request, user, state))
        _answer(request, 201, state)


class Upload(_Tus):
    """/uploads/{user}/{upload}: where it stands, appending, termination."""

    isLeaf = True
    route = "upload"

    def __init__(self, context: Context, user: str, upload_id: str) -> None:
        super().__init__(context, user)
        self._upload_id = upload_id

    @rendered
    async def render_HEAD(self, request: StreamingRequest) -> None:
        uploads = self._uploads(request)
        user = names.user_name(self._user)
        await self._context.auth.require(request, user)
        state = await uploads.upload_state(user, self._upload_id)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Upload-Length", b"%d" % state.length)
        if state.metadata:
            request.setHeader(b"Upload-Metadata", state.metadata.encode("latin-1"))
        _answer(request, 200, state)

    @rendered
    async def render_PATCH(self, request: StreamingRequest) -> None:
        uploads = self._uploads(request)
        user = names.user_name(self._user)
        _require_offset_content(request)
        offset = arguments.header_number(request, "Upload-Offset", 0, _MOST_BYTES)
        if offset is None:
            raise InvalidArgument("Upload-Offset is required")
        checksum = _checksum(request)
        await self._context.auth.require(request, user)
        state = await uploads.append_upload(
            user, self._upload_id, offset, body_of(request), checksum
        )
        _answer(request, 204, state)

    @rendered
    async def render_DELETE(self, request: StreamingRequest) -> None:
        uploads = self._uploads(request)
        user = names.user_name(self._user)
        await self._context.auth.require(request, user)
        await uploads.terminate_upload(user, self._upload_id)
        send(request, 204)


def _location(request: StreamingRequest, user: str, state: UploadState) -> bytes:
    """The upload's URL: on the host the client asked for (its Host header),
    as tus servers answer; an absolute path without one, which clients
    resolve against the creation's URL."""
    path = "/".join(("", "uploads", user, state.upload_id)).encode("ascii")
    host = request.getHeader(b"host")
    if not host or not _HOST.fullmatch(host):
        return path
    return b"%s://%s%s" % (b"https" if request.isSecure() else b"http", host, path)


def _answer(request: StreamingRequest, code: int, state: UploadState) -> None:
    """An answer that says where ``state``'s upload stands."""
    request.setHeader(b"Upload-Offset", b"%d" % state.offset)
    request.setHeader(b"Upload-Expires", http.datetimeToString(state.expires_at.timestamp()))
    send(request, code)


def _has_body(request: StreamingRequest) -> bool:
    length = body_of(request).length
    return not isinstance(length, int) or length > 0  # else UNKNOWN_LENGTH: chunked


def _require_offset_content(request: StreamingRequest) -> None:
    if request.getHeader(b"content-type") != _OFFSET_CONTENT:
        raise UnsupportedMediaType("the body must be application/offset+octet-stream")


def _metadata(header: str) -> dict[str, str]:
    """Upload-Metadata: comma-separated pairs of a key and its value in
    base64 (a key may come alone); values that are not text are kept
    as given, since only blob_id and namespace are read."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in header.split(","))):
        key, _, encoded = item.partition(" ")
        if key in pairs or " " in encoded.strip():
            raise InvalidArgument(f"invalid Upload-Metadata item {item[:40]!r}")
        try:
            value = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            raise InvalidArgument(f"Upload-Metadata {key[:40]!r} is not base64") from None
        pairs[key] = value.decode("utf-8", "replace")
    return pairs


def _checksum(request: StreamingRequest) -> Checksum | None:
    """Upload-Checksum: an algorithm and the body's digest in base64."""
    header = request.getHeader(b"upload-checksum")
    if header is None:
        return None
    algorithm, _, encoded = header.decode("latin-1").strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise InvalidArgument(f"Upload-Checksum: use {' or '.join(CHECKSUM_ALGORITHMS)}")
    try:
        return Checksum(algorithm, base64.b64decode(encoded.strip(), validate=True))
    except binascii.Error:
        raise InvalidArgument("Upload-Checksum: the digest is not base64") from None
