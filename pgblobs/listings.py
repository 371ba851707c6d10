"""Listing a user's blob ids: whole, or a page at a time.

Both orders come from one ascending index; a page is an index range scan
that goes on from the key of the last row listed, so a page costs the same
however deep into the listing it is. Listings are reads: a replica close
behind may answer them (db/replicas.py).
"""

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from pgblobs import names
from pgblobs.db.replicas import Replicas

# Page statements of listings running at once, all listings together.
PAGES_IN_FLIGHT = 2
# A listing's statement -> its page statements, (oldest first, newest first).
_PAGE_STATEMENTS = {
    "list_live": ("list_live_page", "list_live_page_desc"),
    "list_tombstones": ("list_tombstones_page", "list_tombstones_page_desc"),
    "list_flagged": ("list_flagged_page", "list_flagged_page_desc"),
}
_LAST_ROW = 2**63 - 1  # past any row id (bigint)


class Listing:
    """Which ids one listing asks for: validated, and the statement that
    selects them (None: no rows, by definition)."""

    def __init__(self, user: str, namespace: str, deleted: bool, filter_flag: str | None) -> None:
        self.params: dict[str, Any] = {
            "user": names.user_name(user),
            "namespace": names.namespace_name(namespace),
        }
        self.statement: str | None
        if filter_flag is None:
            self.statement = "list_tombstones" if deleted else "list_live"
            return
        self.params["flag"] = names.flag(filter_flag)
        # Deleting a blob drops its flags: no tombstone carries one.
        self.statement = None if deleted else "list_flagged"


class Listings:
    """Lists through ``reading``, a few pages at a time for all listings."""

    def __init__(self, reading: Replicas) -> None:
        self._reading = reading
        self._page_turns = defer.DeferredSemaphore(PAGES_IN_FLIGHT)

    async def whole(self, listing: Listing, newest_first: bool) -> list[str]:
        if listing.statement is None:
            return []
        rows = await self._reading.reader().fetch(listing.statement, listing.params)
        ids: list[str] = rows[0].blob_ids
        # Both orders come from one ascending index scan.
        if newest_first:
            ids.reverse()
        return ids

    async def pages(
        self,
        listing: Listing,
        newest_first: bool,
        each_page: Callable[[list[str]], Deferred[None] | None],
        page_size: int,
    ) -> None:
        """See IBlobsBackend.list_blob_pages. The next page is read while the
        consumer takes the last one."""
        if listing.statement is None:
            return
        name = _PAGE_STATEMENTS[listing.statement][newest_first]

        async def read_page(after: tuple[Any, int]) -> tuple[list[str], tuple[Any, int]]:
            # Listings take turns for a few connections: however many run,
            # the rest of the pool stays free for everyone else's statements.
            # Each page asks anew which database may answer, so a replica
            # that falls behind mid-listing answers no further page (the
            # keys go on the same on the primary and every replica).
            async with self._page_turns:
                rows = await self._reading.reader().fetch(
                    name,
                    dict(
                        listing.params, after_date=after[0], after_row=after[1], page_size=page_size
                    ),
                )
            page = rows[0]
            return page.blob_ids, (page.last_date, page.last_row)

        # Before the first row in the listing's order.
        first = ("infinity", _LAST_ROW) if newest_first else ("-infinity", 0)
        next_page = defer.ensureDeferred(read_page(first))
        while True:
            ids, last = await next_page
            more = len(ids) == page_size
            if more:
                next_page = defer.ensureDeferred(read_page(last))
            try:
                if ids:
                    await defer.maybeDeferred(each_page, ids)
            except BaseException:
                if more:
                    next_page.addErrback(lambda _: None)  # no longer wanted, whatever it does
                raise
            if not more:
                return
