"""User tokens from a provider's CouchDB, checked as Soledad's server checks
them: the token's document is ``hex(sha512(token))`` in the database
``tokens_N`` (N = int(unix time / 30 days)), and it is valid when its
``type`` is ``Token`` and its ``user_id`` is the user of the path.

A check asks CouchDB (a GET of one document, on the reactor, with a
timeout), and a valid answer is remembered for ``cache_seconds`` — but only
while the node follows the database's ``_changes`` feed (changes.py), which
forgets every document touched as soon as CouchDB reports it: a deleted or
changed token stops working on every node within the feed's delivery. While
the feed is not followed nothing new is remembered, so a change the node
could not hear is never served from memory past ``cache_seconds``. While
CouchDB does not answer, tokens remembered keep working for their remaining
time, and other checks fail with TokenSourceUnavailable, which the web
layer answers 503 with Retry-After: never 401 for a token that may well be
valid, never 500.
"""

import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import treq
from twisted.web.http_headers import Headers

from pgblobs import settings
from pgblobs.errors import TokenSourceUnavailable
from pgblobs.tokens.changes import ChangesFeed

PERIOD_SECONDS = 30 * 24 * 3600  # Soledad's server starts a new tokens database every 30 days


def tokens_database(now: float) -> str:
    return f"tokens_{int(now / PERIOD_SECONDS)}"


def document_id(token: str) -> str:
    return hashlib.sha512(token.encode("utf-8")).hexdigest()


def _split_credentials(url: str) -> tuple[str, Headers]:
    """The URL without its ``user:password@``, and the header that sends them."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    if parts.username is None:
        return base, Headers()
    pair = f"{parts.username}:{parts.password or ''}".encode()
    return base, Headers({b"Authorization": [b"Basic " + base64.b64encode(pair)]})


class CouchDBTokens:
    """``user_token_is_valid`` against the CouchDB at ``url`` (which may
    carry ``user:password@``)."""

    def __init__(
        self,
        reactor: Any,
        url: str,
        cache_seconds: float = settings.TOKEN_CACHE_SECONDS,
        timeout: float = settings.COUCHDB_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._base, self._headers = _split_credentials(url)
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        # document id -> (its user_id, when CouchDB said so), for valid tokens only.
        self._remembered: dict[str, tuple[str, float]] = {}
        # Bumped by every change heard, so an answer read before a change
        # is not remembered after it.
        self._changes = 0
        self._feed = ChangesFeed(reactor, self._base, self._headers, self._database, self._touched)

    def start(self) -> None:
        self._feed.start()

    def stop(self) -> None:
        self._feed.stop()

    def _database(self) -> str:
        return tokens_database(self._reactor.seconds())

    def _touched(self, document: str) -> None:
        self._changes += 1
        self._remembered.pop(document, None)

    async def user_token_is_valid(self, user: str, token: str) -> bool:
        document_name = document_id(token)
        remembered = self._remembered.get(document_name)
        now = self._reactor.seconds()
        if remembered is not None and now - remembered[1] < self._cache_seconds:
            return _same(remembered[0], user)
        following, changes = self._feed.following, self._changes
        owner = await self._ask(document_name)
        if owner is None:
            self._remembered.pop(document_name, None)
            return False
        if following and self._feed.following and changes == self._changes:
            self._remembered[document_name] = (owner, now)
        return _same(owner, user)

    async def _ask(self, document_name: str) -> str | None:
        """The user whose token ``document_name`` is, or None if it is none."""
        database = self._database()
        url = f"{self._base}/{database}/{quote(document_name)}"
        try:
            response = await treq.get(url, headers=self._headers, timeout=self._timeout)
            body = await treq.content(response)
        except Exception as error:  # refused, reset, timed out: no answer either way
            raise TokenSourceUnavailable(f"CouchDB did not answer: {error}") from None
        if response.code == 404:  # no such token (or no tokens database this period)
            return None
        if response.code != 200:
            raise TokenSourceUnavailable(f"CouchDB answered {response.code} for {database}")
        try:
            document = json.loads(body)
        except ValueError:
            raise TokenSourceUnavailable("CouchDB answered a document that is not JSON") from None
        if not isinstance(document, dict) or document.get("type") != "Token":
            return None
        owner = document.get("user_id")
        return owner if isinstance(owner, str) else None


def _same(owner: str, user: str) -> bool:
    return hmac.compare_digest(owner.encode("utf-8"), user.encode("utf-8"))
