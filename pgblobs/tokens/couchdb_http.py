"""CouchDB over Twisted's HTTP client: where it is, and readers of its
answers' bodies (a whole small one; a continuous ``_changes`` feed)."""

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

_log = Logger()


@dataclass(frozen=True)
class CouchDBAddress:
    """Where the CouchDB is (``base``, without credentials) and the Basic
    ``authorization`` its URL's credentials make, if any."""

    base: str
    authorization: bytes | None

    @classmethod
    def parse(cls, url: str) -> "CouchDBAddress":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The URL may carry a password: the message must not.
            raise ValueError("not an http(s) URL with a host")
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = b"Basic " + base64.b64encode(pair.encode("utf-8"))
        return cls(base, authorization)

    def url(self, *path: str, query: str = "") -> bytes:
        return ("/".join([self.base, *path]) + (f"?{query}" if query else "")).encode("ascii")

    def headers(self) -> Headers:
        headers = Headers({b"accept": [b"application/json"]})
        if self.authorization is not None:
            headers.addRawHeader(b"authorization", self.authorization)
        return headers


class BodyReader(Protocol):
    """A response body's protocol, which may drop its connection."""

    def cut(self) -> None:
        # Agent gives a body's protocol a producer as its transport.
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


# A token document is a few hundred bytes; a longer answer or feed line is
# not CouchDB's, and is cut rather than held in memory.
LONGEST = 64 * 1024


class AnswerTooLong(Exception):
    """CouchDB's answer (or one line of its feed) is past LONGEST."""


class Body(BodyReader):
    """A whole (small) response body: ``done`` fires with its bytes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._length = 0
        # Cancelled (a timeout): drop the connection, not only the wait.
        self.done: Deferred[bytes] = Deferred(lambda _: self.cut())

    def dataReceived(self, data: bytes) -> None:
        self._length += len(data)
        if self._length > LONGEST:
            if not self.done.called:
                self.done.errback(AnswerTooLong(f"an answer past {LONGEST} bytes"))
            self.cut()
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if self.done.called:  # cancelled by a timeout, or cut for its length
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


class ChangesLines(BodyReader):
    """The body of a continuous ``_changes`` feed: one JSON object a line,
    empty lines for heartbeats. ``done`` fires when the body ends."""

    def __init__(self, changed: Callable[[str], None], clock: Any) -> None:
        self._changed = changed
        self._clock = clock
        self._pending = b""
        self.last_heard = clock.seconds()
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.last_heard = self._clock.seconds()
        *lines, self._pending = (self._pending + data).split(b"\n")
        if len(self._pending) > LONGEST:
            _log.warn("a _changes feed line past {longest} bytes", longest=LONGEST)
            self.cut()
            return
        for line in lines:
            if not line.strip():
                continue
            try:
                changed_id = json.loads(line).get("id")
            except (ValueError, AttributeError, RecursionError):
                _log.warn("not a change in the _changes feed: {line!r}", line=line[:200])
                self.cut()  # followed again, everything remembered forgotten
                return
            if isinstance(changed_id, str):
                self._changed(changed_id)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.done.callback(None)
