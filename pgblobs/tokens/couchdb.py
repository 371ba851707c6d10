"""Users' tokens from a LEAP provider's CouchDB, checked as Soledad's server
checks them (leap.soledad.server.auth): the provider's web application
writes a session token into the database ``tokens_N``, N = int(unix time /
2,592,000) (a new database every 30 days), as the document whose ``_id`` is
the token's hex SHA-512, with ``type`` "Token" and ``user_id`` its user.

A node remembers a valid answer for ``cache_seconds`` and follows the
current database's ``_changes`` feed (continuous, with heartbeats): a
document changed or deleted there (a logout, a revocation) is forgotten the
moment the feed says so. The feed is followed again after it ends, falls
silent, or the period turns (the next database), backing off while CouchDB
cannot be reached. While it is not followed nothing new is remembered, and
each time it is followed again everything remembered is forgotten, since
changes made in between were not heard; so a change is never missed beyond
``cache_seconds``.

While CouchDB cannot be reached, tokens remembered keep working for the
rest of their time and any other gets errors.TokenStoreUnavailable (503).
"""

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IResponse

from pgblobs import names, settings
from pgblobs.errors import TokenStoreUnavailable
from pgblobs.tokens.couchdb_http import Body, ChangesLines, CouchDBAddress

PREFIX = "couchdb:"
PERIOD_SECONDS = 2_592_000  # 30 days: the tokens database changes name this often
_log = Logger()


def database_name(now: float) -> str:
    """The tokens database Soledad's server reads at ``now`` (unix time)."""
    return f"tokens_{int(now / PERIOD_SECONDS)}"


