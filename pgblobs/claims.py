"""Inbox claims: reserving a user's PENDING blobs (PROCESSING, under a lease),
and the loop that gives back those whose lease ended.

Both are one SQL function each (pgblobs.claim_blobs, pgblobs.expire_claims in
db/schema.sql), which take the user's lock before they touch a flag. The
leases live in the database, so any node may end any node's: every serving
node runs the loop, and a lease ends within a round of its time even while
the node that granted it is down.
"""

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from pgblobs import names, settings
from pgblobs.db.connector import Database
from pgblobs.db.sweeps import Sweep


class Claims:
    """Claims on ``database``; the expiry loop runs on ``clock``'s time."""

    def __init__(self, database: Database, clock: IReactorTime) -> None:
        self._database = database
        self._expiry = Sweep(
            database,
            clock,
            "expire_claims",
            {"batch": settings.CLAIM_EXPIRY_BATCH},
            "back",
            "end the claims whose lease is up",
        )

    async def claim(self, user: str, namespace: str, limit: int, lease: int) -> list[str]:
        params = {
            "user": names.user_name(user),
            "namespace": names.namespace_name(namespace),
            "limit": names.claim_limit(limit),
            "lease": names.lease_seconds(lease),
        }
        rows = await self._database.fetch("claim_blobs", params)
        return list(rows[0].blob_ids)

    async def expire(self) -> int:
        """One round: end up to settings.CLAIM_EXPIRY_BATCH leases whose time
        is up; how many blobs went back to PENDING."""
        return await self._expiry.round()

    def start_expiring(self, every: float = settings.CLAIM_EXPIRY_EVERY) -> None:
        """Run a round now and every ``every`` seconds, until ``stop_expiring``."""
        self._expiry.start(every)

    def stop_expiring(self) -> Deferred[object]:
        """Stop the loop; fires once a round in flight is over."""
        return self._expiry.stop()
