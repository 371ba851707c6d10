"""What a site says to a connection past its ``max_connections``.

Such a connection is accepted, answered one 503 and closed, whatever it sends:
the client knows at once (and when to try again) instead of waiting in the
kernel's backlog, and it holds a descriptor only until that answer is written.
"""

import time
from collections.abc import Callable

from twisted.internet import protocol
from twisted.logger import Logger

_log = Logger()
_REASON = b"too many connections to this node; try again later\n"
_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_REASON)).encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n" + _REASON
)
# A flood is one line in the log per this many seconds, not one per connection.
_LOG_EVERY = 10.0


class Refused(protocol.Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None  # set by makeConnection
        self.transport.write(_ANSWER)
        self.transport.loseConnection()


class Refusals:
    """Counts the connections one site refused, and says so in the log, a
    line at most every ``_LOG_EVERY`` seconds of ``now()`` (a test's clock)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._unreported = 0
        self._reported_at = -_LOG_EVERY

    def refuse(self, open_connections: int) -> Refused:
        self._unreported += 1
        now = self._now()
        if now - self._reported_at >= _LOG_EVERY:
            _log.warn(
                "refused {count} new connections: {open} are open, the most allowed "
                "(--max-connections)",
                count=self._unreported,
                open=open_connections,
            )
            self._unreported, self._reported_at = 0, now
        return Refused()
