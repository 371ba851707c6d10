"""Access tokens of users and services, and quota overrides: the
administrative side of a user.

Tokens are random, shown once, and stored only as SHA-256 digests; checking
one compares digests in constant time.
"""
import hashlib
import hmac
import secrets

from pgblobs import names


def _digest(token):
    return hashlib.sha256(token.encode("utf-8")).digest()


def _matches(token, rows):
    """Whether ``token`` is one of the digests in ``rows``. Every digest is
    compared, so timing does not tell which matched."""
    offered = _digest(token)
    return any([hmac.compare_digest(offered, bytes(stored)) for (stored,) in rows])


class Accounts:
    """Token and quota operations over a :class:`pgblobs.database.Database`."""

    def __init__(self, database):
        self._db = database

    async def create_token(self, user):
        """A new token for ``user``; only its digest is kept."""
        params = {"user": names.user_name(user)}
        token = secrets.token_urlsafe(32)
        await self._db.fetch("add_token", dict(params, digest=_digest(token)))
        return token

    async def revoke_tokens(self, user):
        """Forget every token of ``user``; the number forgotten."""
        params = {"user": names.user_name(user)}
        rows = await self._db.fetch("revoke_tokens", params)
        return rows[0][0]

    async def token_is_valid(self, user, token):
        rows = await self._db.fetch("token_digests", {"user": names.user_name(user)})
        return _matches(token, rows)

    async def create_service_token(self, service):
        """A new token for a service (an MX, say); only its digest is kept."""
        token = secrets.token_urlsafe(32)
        await self._db.fetch("add_service_token", {"service": names.service_name(service),
                                                   "digest": _digest(token)})
        return token

    async def revoke_service_tokens(self, service):
        """Forget every token of ``service``; the number forgotten."""
        rows = await self._db.fetch("revoke_service_tokens",
                                    {"service": names.service_name(service)})
        return rows[0][0]

    async def service_token_is_valid(self, service, token):
        rows = await self._db.fetch("service_token_digests",
                                    {"service": names.service_name(service)})
        return _matches(token, rows)

    async def set_quota(self, user, quota_bytes):
        """Override the default quota of ``user``; None means unlimited."""
        if quota_bytes is not None and quota_bytes < 0:
            raise ValueError("a quota cannot be negative")
        await self._db.execute("set_quota", {"user": names.user_name(user),
                                           "quota_bytes": quota_bytes})

    async def clear_quota(self, user):
        await self._db.execute("clear_quota", {"user": names.user_name(user)})

    async def quota(self, user):
        """``(has_override, quota_bytes, used_bytes)`` for ``user``."""
        rows = await self._db.fetch("show_quota", {"user": names.user_name(user)})
        has_override, quota_bytes, used = rows[0]
        return has_override, quota_bytes, int(used)
