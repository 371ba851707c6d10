"""Inbox claims: reserving a user's PENDING blobs (PROCESSING, under a lease),
and the loop that gives back those whose lease ended.

Both are one SQL function each (pgblobs.claim_blobs, pgblobs.expire_claims in
db/schema.sql), which take the user's lock before they touch a flag. The
leases live in the database, so any node may end any node's: every serving
node runs the loop, and a lease ends within a round of its time even while
the node that granted it is down.
"""

from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pgblobs import names, settings
from pgblobs.db.connector import Database

_log = Logger()


class Claims:
    """Claims on ``database``; the expiry loop runs on ``clock``'s time."""

    def __init__(self, database: Database, clock: IReactorTime) -> None:
        self._database = database
        self._loop = task.LoopingCall(lambda: defer.ensureDeferred(self.expire()))
        self._loop.clock = clock
        self._looping: Deferred[Any] | None = None  # fires once the loop has stopped

    async def claim(self, user: str, namespace: str, limit: int, lease: int) -> list[str]:
        params = {
            "user": names.user_name(user),
            "namespace": names.namespace_name(namespace),
            "limit": names.claim_limit(limit),
            "lease": names.lease_seconds(lease),
        }
        rows = await self._database.fetch("claim_blobs", params)
        return list(rows[0].blob_ids)

    async def expire(self, batch: int = settings.CLAIM_EXPIRY_BATCH) -> int:
        """One round: end up to ``batch`` leases whose time is up; how many
        blobs went back to PENDING. A failure (the database away, say) is
        logged, and the next round tries again."""
        try:
            rows = await self._database.fetch("expire_claims", {"batch": batch})
        except Exception as error:
            _log.warn("could not end the claims whose lease is up: {error}", error=error)
            return 0
        return int(rows[0].back)

    def start_expiring(self, every: float = settings.CLAIM_EXPIRY_EVERY) -> None:
        """Run a round now and every ``every`` seconds (a round never
        overlaps the one before), until ``stop_expiring``."""
        self._looping = self._loop.start(every, now=True)

    def stop_expiring(self) -> Deferred[Any]:
        """Stop the loop; fires once a round in flight is over."""
        if self._loop.running:
            self._loop.stop()
        return self._looping or defer.succeed(None)
