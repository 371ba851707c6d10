"""Token authentication through twisted.cred.

Soledad clients send ``Authorization: Token base64("user:token")``.
``TokenCredentialFactory`` decodes that header into credentials,
``TokenChecker`` checks them against stored digests (constant-time, see
tokens.py): users' tokens on the public site, services' tokens on the
services site, so neither kind opens the other site. The realm's avatar is
simply the name. ``Authenticator`` ties them together for the resources,
which then require that the avatar is the ``{user}`` of the path.
"""

import binascii
from base64 import b64decode
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.web.iweb import ICredentialFactory, IRequest
from zope.interface import Interface, implementer

from pgblobs.errors import InvalidName
from pgblobs.web.status import Forbidden, Unauthorized

# ``is_valid(name, token)``: whether the token is one of the name's (a
# coroutine function, such as tokens.KnownTokens.user_token_is_valid).
TokenCheck = Callable[[str, str], Awaitable[bool]]


class IBlobsUser(Interface):
    """The avatar of an authenticated request: the user's name."""


@implementer(ICredentialFactory)
class TokenCredentialFactory:
    scheme = b"token"

    def getChallenge(self, request: IRequest) -> dict[str, str]:
        return {}

    def decode(self, response: bytes, request: IRequest) -> credentials.UsernamePassword:
        try:
            user, token = b64decode(response, validate=True).decode("utf-8").split(":", 1)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise error.LoginFailed("malformed Token credentials") from None
        # Twisted's annotation says bytes; the checker and realm here work in text.
        return credentials.UsernamePassword(user, token)  # type: ignore[arg-type]


@implementer(ICredentialsChecker)
class TokenChecker:
    """Checks credentials with ``is_valid(name, token)``, a coroutine function."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, is_valid: TokenCheck) -> None:
        self._is_valid = is_valid

    async def _check(self, offered: Any) -> str:
        try:
            valid = await self._is_valid(offered.username, offered.password)
        except InvalidName:
            valid = False
        if not valid:
            raise error.UnauthorizedLogin("invalid token")
        return offered.username

    # Twisted's annotations say avatar ids are bytes; here they are names, text.
    def requestAvatarId(self, offered: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(self._check(offered))


@implementer(portal.IRealm)
class _UserRealm:
    def requestAvatar(
        self, avatar_id: Any, mind: object, *interfaces: Any
    ) -> tuple[Any, Any, Callable[[], None]]:
        if IBlobsUser not in interfaces:
            raise NotImplementedError("pgblobs avatars are users")
        return IBlobsUser, avatar_id, lambda: None


class Authenticator:
    """Who a request is, as far as its Token header and ``is_valid(name,
    token)`` show (a tokens.KnownTokens' ``user_token_is_valid`` or
    ``service_token_is_valid``)."""

    def __init__(self, is_valid: TokenCheck) -> None:
        self._portal = portal.Portal(_UserRealm(), [TokenChecker(is_valid)])
        self._factory = TokenCredentialFactory()

    async def user_of(self, request: IRequest) -> str:
        header = request.getHeader(b"authorization") or b""
        scheme, _, response = header.partition(b" ")
        if scheme.lower() != self._factory.scheme:
            raise Unauthorized("a Token authorization is required")
        try:
            offered = self._factory.decode(response.strip(), request)
            _, user, _ = await self._portal.login(offered, None, IBlobsUser)
        except (error.LoginFailed, error.UnauthorizedLogin):
            raise Unauthorized("the token is not valid") from None
        return str(user)  # the realm's avatar: the name the checker confirmed

    async def require(self, request: IRequest, user: str) -> None:
        """Fail unless the request carries a valid token for ``user``."""
        if await self.user_of(request) != user:
            raise Forbidden("this token is for another user")
