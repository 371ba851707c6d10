"""Where tokens come from, one module per source: ``stored`` (pgblobs' own
tables, remembered per node and forgotten on every change), ``couchdb`` (a
provider's CouchDB, as Soledad's server reads it) and ``services_file``
(Soledad's services tokens file)."""

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from pgblobs.tokens.couchdb import CouchDBTokens
from pgblobs.tokens.stored import CHANNEL, KnownTokens, digest

# ``is_valid(name, token)``: whether the token is one of the name's.
TokenCheck = Callable[[str, str], Awaitable[bool]]


def any_of(*checks: TokenCheck) -> TokenCheck:
    """A token valid by any of ``checks``, asked in order (so a cheap source,
    such as a file, first spares a database statement)."""

    async def is_valid(name: str, token: str) -> bool:
        for check in checks:
            if await check(name, token):
                return True
        return False

    return is_valid


COUCHDB_PREFIX = "couchdb:"


def user_tokens_source(text: str) -> str:
    """``text`` if it names a source of user tokens: ``pgblobs`` or
    ``couchdb:URL`` (an http or https URL); ValueError otherwise."""
    if text == "pgblobs":
        return text
    if text.startswith(COUCHDB_PREFIX):
        url = urlsplit(text[len(COUCHDB_PREFIX) :])
        if url.scheme in ("http", "https") and url.hostname:
            return text
    raise ValueError(
        f"{text!r}: 'pgblobs' (its own tokens) or 'couchdb:URL', e.g. "
        "couchdb:http://user:password@127.0.0.1:5984"
    )


def user_token_check(
    reactor: Any, source: str, stored: KnownTokens, cache_seconds: float
) -> TokenCheck:
    """The check of user tokens ``source`` (see user_tokens_source) names,
    started (and stopped when the reactor stops); with CouchDB, pgblobs' own
    table is not asked."""
    if not source.startswith(COUCHDB_PREFIX):
        return stored.user_token_is_valid
    couchdb = CouchDBTokens(reactor, source[len(COUCHDB_PREFIX) :], cache_seconds)
    couchdb.start()
    reactor.addSystemEventTrigger("before", "shutdown", couchdb.stop)
    return couchdb.user_token_is_valid


__all__ = [
    "CHANNEL",
    "KnownTokens",
    "TokenCheck",
    "any_of",
    "digest",
    "user_token_check",
    "user_tokens_source",
]
