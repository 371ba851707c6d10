"""User tokens from a provider's CouchDB, checked as Soledad's server checks
them: the token's document is ``hex(sha512(token))`` in the database
``tokens_N`` (N = int(unix time / 30 days)), and it is valid when its
``type`` is ``Token`` and its ``user_id`` is the user of the path.

Every check asks CouchDB (a GET of one document, on the reactor, with a
timeout), so a document deleted or changed counts on every node at once.
While CouchDB does not answer, checks fail with TokenSourceUnavailable,
which the web layer answers 503 with Retry-After: never 401 for a token
that may well be valid, never 500.
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

    def __init__(self, reactor: Any, url: str, timeout: float = settings.COUCHDB_TIMEOUT) -> None:
        self._reactor = reactor
        self._base, self._headers = _split_credentials(url)
        self._timeout = timeout

    async def user_token_is_valid(self, user: str, token: str) -> bool:
        database = tokens_database(self._reactor.seconds())
        url = f"{self._base}/{database}/{quote(document_id(token))}"
        try:
            response = await treq.get(url, headers=self._headers, timeout=self._timeout)
            body = await treq.content(response)
        except Exception as error:  # refused, reset, timed out: no answer either way
            raise TokenSourceUnavailable(f"CouchDB did not answer: {error}") from None
        if response.code == 404:  # no such token (or no tokens database this period)
            return False
        if response.code != 200:
            raise TokenSourceUnavailable(f"CouchDB answered {response.code} for {database}")
        try:
            document = json.loads(body)
        except ValueError:
            raise TokenSourceUnavailable("CouchDB answered a document that is not JSON") from None
        owner = document.get("user_id") if isinstance(document, dict) else None
        return (
            document.get("type") == "Token"
            and isinstance(owner, str)
            and hmac.compare_digest(owner.encode("utf-8"), user.encode("utf-8"))
        )
