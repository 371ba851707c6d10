"""Access tokens of users and services, and quota overrides: the
administrative side of a user.

Tokens are random, shown once, and stored only as SHA-256 digests (checking
them is tokens.py's, on the server). The administration is synchronous, on a
``SyncConnection``: the CLI, and ``serve``'s development tokens at start.
"""

import secrets

from pgblobs import names
from pgblobs.db.sync import SyncConnection
from pgblobs.tokens import digest


def create_token(connection: SyncConnection, user: str) -> str:
    """A new token for ``user``; only its digest is kept."""
    token = secrets.token_urlsafe(32)
    connection.fetch("add_token", {"user": names.user_name(user), "digest": digest(token)})
    return token


def revoke_tokens(connection: SyncConnection, user: str) -> int:
    """Forget every token of ``user``; the number forgotten."""
    return connection.fetch("revoke_tokens", {"user": names.user_name(user)})[0].revoked


def create_service_token(connection: SyncConnection, service: str) -> str:
    """A new token for a service (an MX, say); only its digest is kept."""
    token = secrets.token_urlsafe(32)
    connection.fetch(
        "add_service_token", {"service": names.service_name(service), "digest": digest(token)}
    )
    return token


def revoke_service_tokens(connection: SyncConnection, service: str) -> int:
    """Forget every token of ``service``; the number forgotten."""
    rows = connection.fetch("revoke_service_tokens", {"service": names.service_name(service)})
    return int(rows[0].revoked)


def set_quota(connection: SyncConnection, user: str, quota_bytes: int | None) -> None:
    """Override the default quota of ``user``; None means unlimited."""
    if quota_bytes is not None and quota_bytes < 0:
        raise ValueError("a quota cannot be negative")
    connection.execute("set_quota", {"user": names.user_name(user), "quota_bytes": quota_bytes})


def clear_quota(connection: SyncConnection, user: str) -> None:
    connection.execute("clear_quota", {"user": names.user_name(user)})


def quota(connection: SyncConnection, user: str) -> tuple[bool, int | None, int]:
    """``(has_override, quota_bytes, used_bytes)`` for ``user``."""
    row = connection.fetch("show_quota", {"user": names.user_name(user)})[0]
    return row.has_override, row.quota_bytes, int(row.used_bytes)
