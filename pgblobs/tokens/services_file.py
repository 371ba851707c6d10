"""Soledad's services tokens file (``/etc/soledad/services.tokens``): one
``service:token`` per line; ``#`` starts a comment line, blank lines are
ignored.

The file is read whole at start (a bad one stops serve before it serves) and
again on ``reload()`` (serve calls it on SIGHUP); a bad file on reload keeps
the tokens read before and logs why, so a typo never locks every MX out.
Only digests are kept, and every digest of the service is compared in
constant time, so timing tells nothing about which token matched.
"""

import hmac

from twisted.logger import Logger

from pgblobs import names
from pgblobs.errors import InvalidName
from pgblobs.tokens.stored import digest

_log = Logger()


class ServiceTokensFileInvalid(ValueError):
    """The services tokens file cannot be read, or a line of it is not
    ``service:token``. A ValueError, so the CLI says it in one line."""


def parse(text: str, path: str) -> dict[str, list[bytes]]:
    """service -> digests of its tokens, as the lines of ``text`` give them."""
    tokens: dict[str, list[bytes]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        service, colon, token = line.partition(":")
        try:
            service = names.service_name(service.strip())
        except InvalidName:
            raise ServiceTokensFileInvalid(
                f"{path}, line {number}: not 'service:token' (the service must be "
                "[A-Za-z0-9_-]{1,255})"
            ) from None
        if not colon or not token.strip():
            raise ServiceTokensFileInvalid(f"{path}, line {number}: no token after '{service}:'")
        tokens.setdefault(service, []).append(digest(token.strip()))
    return tokens


def read(path: str) -> dict[str, list[bytes]]:
    try:
        with open(path, encoding="utf-8") as opened:
            text = opened.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ServiceTokensFileInvalid(f"cannot read {path}: {error}") from None
    return parse(text, path)


class ServiceTokensFile:
    """``service_token_is_valid`` against the file at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tokens = read(path)

    def reload(self) -> None:
        try:
            self._tokens = read(self.path)
        except ServiceTokensFileInvalid as error:
            _log.error(
                "services tokens file not reloaded, the previous one still counts: {error}",
                error=error,
            )
            return
        _log.info("services tokens file reloaded from {path}", path=self.path)

    async def service_token_is_valid(self, service: str, token: str) -> bool:
        offered = digest(token)
        known = self._tokens.get(service, [])
        return any([hmac.compare_digest(offered, candidate) for candidate in known])
