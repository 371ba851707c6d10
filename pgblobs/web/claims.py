"""POST /claim/{user}?namespace=NS&limit=N&lease=S: reserve PENDING blobs.

Up to ``limit`` (default 10, at most 1000) of the user's blobs in the
namespace (absent: the default one, as everywhere) that carry PENDING move
to PROCESSING, oldest first, leased for ``lease`` seconds (default 300, at
most 3600); the answer is their ids as a JSON list, oldest first (empty when
none is pending). See IClaims for what ends a lease.
"""

from pgblobs import names, settings
from pgblobs.interfaces import IClaims
from pgblobs.web import arguments
from pgblobs.web.request import StreamingRequest
from pgblobs.web.resources import UserLeaf, rendered
from pgblobs.web.responses import send_json


class UserClaims(UserLeaf):
    route = "claim"

    @rendered
    async def render_POST(self, request: StreamingRequest) -> None:
        user = names.user_name(self._user)
        namespace = names.namespace_name(arguments.text(request, "namespace", ""))
        limit = arguments.number(
            request, "limit", 1, settings.MAX_CLAIM_LIMIT, settings.CLAIM_LIMIT
        )
        lease = arguments.number(
            request, "lease", 1, settings.MAX_CLAIM_LEASE, settings.CLAIM_LEASE
        )
        await self._context.auth.require(request, user)
        # The site mounts /claim only for a store that provides IClaims.
        claimed = await IClaims(self._context.store).claim_blobs(user, namespace, limit, lease)
        send_json(request, claimed)
