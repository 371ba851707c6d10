"""Checking tokens: each node remembers the tokens it has seen valid, and
forgets them the moment PostgreSQL says they changed.

Asking the database on every request would double the statements of a small
GET. Revision 0008's triggers notify the channel ``pgblobs_tokens`` of every
change to a user's or a service's tokens, at the commit that makes it, and
every node listens: a revoked token is refused everywhere within the
notification's delivery (milliseconds). While a node's listening connection
is down, or found stuck by its liveness check (db/notifications.py), it
remembers nothing and asks the database every time, so a change it could not
hear is never missed. Whatever happens, a token is remembered at most
``cache_seconds`` after the database last confirmed it. Refusals are never
remembered: a token created on another node works at once.
"""

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from pgblobs import names, settings
from pgblobs.db.connector import Database
from pgblobs.db.notifications import Listener
from pgblobs.db.queries import Row
from pgblobs.errors import DatabaseUnavailable

CHANNEL = "pgblobs_tokens"


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _matches(offered: bytes, rows: list[Row]) -> bool:
    """Whether the digest ``offered`` is among ``rows``. Every digest is
    compared, so timing does not tell which matched."""
    return any([hmac.compare_digest(offered, bytes(row.token_sha256)) for row in rows])


class KnownTokens:
    """``user_token_is_valid`` and ``service_token_is_valid`` for one node.

    Tokens are read from the primary (``database``), so a revocation counts
    at once; only while the primary cannot be reached does ``fallback()``
    (a replica, when there is one) answer, and only within
    ``--replica-max-lag`` of the last heartbeat it replayed (db/replicas.py),
    so a revocation made before the primary went down still counts.
    """

    def __init__(
        self,
        database: Database,
        fallback: Callable[[], Database] | None = None,
        cache_seconds: float = settings.TOKEN_CACHE_SECONDS,
    ) -> None:
        self._database = database
        self._fallback = fallback
        self._clock = database.reactor
        self._cache_seconds = cache_seconds
        # (kind, name) -> {digest seen valid: when the database said so};
        # kinds as the triggers name them.
        self._valid: dict[tuple[str, str], dict[bytes, float]] = {}
        # Bumped by every change heard, so an answer read before a change
        # is not remembered after it.
        self._changes = 0
        self._listener = Listener(
            database.reactor, database.dsn, CHANNEL, self._changed, self._forget_all
        )

    def start(self) -> Deferred[None]:
        return self._listener.start()

    def stop(self) -> None:
        self._listener.stop()
        self._forget_all()

    def _changed(self, payload: str) -> None:
        kind, _, name = payload.partition(":")
        self._changes += 1
        self._valid.pop((kind, name), None)

    def _forget_all(self) -> None:
        self._changes += 1
        self._valid.clear()

    async def user_token_is_valid(self, user: str, token: str) -> bool:
        return await self._check("user", names.user_name(user), token, "token_digests")

    async def service_token_is_valid(self, service: str, token: str) -> bool:
        return await self._check(
            "service", names.service_name(service), token, "service_token_digests"
        )

    async def _check(self, kind: str, name: str, token: str, statement: str) -> bool:
        offered = digest(token)
        # Looking up a SHA-256 digest tells a timing observer nothing about
        # the stored tokens.
        confirmed = self._valid.get((kind, name), {}).get(offered)
        if (
            confirmed is not None
            and self._listener.listening
            and self._clock.seconds() - confirmed < self._cache_seconds
        ):
            return True
        changes, asked = self._changes, self._clock.seconds()
        params: dict[str, Any] = {kind: name}
        try:
            rows = await self._database.fetch(statement, params)
        except DatabaseUnavailable:
            reader = None if self._fallback is None else self._fallback()
            if reader is None or reader is self._database:
                raise
            rows = await reader.fetch(statement, params)
        valid = _matches(offered, rows)
        if not valid:
            self._valid.get((kind, name), {}).pop(offered, None)
        elif self._listener.listening and changes == self._changes:
            self._valid.setdefault((kind, name), {})[offered] = asked
        return valid
