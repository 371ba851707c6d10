"""Where tokens are checked: one module per source.

- ``stored``: pgblobs' own tables (``pgblobs token`` and ``pgblobs
  service-token``), remembered per node and forgotten on NOTIFY.
- ``couchdb``: the users' tokens a LEAP provider's web application keeps in
  CouchDB, checked as Soledad's server checks them (``--user-tokens couchdb:URL``);
  ``couchdb_http``: its address, and readers of its answers.
- ``services_file``: Soledad's services tokens file (``--services-tokens-file``).

``serve`` picks a ``UserTokenSource`` without knowing its insides.
"""

from typing import Any, Protocol

from twisted.internet.defer import Deferred

from pgblobs.tokens import couchdb
from pgblobs.tokens.stored import CHANNEL, KnownTokens, digest

__all__ = ["CHANNEL", "KnownTokens", "UserTokenSource", "digest", "user_token_source"]


class UserTokenSource(Protocol):
    """What the public site checks users' tokens with."""

    def start(self) -> Deferred[None]:
        """Begin following the source's changes; fires once it may answer."""

    def stop(self) -> None:
        """Stop following, and forget what was remembered."""

    async def user_token_is_valid(self, user: str, token: str) -> bool:
        """Whether ``token`` is one of ``user``'s; raises a named error
        (errors.DatabaseUnavailable, errors.TokenStoreUnavailable) when the
        source cannot say now."""


def user_token_source(
    reactor: Any, source: str, stored: KnownTokens, cache_seconds: float
) -> UserTokenSource:
    """The source ``--user-tokens`` names: ``stored`` for "pgblobs", or the
    provider's CouchDB (where pgblobs' own table is not consulted)."""
    if source.startswith(couchdb.PREFIX):
        return couchdb.CouchDBTokens.from_source(reactor, source, cache_seconds)
    return stored
