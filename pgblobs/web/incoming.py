"""/incoming/{user}/{blob_id} on the services site: mail delivered by an MX.

The message (the request body, streamed) is stored in the user's ``MX``
namespace behind Soledad's preamble (see pgblobs/mail.py), flagged PENDING
in the same transaction: the mail client, which lists PENDING blobs of that
namespace, sees every delivery that was answered 200, and nothing else.
"""

from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import IResource

from pgblobs import mail, names
from pgblobs.names import Flags
from pgblobs.web import arguments
from pgblobs.web.request import StreamingRequest
from pgblobs.web.resources import Missing, OfBlob, OfUser, body_of, rendered
from pgblobs.web.responses import send
from pgblobs.web.status import BodyTooLarge, LengthRequired


class UserIncoming(OfUser):
    """/incoming/{user}/: its children are deliveries."""

    def getChild(self, path: bytes, request: StreamingRequest) -> IResource:
        if not path or request.postpath:
            return Missing()
        return Delivery(self._context, self._user, arguments.segment(path))


class Delivery(OfBlob):
    """PUT /incoming/{user}/{blob_id}: store one delivered message."""

    isLeaf = True
    route = "incoming"

    @rendered
    async def render_PUT(self, request: StreamingRequest) -> None:
        key = names.BlobKey.of(self._user, self._blob_id, mail.NAMESPACE)
        await self._context.auth.user_of(request)  # any service with a valid token
        body = body_of(request)
        if body.length is UNKNOWN_LENGTH:
            # The preamble at the head of the blob carries the message's size.
            raise LengthRequired("a delivery needs a Content-Length")
        message = mail.DeliveredMessage(key.blob_id, body)
        limit = self._context.limits.max_blob_bytes
        if message.length > limit:
            raise BodyTooLarge(f"a blob may have at most {limit} bytes")
        await self._context.store.write_blob(
            key.user, key.blob_id, message, key.namespace, flags=[Flags.PENDING]
        )
        send(request, 200)
