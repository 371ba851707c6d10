"""/changes/{user}: the change feed (feed.py) over HTTP.

GET (and HEAD) with ``since`` (a cursor from an earlier answer), ``namespace``
(given, even empty: that namespace only; absent: all), ``limit`` and ``wait``
(seconds to hold the request while nothing follows ``since``). Names and
parameters are checked first (400), then the token (401/403).
"""

import datetime
import re
from typing import Any, cast

from twisted.internet.defer import Deferred

from pgblobs import names, settings
from pgblobs.errors import InvalidArgument
from pgblobs.feed import Change, ChangesPage
from pgblobs.interfaces import IChangeFeed
from pgblobs.web import arguments
from pgblobs.web.request import StreamingRequest
from pgblobs.web.resources import UserLeaf, rendered
from pgblobs.web.responses import send_json

# Seconds as a client writes them: digits, and a fraction if it likes.
_SECONDS = re.compile(r"[0-9]{1,5}(\.[0-9]{1,6})?")


class UserChanges(UserLeaf):
    """/changes/{user}: what changed in the user's blobs after a cursor."""

    route = "changes"

    @rendered
    async def render_GET(self, request: StreamingRequest) -> None:
        user = names.user_name(self._user)
        namespace = arguments.text(request, "namespace")
        if namespace is not None:
            names.namespace_name(namespace)
        since = arguments.text(request, "since")
        limit = arguments.number(
            request, "limit", 1, settings.CHANGES_LIMIT_MAX, settings.CHANGES_LIMIT
        )
        wait = _wait(arguments.text(request, "wait"))
        await self._context.auth.require(request, user)
        feed = cast(IChangeFeed, self._context.store)
        abandoned: Deferred[Any] = Deferred()
        request.notifyFinish().addBoth(abandoned.callback)
        page: ChangesPage = await feed.changes(user, since, namespace, limit, wait, abandoned)
        send_json(request, as_json(page))


def _wait(value: str | None) -> float:
    if value is None:
        return 0.0
    if not _SECONDS.fullmatch(value) or float(value) > settings.CHANGES_WAIT_MAX:
        raise InvalidArgument(
            f"invalid wait {value[:20]!r}: seconds from 0 to {settings.CHANGES_WAIT_MAX:g}"
        )
    return float(value)


def as_json(page: ChangesPage) -> dict[str, Any]:
    """The answer's JSON: the changes, the cursor to go on from, and whether
    more are ready."""
    return {
        "changes": [_change_json(change) for change in page.changes],
        "cursor": page.cursor,
        "more": page.more,
    }


def _change_json(change: Change) -> dict[str, Any]:
    item: dict[str, Any] = {"id": change.blob_id, "namespace": change.namespace}
    item["change"] = change.kind
    if change.kind == "stored":
        item["size"] = change.size
        item["tag"] = change.tag
    if change.flags is not None:
        item["flags"] = change.flags
    item["at"] = _timestamp(change.at)
    return item


def _timestamp(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with microseconds: 2026-12-01T10:00:00.123456Z."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