def document_id(token: str) -> str:
    return hashlib.sha512(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Remembered:
    database: str
    user_id: bytes
    confirmed: float


class CouchDBTokens:
    """``user_token_is_valid`` against the provider's CouchDB, for one node."""

    def __init__(
        self,
        reactor: Any,
        address: CouchDBAddress,
        cache_seconds: float = settings.TOKEN_CACHE_SECONDS,
        now: Callable[[], float] | None = None,
    ) -> None:
        self._reactor = reactor
        self._address = address
        self._cache_seconds = cache_seconds
        # Wall-clock time: it names the database, as it does for Soledad.
        self._now = now or reactor.seconds
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = settings.COUCHDB_LOOKUPS
        self._lookups = defer.DeferredSemaphore(settings.COUCHDB_LOOKUPS)
        self._agent = Agent(reactor, connectTimeout=settings.COUCHDB_TIMEOUT, pool=self._pool)
        self._remembered: dict[str, _Remembered] = {}
        # The database whose feed is followed now, or None.
        self._following: str | None = None
        # Bumped whenever everything may have changed unheard, and the ids
        # changed while a lookup of theirs was in flight (with how many are):
        # an answer read before a change is not remembered after it.
        self._epoch = 0
        self._asking: dict[str, int] = {}
        self._touched: set[str] = set()
        self._running = False
        self._feed: ChangesLines | None = None
        self._follower: Deferred[None] | None = None
        self._waiting: Deferred[None] | None = None

    @classmethod
    def from_source(cls, reactor: Any, source: str, cache_seconds: float) -> "CouchDBTokens":
        """For ``--user-tokens couchdb:URL``."""
        return cls(reactor, CouchDBAddress.parse(source.removeprefix(PREFIX)), cache_seconds)

    @property
    def following(self) -> str | None:
        return self._following

    def start(self) -> Deferred[None]:
        """Start following the feed; fires after the first attempt, which may
        fail (CouchDB down): the node serves anyway, and keeps trying."""
        self._running = True
        first: Deferred[None] = Deferred()
        self._follower = defer.ensureDeferred(self._follow(first))
        self._follower.addErrback(lambda failure: _log.failure("the feed stopped", failure))
        return first

    def stop(self) -> None:
        self._running = False
        if self._feed is not None:
            self._feed.cut()
        if self._waiting is not None and not self._waiting.called:
            self._waiting.cancel()
        self._forget_all()
        self._pool.closeCachedConnections()

    def _forget_all(self) -> None:
        self._epoch += 1
        self._remembered.clear()

    def _changed(self, changed_id: str) -> None:
        self._remembered.pop(changed_id, None)
        if changed_id in self._asking:
            self._touched.add(changed_id)

    async def user_token_is_valid(self, user: str, token: str) -> bool:
        user_id = names.user_name(user).encode("utf-8")
        key = document_id(token)
        database, asked = database_name(self._now()), self._reactor.seconds()
        remembered = self._remembered.get(key)
        if (
            remembered is not None
            and remembered.database == database
            and asked - remembered.confirmed < self._cache_seconds
        ):
            return hmac.compare_digest(remembered.user_id, user_id)
        epoch = self._epoch
        self._asking[key] = self._asking.get(key, 0) + 1
        try:
            if len(self._lookups.waiting) >= settings.COUCHDB_LOOKUPS_WAITING:
                raise TokenStoreUnavailable("too many token lookups waiting for CouchDB")
            owner = await self._lookups.run(
                lambda: defer.ensureDeferred(self._owner(database, key))
            )
        finally:
            touched = key in self._touched
            self._asking[key] -= 1
            if not self._asking[key]:
                del self._asking[key]
                self._touched.discard(key)
        if owner is None:
            self._remembered.pop(key, None)
            return False
        if self._following == database and epoch == self._epoch and not touched:
            self._remembered[key] = _Remembered(database, owner, asked)
        return hmac.compare_digest(owner, user_id)

    async def _owner(self, database: str, key: str) -> bytes | None:
        """The user whose token has the document ``key``, or None if no
        valid token has it."""
        try:
            request = self._agent.request(
                b"GET", self._address.url(database, key), self._address.headers()
            )
            request.addTimeout(settings.COUCHDB_TIMEOUT, self._reactor)
            response = await request
            body = Body()
            response.deliverBody(body)
            content = await body.done.addTimeout(settings.COUCHDB_TIMEOUT, self._reactor)
        except Exception as error:
            raise TokenStoreUnavailable(f"the provider's CouchDB did not answer: {error}") from None
        if response.code == 404:  # no such token, or no database for this period yet
            return None
        if response.code != 200:
            _log.warn(
                "the provider's CouchDB answered a token lookup with {code}", code=response.code
            )
            raise TokenStoreUnavailable(f"the provider's CouchDB answered {response.code}")
        try:
            document = json.loads(content)
            user_id, kind = document.get("user_id"), document.get("type")
        except (ValueError, AttributeError, RecursionError):
            raise TokenStoreUnavailable("the provider's CouchDB answered no JSON object") from None
        if kind != "Token" or not isinstance(user_id, str):
            return None
        try:
            return user_id.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no user's name
            return None

    async def _follow(self, first: Deferred[None]) -> None:
        """Follow the current database's feed until stopped, again and again."""
        delay = 0.0
        while self._running:
            if delay:
                self._waiting = task.deferLater(self._reactor, delay, lambda: None)
                try:
                    await self._waiting
                except defer.CancelledError:
                    break
            database = database_name(self._now())
            try:
                response = await self._open_feed(database)
            except Exception as error:
                _log.warn(
                    "cannot follow {database}'s changes on the provider's CouchDB ({error}); "
                    "retrying",
                    database=database,
                    error=error,
                )
                delay = min(max(delay * 2, 0.25), settings.COUCHDB_RETRY_MAX)
                if not first.called:
                    first.callback(None)
                continue
            delay = 0.0
            await self._read_feed(database, response, first)

    async def _open_feed(self, database: str) -> IResponse:
        query = f"feed=continuous&since=now&heartbeat={int(settings.COUCHDB_HEARTBEAT * 1000)}"
        request = self._agent.request(
            b"GET", self._address.url(database, "_changes", query=query), self._address.headers()
        )
        request.addTimeout(settings.COUCHDB_TIMEOUT, self._reactor)
        response = await request
        if response.code != 200:
            response.deliverBody(Protocol())  # read and dropped
            raise TokenStoreUnavailable(f"its _changes feed answered {response.code}")
        return response

    async def _read_feed(self, database: str, response: IResponse, first: Deferred[None]) -> None:
        """Remember answers while the feed is read: until it ends, falls
        silent for three heartbeats, or the period turns."""
        feed = ChangesLines(self._changed, self._reactor)

        def check() -> None:
            silent = self._reactor.seconds() - feed.last_heard
            if silent > 3 * settings.COUCHDB_HEARTBEAT or database_name(self._now()) != database:
                feed.cut()

        self._feed = feed
        response.deliverBody(feed)
        if not self._running:  # stopped while the feed was being opened
            feed.cut()
        self._forget_all()  # what changed before the feed began was not heard
        self._following = database
        _log.info("following {database}'s changes on the provider's CouchDB", database=database)
        if not first.called:
            first.callback(None)
        watchdog = task.LoopingCall(check)
        watchdog.clock = self._reactor
        watchdog.start(settings.COUCHDB_HEARTBEAT / 2, now=False)
        try:
            await feed.done
        finally:
            watchdog.stop()
            self._following = None
            self._feed = None
        if self._running:
            _log.warn("stopped following {database}'s changes; following again", database=database)
