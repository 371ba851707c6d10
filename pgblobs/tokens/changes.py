"""Following a CouchDB database's ``_changes`` feed (feed=continuous,
since=now, with heartbeats), to hear every document touched.

``database()`` names the database to follow at each moment: when the name
it gives changes (Soledad's tokens databases rotate every 30 days) the feed
is dropped and the new database followed. A feed that ends, fails or falls
silent (no heartbeat for a few beats) is followed again after a backoff
(0.1 s doubling to 5 s). ``following`` says whether every change since
``since_following`` is being heard: the caller remembers nothing while not.
"""

import json
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

HEARTBEAT_SECONDS = 0.5  # CouchDB sends a blank line this often on a quiet feed
SILENT_BEATS = 4  # beats missed before a feed is taken for dead
BACKOFF_SECONDS = (0.1, 5.0)  # first and longest wait before following again
_log = Logger()


class ChangesFeed:
    def __init__(
        self,
        reactor: Any,
        base: str,
        headers: Headers,
        database: Callable[[], str],
        touched: Callable[[str], None],
    ) -> None:
        self._reactor = reactor
        self._base = base
        self._headers = headers
        self._database = database
        self._touched = touched
        self.following = False
        self._request: defer.Deferred[Any] | None = None
        self._followed = ""
        self._last_heard = 0.0
        self._stopped = False
        self._agent = Agent(reactor)
        self._watch = task.LoopingCall(self._check)
        self._watch.clock = reactor

    def start(self) -> None:
        self._watch.start(HEARTBEAT_SECONDS, now=False)
        defer.ensureDeferred(self._follow_forever())

    def stop(self) -> None:
        self._stopped = True
        if self._watch.running:
            self._watch.stop()
        self._drop()

    def _check(self) -> None:
        """Drop a feed of last period's database, or one fallen silent."""
        if self._request is None:
            return
        silent = self._reactor.seconds() - self._last_heard > SILENT_BEATS * HEARTBEAT_SECONDS
        if silent or self._database() != self._followed:
            self._drop()

    def _drop(self) -> None:
        self.following = False
        if self._request is not None:
            self._request.cancel()

    async def _follow_forever(self) -> None:
        delay = BACKOFF_SECONDS[0]
        while not self._stopped:
            try:
                await self._follow()
                delay = BACKOFF_SECONDS[0]  # it was followed: a rotation or a restart
            except Exception as error:
                _log.warn(
                    "CouchDB changes feed of {database} lost ({error}); following again in "
                    "{delay:.1f}s",
                    database=self._followed,
                    error=error,
                    delay=delay,
                )
            self.following = False
            self._request = None
            if self._stopped:
                return
            await task.deferLater(self._reactor, delay, lambda: None)
            delay = min(delay * 2, BACKOFF_SECONDS[1])

    async def _follow(self) -> None:
        self._followed = self._database()
        self._last_heard = self._reactor.seconds()
        url = (
            f"{self._base}/{self._followed}/_changes?feed=continuous&since=now"
            f"&heartbeat={int(HEARTBEAT_SECONDS * 1000)}"
        )
        # Twisted's own Agent, not treq's client: treq asks for gzip, and
        # CouchDB's gzip holds the heartbeats (and the changes) in its buffer.
        self._request = self._agent.request(b"GET", url.encode(), self._headers)
        response = await self._request
        if response.code != 200:
            await treq.content(response)
            raise RuntimeError(f"CouchDB answered {response.code}")
        self.following = True
        pending = b""

        def heard(data: bytes) -> None:
            nonlocal pending
            self._last_heard = self._reactor.seconds()
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if line.strip():
                    change = json.loads(line)
                    if "id" in change:
                        self._touched(change["id"])

        self._request = treq.collect(response, heard)
        await self._request
