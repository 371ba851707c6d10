"""The change feed: what changed in a user's blobs after a cursor, and
requests held until something does.

Every change to a blob row gets a number under its user's lock
(pgblobs.number_change, revision 0014), so a user's numbers follow the order
their transactions commit: a reader that has seen a number has seen every
lower number of that user, whichever node or writer made it. A cursor holds
the last number a reader saw (and the purge horizon its read was checked
against); the answer holds each blob changed after it once, in its latest
state. The feed is read from the primary only: a replica
behind it would answer an older state than a cursor it handed out, and a
cursor must never move backwards.

A held request (``wait``) holds no database connection: it sleeps until
NOTIFY pgblobs_changes names its user (sent at commit by the trigger, heard
by a LISTEN connection of this process) or its time is up. While that
connection is down notifications are lost, so held requests read again
every ``POLL_WHILE_DEAF`` seconds until it is back.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from pgblobs import names, settings
from pgblobs.db.connector import Database
from pgblobs.db.notifications import Listener
from pgblobs.db.queries import Row
from pgblobs.errors import CursorExpired, InvalidArgument, TooManyHeld

CHANNEL = "pgblobs_changes"
POLL_WHILE_DEAF = 1.0
_CURSOR = re.compile(r"c([0-9]{1,19})\.([0-9]{1,19})")


@dataclass(frozen=True)
class Cursor:
    """Where a reader is: it has seen every change of its user up to
    ``number``, and it needs no delete that purge removed up to ``horizon``
    (the horizon its read was checked against: a reader that started after a
    purge never saw what it removed)."""

    number: int
    horizon: int

    def __str__(self) -> str:
        return f"c{self.number}.{self.horizon}"

    @classmethod
    def parse(cls, text: str) -> "Cursor":
        """InvalidArgument when ``text`` is no cursor this server hands out."""
        matched = _CURSOR.fullmatch(text)
        if matched is None or max(int(part) for part in matched.groups()) >= 2**63:
            raise InvalidArgument(f"invalid cursor {text[:40]!r}: pass one an answer gave")
        return cls(int(matched.group(1)), int(matched.group(2)))

    def missed(self, purged_through: int) -> bool:
        """Whether a purge removed, after this cursor was handed out, a delete
        its reader has not seen."""
        return purged_through > max(self.number, self.horizon)


@dataclass(frozen=True)
class Change:
    """One blob's change: ``kind`` is "stored", "flags" or "deleted"; size and
    tag only for "stored", flags for "stored" and "flags"."""

    blob_id: str
    namespace: str
    kind: str
    at: Any  # datetime, timezone-aware
    size: int | None = None
    tag: str | None = None
    flags: list[str] | None = None


@dataclass(frozen=True)
class ChangesPage:
    """What changed after a cursor, oldest first; ``cursor`` goes on after
    the last of them (or is the one asked, when nothing changed); ``more``
    when further changes are ready beyond the limit."""

    changes: list[Change]
    cursor: str
    more: bool


@dataclass(eq=False)  # each one is itself: kept in sets
class _Held:
    """A request waiting for a change of its user."""

    woken: bool = False
    gone: bool = False  # its client went away
    wake: Deferred[None] = field(default_factory=Deferred)

    def rouse(self) -> None:
        self.woken = True
        if not self.wake.called:
            self.wake.callback(None)

    def leave(self) -> None:
        self.gone = True
        self.rouse()


class ChangeFeed:
    """Reads changes from ``database`` (the primary); holds requests of at
    most ``held_per_user`` per user and ``held`` in all, in this process."""

    def __init__(
        self,
        reactor: Any,
        database: Database,
        held_per_user: int = settings.HELD_CHANGES_PER_USER,
        held: int = settings.HELD_CHANGES,
    ) -> None:
        self._reactor = reactor
        self._database = database
        self._held_per_user = held_per_user
        self._held_total = held
        self._held: dict[str, set[_Held]] = {}
        self._count = 0
        self._closing = False
        self._listener: Listener | None = None  # until start: held requests poll

    def start(self) -> Deferred[None]:
        """Listen for the changes' notifications."""
        self._listener = Listener(
            self._reactor,
            self._database.dsn,
            CHANNEL,
            self._changed,
            on_reset=self._deaf,
            # A request that read while deaf may have missed a change
            # committed before the LISTEN came back: it reads again.
            on_heard=self._rouse_all,
        )
        return self._listener.start()

    @property
    def held(self) -> int:
        """Requests held now."""
        return self._count

    def release(self) -> None:
        """Answer every held request now, and hold none from here on (the
        node is draining)."""
        self._closing = True
        self._rouse_all()

    def close(self) -> None:
        self.release()
        if self._listener is not None:
            self._listener.stop()

    async def read(
        self,
        user: str,
        since: str | None,
        namespace: str | None,
        limit: int,
        wait: float,
        abandoned: Deferred[Any] | None = None,
    ) -> ChangesPage:
        """The changes of ``user`` (in ``namespace`` only, unless None) after
        the cursor ``since`` (None: from the oldest kept), at most ``limit``;
        when there are none, held up to ``wait`` seconds for one to commit, or
        until ``abandoned`` fires (the client went away: a statement in flight
        is left to finish rather than cancelled). CursorExpired when ``since``
        is older than what is kept, TooManyHeld past the bounds."""
        user = names.user_name(user)
        params = {
            "user": user,
            "namespace": None if namespace is None else names.namespace_name(namespace),
            "since": 0 if since is None else Cursor.parse(since).number,
            "limit": limit,
            "cursor": None if since is None else Cursor.parse(since),
        }
        if wait <= 0 or self._closing:
            return await self._read(params)
        with self._holding(user) as held:
            if abandoned is not None:
                abandoned.addBoth(lambda _: held.leave())
            deadline = self._reactor.seconds() + wait
            while True:
                held.woken = False
                page = await self._read(params)
                left = deadline - self._reactor.seconds()
                if page.changes or left <= 0 or self._closing or held.gone:
                    return page
                if held.woken:
                    continue  # a change committed while reading: read again
                if self._listener is None or not self._listener.listening:
                    left = min(left, POLL_WHILE_DEAF)
                await self._sleep(held, left)

    async def _read(self, params: dict[str, Any]) -> ChangesPage:
        rows = await self._database.fetch("changes", params)
        first = rows[0]
        asked: Cursor | None = params["cursor"]
        if asked is not None and (
            asked.missed(first.purged_through) or asked.number > first.newest
        ):
            # Beyond the newest number: a cursor of a database this one is not
            # (restored from an older backup, say), whose next numbers the
            # client has passed already.
            raise CursorExpired(
                "the cursor is older than the changes kept (or from another database): "
                "list the blobs again, then follow the feed from a cursor without since"
            )
        found = [row for row in rows if row.blob_id is not None]
        shown = found[: params["limit"]]
        more = len(found) > len(shown)
        if more:
            number = shown[-1].last_change
        else:
            # Everything of the namespace is given: the cursor goes on past the
            # user's changes elsewhere too (committed, as every lower number of
            # the user), so the next read does not look at them again.
            number = max([params["since"], first.user_newest] + [r.last_change for r in shown])
        return ChangesPage(
            changes=[_change(row) for row in shown],
            cursor=str(Cursor(number, first.purged_through)),
            more=more,
        )

    @contextmanager
    def _holding(self, user: str) -> Iterator[_Held]:
        waiting = self._held.setdefault(user, set())
        if len(waiting) >= self._held_per_user or self._count >= self._held_total:
            if not waiting:
                del self._held[user]
            bound = (
                f"{self._held_per_user} per user"
                if len(waiting) >= self._held_per_user
                else f"{self._held_total} on this node"
            )
            raise TooManyHeld(f"too many feed requests held ({bound}): try again shortly")
        held = _Held()
        waiting.add(held)
        self._count += 1
        try:
            yield held
        finally:
            self._count -= 1
            waiting.discard(held)
            if not waiting:
                del self._held[user]

    async def _sleep(self, held: _Held, seconds: float) -> None:
        held.wake = Deferred()
        timer: IDelayedCall = self._reactor.callLater(seconds, held.wake.callback, None)
        try:
            await held.wake
        finally:
            if timer.active():
                timer.cancel()

    def _changed(self, user: str) -> None:
        for held in list(self._held.get(user, ())):
            held.rouse()

    def _deaf(self) -> None:
        """Notifications are lost until the LISTEN is back: every held
        request reads again, then polls."""
        self._rouse_all()

    def _rouse_all(self) -> None:
        for waiting in list(self._held.values()):
            for held in list(waiting):
                held.rouse()


def _change(row: Row) -> Change:
    if row.deleted:
        return Change(row.blob_id, row.namespace, "deleted", row.changed_at)
    if row.stored:
        return Change(
            row.blob_id, row.namespace, "stored", row.changed_at, row.size, row.tag, row.flags
        )
    return Change(row.blob_id, row.namespace, "flags", row.changed_at, flags=row.flags)
