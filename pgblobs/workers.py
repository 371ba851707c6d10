"""``pgblobs serve --workers N``: N processes of one node sharing its sockets.

One Python process uses one core. The supervisor (the process the operator
started) opens the listening sockets, keeps the embedded PostgreSQL if there
is one, and starts N workers (``python -m pgblobs.workers``) that inherit
the sockets: the kernel hands each new connection to one of them. Each
worker is a whole ``serve`` (its own pool, drain and logging); its standard
output is relayed line by line. A worker that dies is started again. On
SIGINT or SIGTERM the supervisor passes SIGTERM on, waits until every
worker has drained and exited, and only then stops the database.
"""

import json
import os
import signal
import socket
import sys
from dataclasses import asdict
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger

_log = Logger()
_RESTART_DELAY = 1.0
# Past the drain, how long a worker may take to exit before it is killed.
_EXIT_GRACE = 10.0
READY = "pgblobs is serving"  # the line a serve prints once it accepts requests


def _family(port: Any) -> int:
    host = port.getHost()
    if getattr(host, "type", None) == "TCP6" or ":" in getattr(host, "host", ""):
        return socket.AF_INET6
    if hasattr(host, "name"):
        return socket.AF_UNIX
    return socket.AF_INET


def inherited(ports: dict[str, list[Any]]) -> dict[str, list[tuple[int, int]]]:
    """(file descriptor, address family) of each listening port, by site."""
    return {
        site: [(port.fileno(), _family(port)) for port in group] for site, group in ports.items()
    }


class _Worker(protocol.ProcessProtocol):
    def __init__(self, supervisor: "Supervisor", number: int) -> None:
        self._supervisor = supervisor
        self.number = number
        self.ready = False
        self.ended: Deferred[None] = Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if not self.ready and line.decode("utf-8", "replace").startswith(READY):
                self.ready = True
                self._supervisor.worker_ready()
                continue  # the supervisor says it once for all
            sys.stdout.buffer.write(line + b"\n")
        sys.stdout.flush()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self._supervisor.worker_ended(self, reason.value)


class Supervisor:
    """Starts ``count`` workers serving ``options`` (a ServeOptions whose
    ``dsn`` is set) on the inherited ``ports``; ``ready`` fires once every
    worker accepts requests."""

    def __init__(self, reactor: Any, options: Any, ports: dict[str, list[Any]], count: int) -> None:
        self._reactor = reactor
        self._ports = inherited(ports)
        self._settings = json.dumps(
            {"options": asdict(options), "ports": self._ports, "log_format": options.log_format}
        )
        self._count = count
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self.ready: Deferred[None] = Deferred()

    def start(self) -> None:
        for number in range(self._count):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        worker = _Worker(self, number)
        descriptors: dict[int, Any] = {1: "r", 2: 2}
        for group in self._ports.values():
            for fd, _ in group:
                descriptors[fd] = fd
        self._reactor.spawnProcess(
            worker,
            sys.executable,
            [sys.executable, "-m", "pgblobs.workers", self._settings],
            env=os.environ,
            childFDs=descriptors,
        )
        self._workers[number] = worker

    def worker_ready(self) -> None:
        if not self.ready.called and all(w.ready for w in self._workers.values()):
            self.ready.callback(None)

    def worker_ended(self, worker: _Worker, reason: BaseException) -> None:
        if self._stopping or self._workers.get(worker.number) is not worker:
            return
        _log.warn(
            "worker {number} ended ({reason}); starting it again",
            number=worker.number,
            reason=reason,
        )
        self._reactor.callLater(_RESTART_DELAY, self._respawn, worker.number)

    def _respawn(self, number: int) -> None:
        if not self._stopping:
            self._spawn(number)

    def stop(self, drain_seconds: float) -> Deferred[None]:
        """SIGTERM to every worker; fires once all have exited (killing
        those still there ``drain_seconds`` + a grace later)."""
        self._stopping = True
        workers = list(self._workers.values())
        for worker in workers:
            _signal(worker, signal.SIGTERM)

        def kill_stragglers() -> None:
            for worker in workers:
                _signal(worker, signal.SIGKILL)

        deadline = self._reactor.callLater(drain_seconds + _EXIT_GRACE, kill_stragglers)

        def all_ended(_: object) -> None:
            if deadline.active():
                deadline.cancel()

        ended = defer.gatherResults([worker.ended for worker in workers])
        return ended.addCallback(all_ended)


def _signal(worker: _Worker, signum: int) -> None:
    transport = worker.transport
    if transport is not None and not worker.ended.called:
        try:
            transport.signalProcess(signum)
        except OSError:
            pass  # it has just exited


def _main(argv: list[str]) -> None:
    from twisted.internet import reactor, task

    from pgblobs import serve

    settings = json.loads(argv[1])
    options = serve.ServeOptions.from_dict(settings["options"])
    ports = {site: [tuple(pair) for pair in group] for site, group in settings["ports"].items()}
    serve.start_logging(settings["log_format"])
    task.react(lambda _: defer.ensureDeferred(serve.run(reactor, options, inherited=ports)))


if __name__ == "__main__":
    _main(sys.argv)
