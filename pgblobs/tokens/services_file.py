"""Services' tokens from Soledad's own file (``/etc/soledad/services.tokens``):
one ``service:token`` a line; blank lines and lines starting with ``#`` are
ignored. A service may have several lines (several tokens, e.g. while one
replaces another).

The file is read at start (a bad file is an error before serving) and
again on SIGHUP; a bad file then keeps the tokens read before, and says why.
Only the tokens' SHA-256 digests are kept, compared in constant time.
"""

import hmac
from collections.abc import Awaitable, Callable

from twisted.logger import Logger

from pgblobs import names
from pgblobs.errors import InvalidName, ServicesTokensFileInvalid
from pgblobs.tokens.stored import digest

_log = Logger()


def read(path: str) -> dict[str, list[bytes]]:
    """Each service's token digests in the file at ``path``."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ServicesTokensFileInvalid(f"{path}: {error}") from None
    tokens: dict[str, list[bytes]] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        service, colon, token = line.partition(":")
        if not colon or not token:
            raise ServicesTokensFileInvalid(f"{path}, line {number}: not service:token")
        try:
            names.service_name(service)
        except InvalidName as error:
            raise ServicesTokensFileInvalid(f"{path}, line {number}: {error}") from None
        tokens.setdefault(service, []).append(digest(token))
    return tokens


class ServicesTokensFile:
    """The tokens of one services tokens file, as last read well."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tokens = read(path)

    def reload(self) -> None:
        try:
            self._tokens = read(self.path)
        except ServicesTokensFileInvalid as error:
            _log.error("kept the services tokens read before: {error}", error=error)
            return
        _log.info("re-read {path}", path=self.path)

    def is_valid(self, service: str, token: str) -> bool:
        offered = digest(token)
        # Every digest of the service is compared, so timing tells none apart.
        known = self._tokens.get(service, [])
        return any([hmac.compare_digest(offered, candidate) for candidate in known])


def either(
    tokens_file: ServicesTokensFile, stored: Callable[[str, str], Awaitable[bool]]
) -> Callable[[str, str], Awaitable[bool]]:
    """A service token check: in the file, or else in pgblobs' table (``stored``)."""

    async def is_valid(service: str, token: str) -> bool:
        return tokens_file.is_valid(service, token) or await stored(service, token)

    return is_valid
