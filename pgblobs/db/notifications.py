"""LISTEN: one connection that hears a PostgreSQL channel, across restarts.

A node that remembers something another node may change (valid tokens)
must hear every change, or remember nothing. So the listener says when it
starts and stops hearing: ``on_reset`` runs whenever the connection is lost
(forget everything: notifications sent meanwhile are gone), and
``listening`` is true only between a successful LISTEN and the next loss.

A connection can also go quiet without being lost: the server's backend
stuck, or a link that silently drops everything. So every ``CHECK_EVERY``
seconds the LISTEN is sent again (a no-op round trip on the listening
connection itself); one not answered within ``CHECK_DEADLINE`` cuts the
connection, which counts as its loss.
"""

from collections.abc import Callable
from typing import Any

from psycopg2.extensions import Notify
from psycopg2.extras import NamedTupleCursor
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from txpostgres import txpostgres

from pgblobs.db.pool import Reconnector, within_deadline

CHECK_EVERY = 1.0
CHECK_DEADLINE = 2.0


class Listener:
    """Calls ``on_notify(payload)`` for each notification on ``channel``;
    ``on_heard()`` (optional) once it hears again after a loss, since what
    was read while it was deaf may predate a notification it missed."""

    def __init__(
        self,
        reactor: Any,
        dsn: str,
        channel: str,
        on_notify: Callable[[str], None],
        on_reset: Callable[[], None],
        on_heard: Callable[[], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._dsn = dsn
        # A channel name is an identifier: ours are constants, never input.
        self._listen = f"LISTEN {channel}"
        self._channel = channel
        self._on_notify = on_notify
        self._on_reset = on_reset
        self._on_heard = on_heard
        self.listening = False
        detector = Reconnector(reactor, recovered=self._relisten, lost=self._lost)
        self._connection = txpostgres.Connection(reactor, detector=detector)
        self._connection.addNotifyObserver(self._notified)
        self._checks = task.LoopingCall(self._check)
        self._checks.clock = reactor

    def start(self) -> Deferred[None]:
        async def starting() -> None:
            await self._connection.connect(self._dsn, cursor_factory=NamedTupleCursor)
            await self._listen_within_deadline()
            self.listening = True
            self._checks.start(CHECK_EVERY, now=False)

        return defer.ensureDeferred(starting())

    def _listen_within_deadline(self) -> Deferred[None]:
        return within_deadline(
            self._reactor,
            CHECK_DEADLINE,
            self._connection,
            self._connection.runOperation(self._listen),
        )

    def _check(self) -> Deferred[None] | None:
        """LISTEN again, unless a reconnection is under way (its own LISTEN
        follows). The next check waits for this one."""
        if not self.listening:
            return None
        # A failure is the detector's business: it reconnects.
        return self._listen_within_deadline().addErrback(lambda _: None)

    def _notified(self, notify: Notify) -> None:
        if notify.channel == self._channel:
            self._on_notify(notify.payload)

    def _lost(self, reason: Failure) -> None:
        self.listening = False
        self._on_reset()

    def _relisten(self, detector: Reconnector) -> None:
        def heard(_: object) -> None:
            self.listening = True
            if self._on_heard is not None:
                self._on_heard()

        # A failed LISTEN means the connection died again: the detector
        # has started over, and ``listening`` stays false.
        self._listen_within_deadline().addCallbacks(heard, lambda _: None)

    def stop(self) -> None:
        self.listening = False
        if self._checks.running:
            self._checks.stop()
        detector = self._connection.detector
        if detector is not None:
            detector.stopped = True
        self._connection.detector = None  # closed on purpose: stay closed
        try:
            self._connection.close()
        except AttributeError:
            pass  # never opened
