"""The systemd notify protocol (sd_notify(3)), spoken without libsystemd:
datagrams of ``NAME=value`` lines to the socket named by $NOTIFY_SOCKET (a
path, or an abstract socket when it starts with ``@``).

Only the process systemd started speaks: ``Notifier.from_environment``
takes the protocol's variables out of the environment, so that no child
(a worker, the embedded PostgreSQL, which speaks the protocol as well)
inherits them and talks to systemd in this process's name.
"""

import os
import socket
from collections.abc import MutableMapping
from typing import Any

from twisted.internet import task
from twisted.logger import Logger

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
SYSTEMD_PREFIX = "systemd:"  # of the --listen endpoints of sockets systemd passes
_log = Logger()


class SocketNotPassed(ValueError):
    """A ``systemd:`` endpoint names a socket that systemd did not pass."""

    def __init__(self, description: str) -> None:
        super().__init__(
            f"--listen {description}: no such socket was passed by systemd (socket activation "
            "sets LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES, as systemd does since version "
            "227: is the .socket unit active, and does the service name it?)"
        )


class Notifier:
    """Tells systemd how this process fares; says nothing when ``address`` is None."""

    def __init__(self, address: str | None, watchdog_every: float | None = None) -> None:
        """``address``: $NOTIFY_SOCKET; ``watchdog_every``: seconds between
        WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None for none."""
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self._address = address
        self._socket: socket.socket | None = None
        self.watchdog_every = watchdog_every

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> "Notifier":
        """The notifier $NOTIFY_SOCKET and $WATCHDOG_USEC ask for (the
        watchdog only if $WATCHDOG_PID, when set, is this process), taking
        those variables out of ``environ``."""
        address = environ.pop(NOTIFY_SOCKET, None) or None
        usec, pid = environ.pop(WATCHDOG_USEC, ""), environ.pop(WATCHDOG_PID, "")
        watchdog_every = None
        if usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid())):
            watchdog_every = int(usec) / 2 / 1e6
        return cls(address, watchdog_every)

    def send(self, **fields: str) -> None:
        """One datagram: a ``NAME=value`` line per field (in upper case)."""
        if self._address is None:
            return
        message = "".join(f"{name.upper()}={value}\n" for name, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message.encode(), self._address)
        except OSError as error:  # systemd has gone away, or never listened: serve on
            _log.warn(
                "could not notify systemd ({message!r}): {error}", message=message, error=error
            )

    def status(self, text: str) -> None:
        self.send(status=text)

    def ready(self, status: str) -> None:
        self.send(ready="1", status=status)

    def stopping(self, status: str) -> None:
        self.send(stopping="1", status=status)

    def start_watchdog(self, reactor: Any) -> None:
        """WATCHDOG=1 every ``watchdog_every`` seconds, sent by the reactor (a
        reactor that stops turning stops the pings, and systemd restarts the
        service), until the reactor stops."""
        if self._address is None or self.watchdog_every is None:
            return
        pings = task.LoopingCall(self.send, watchdog="1")
        pings.clock = reactor
        pings.start(self.watchdog_every)
        reactor.addSystemEventTrigger("before", "shutdown", pings.stop)
