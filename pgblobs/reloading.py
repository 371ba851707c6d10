"""SIGHUP: what a serving process re-reads when told to (``systemctl reload``,
whose ExecReload sends SIGHUP).

Whatever can be re-read registers a callback with ``on_reload``; a
supervisor registers one that passes the signal on to its workers. Without
a handler SIGHUP would end the process, so every ``pgblobs serve`` installs
one, even with nothing to re-read.
"""

import signal
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

_log = Logger()
_callbacks: list[Callable[[], object]] = []


def on_reload(callback: Callable[[], object]) -> None:
    """Have ``callback()`` (which may return a Deferred) run on each SIGHUP."""
    _callbacks.append(callback)


def install(reactor: Any) -> None:
    """Run the callbacks on the reactor's thread whenever SIGHUP arrives."""
    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))


def reload() -> None:
    _log.info("SIGHUP: reloading ({count} to re-read)", count=len(_callbacks))
    for callback in list(_callbacks):
        defer.maybeDeferred(callback).addErrback(
            lambda failure: _log.failure("a reload failed", failure)
        )
