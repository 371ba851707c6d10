"""Where tokens come from, one module per source: ``stored`` (pgblobs' own
tables, remembered per node and forgotten on every change) and
``services_file`` (Soledad's services tokens file)."""

from collections.abc import Awaitable, Callable

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


__all__ = ["CHANNEL", "KnownTokens", "TokenCheck", "any_of", "digest"]
