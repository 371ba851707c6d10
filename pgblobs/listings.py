"""Listing a user's blob ids: whole, a page at a time, or one page a client
asked for by its token.

Both orders come from one ascending index; a page is an index range scan
that goes on from the key of the last row listed, so a page costs the same
however deep into the listing it is. Listings are reads: a replica close
behind may answer them (db/replicas.py).
"""

import base64
import hashlib
import re
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from pgblobs import names
from pgblobs.db.replicas import Replicas
from pgblobs.errors import InvalidArgument

# Page statements of listings running at once, all listings together.
PAGES_IN_FLIGHT = 2
# A listing's statement -> its page statements, (oldest first, newest first).
_PAGE_STATEMENTS = {
    "list_live": ("list_live_page", "list_live_page_desc"),
    "list_tombstones": ("list_tombstones_page", "list_tombstones_page_desc"),
    "list_flagged": ("list_flagged_page", "list_flagged_page_desc"),
}
_LAST_ROW = 2**63 - 1  # past any row id (bigint)
# A page token: the key to go on after (its date in microseconds since 1970,
# PostgreSQL's own precision, and its row id) and the listing's fingerprint.
_TOKEN = struct.Struct(">qq8s")
_TOKEN_TEXT = re.compile(r"[A-Za-z0-9_-]{32}")  # urlsafe base64 of its 24 bytes, unpadded
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


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


class PageOf:
    """One page of a listing as a client asks for it: at most ``limit`` ids,
    in the listing's order, from where ``token`` (None: the start) says.

    A token holds the key just before the first row of its page, not an
    offset: keys never change, so a page goes on where the last one ended
    however many rows before or after were added or deleted meanwhile. It
    also holds a fingerprint of the listing (user, namespace, which rows,
    order), so a token used with other parameters is refused rather than
    read as a position in a listing it was not made for. Tokens are not
    signed: a made-up one can only start the client's own listing somewhere.
    """

    def __init__(self, listing: Listing, newest_first: bool, limit: int, token: str | None) -> None:
        if limit < 1:
            raise InvalidArgument(f"invalid limit {limit}: a page holds at least one id")
        self.listing = listing
        self.newest_first = newest_first
        self.limit = limit
        words = [*listing.params.values(), listing.statement or "", str(newest_first)]
        self._fingerprint = hashlib.blake2b("\0".join(words).encode(), digest_size=8).digest()
        # The (date, row) key to go on after, None from the start.
        self.after: tuple[datetime, int] | None = None if token is None else self._key_of(token)

    def _key_of(self, token: str) -> tuple[datetime, int]:
        if not _TOKEN_TEXT.fullmatch(token):
            raise InvalidArgument("invalid page token")
        date, row, fingerprint = _TOKEN.unpack(base64.urlsafe_b64decode(token))
        if fingerprint != self._fingerprint:
            raise InvalidArgument("the page token belongs to another listing (other parameters)")
        try:
            return _EPOCH + date * _MICROSECOND, row
        except OverflowError:  # a made-up token, past the years Python dates hold
            raise InvalidArgument("invalid page token") from None

    def follows(self, key: tuple[datetime, int]) -> bool:
        """Whether the row of ``key`` comes after the token's key in the listing's order."""
        if self.after is None:
            return True
        return key < self.after if self.newest_first else key > self.after

    def next_token(self, first: tuple[datetime, int]) -> str:
        """The token of the page that begins at the row of key ``first``.

        It holds the key just before that row, so the next page begins with
        it (or, if it was deleted meanwhile, with whatever follows it): row
        ids are integers, so "at or after (d, r)" is "after (d, r - 1)".
        """
        date, row = first
        micros = (date - _EPOCH) // _MICROSECOND
        before = (micros, row + 1) if self.newest_first else (micros, row - 1)
        return base64.urlsafe_b64encode(_TOKEN.pack(*before, self._fingerprint)).decode("ascii")


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

    async def page(self, page: PageOf) -> tuple[list[str], str | None]:
        """See IBlobStore.list_blob_page. One row past the page is read, so
        the token of a next page is given only when it has a row to begin with."""
        listing = page.listing
        if listing.statement is None:
            return [], None
        name = _PAGE_STATEMENTS[listing.statement][page.newest_first]
        after = _first_key(page.newest_first) if page.after is None else page.after
        ids, last = await self._read_page(name, listing, after, page.limit + 1)
        if len(ids) <= page.limit:
            return ids, None
        return ids[: page.limit], page.next_token(last)

    async def _read_page(
        self, name: str, listing: Listing, after: tuple[Any, int], page_size: int
    ) -> tuple[list[str], tuple[Any, int]]:
        """The ids of at most ``page_size`` rows past the key ``after`` and the
        key of the last of them."""
        # Listings take turns for a few connections: however many run,
        # the rest of the pool stays free for everyone else's statements.
        # Each page asks anew which database may answer, so a replica
        # that falls behind mid-listing answers no further page (the
        # keys go on the same on the primary and every replica).
        async with self._page_turns:
            rows = await self._reading.reader().fetch(
                name,
                dict(listing.params, after_date=after[0], after_row=after[1], page_size=page_size),
            )
        page = rows[0]
        return page.blob_ids, (page.last_date, page.last_row)

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

        def read_page(after: tuple[Any, int]) -> Deferred[tuple[list[str], tuple[Any, int]]]:
            return defer.ensureDeferred(self._read_page(name, listing, after, page_size))

        next_page = read_page(_first_key(newest_first))
        while True:
            ids, last = await next_page
            more = len(ids) == page_size
            if more:
                next_page = read_page(last)
            try:
                if ids:
                    await defer.maybeDeferred(each_page, ids)
            except BaseException:
                if more:
                    next_page.addErrback(lambda _: None)  # no longer wanted, whatever it does
                raise
            if not more:
                return


def _first_key(newest_first: bool) -> tuple[str, int]:
    """A key before the first row in the listing's order."""
    return ("infinity", _LAST_ROW) if newest_first else ("-infinity", 0)
