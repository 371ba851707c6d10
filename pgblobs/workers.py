"""``pgblobs serve --workers N``: N processes of one node sharing its sockets.

One Python process uses one core. The supervisor (the process the operator
started) opens the listening sockets, keeps the embedded PostgreSQL if there
is one, and starts N workers that inherit the sockets: the kernel hands
each new connection to one of them. The supervisor is told what to run (as
twisted's procmon is): the command line of a whole ``pgblobs serve``, its own
pool, drain and logging, to which it adds ``--worker SPEC`` (WorkerSpec: the
inherited sockets, the heartbeat pipe, the supervisor's pid). So a worker
parses its options exactly as ``pgblobs serve`` does, and this module knows
nothing of serving. A worker's standard output is relayed line by line,
but for the line that says it is ready, which the supervisor says once for
all. A worker that dies is started again. On
SIGINT or SIGTERM the supervisor passes SIGTERM on, waits until every
worker has drained and exited, and only then stops the database.

Liveness, both ways. Each worker's reactor writes a byte on a pipe of its
own every second (the heartbeat); a worker silent for 5 seconds (30 before
its first beat, while Python starts) is stopped, blocked or looping, and the
supervisor kills it (SIGKILL) and starts another, whose clients reconnect. A
worker whose supervisor is gone drains and exits as on SIGTERM: the kernel
sends it SIGTERM when the supervisor dies (PR_SET_PDEATHSIG, Linux), and
elsewhere its next beat finds the pipe closed.
"""

import ctypes
import json
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger

_log = Logger()
_RESTART_DELAY = 1.0
# Past the drain, how long a worker may take to exit before it is killed.
_EXIT_GRACE = 10.0
# The option that makes a `pgblobs serve` a worker, followed by its WorkerSpec.
WORKER_OPTION = "--worker"
HEARTBEAT_EVERY = 1.0  # seconds between a worker's beats
# Seconds of silence after which a worker is killed: once it has beaten, and
# from its start (Python and its imports may take a while on a busy machine).
SILENCE_LIMIT = 5.0
FIRST_BEAT_LIMIT = 30.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


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


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is handed besides its serve options: the listening
    sockets by site, as (file descriptor, address family) pairs, its end of
    the heartbeat pipe, and its supervisor's pid."""

    ports: dict[str, list[tuple[int, int]]]
    heartbeat_fd: int
    supervisor: int

    def to_argument(self) -> str:
        return json.dumps(
            {"ports": self.ports, "heartbeat_fd": self.heartbeat_fd, "supervisor": self.supervisor}
        )

    @classmethod
    def from_argument(cls, text: str) -> "WorkerSpec":
        values = json.loads(text)
        return cls(
            ports={
                site: [(fd, family) for fd, family in group]
                for site, group in values["ports"].items()
            },
            heartbeat_fd=values["heartbeat_fd"],
            supervisor=values["supervisor"],
        )


class _Worker(protocol.ProcessProtocol):
    def __init__(self, supervisor: "Supervisor", number: int, started: float) -> None:
        self._supervisor = supervisor
        self.number = number
        self.ready = False
        self.ended: Deferred[None] = Deferred()
        self._partial = b""
        self.last_beat = started
        self.has_beaten = False
        self.killed = False

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != self._supervisor.heartbeat_fd:
            return super().childDataReceived(childFD, data)
        self.last_beat = self._supervisor.now()
        self.has_beaten = True

    def silence(self, now: float) -> float | None:
        """Seconds this worker has been silent past its limit, or None."""
        limit = SILENCE_LIMIT if self.has_beaten else FIRST_BEAT_LIMIT
        silent = now - self.last_beat
        return silent if silent > limit and not self.killed and not self.ended.called else None

    def outReceived(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            ready_line = self._supervisor.ready_line
            if not self.ready and line.decode("utf-8", "replace").startswith(ready_line):
                self.ready = True
                self._supervisor.worker_ready()
                continue  # the supervisor says it once for all
            sys.stdout.buffer.write(line + b"\n")
        sys.stdout.flush()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self._supervisor.worker_ended(self, reason.value)


class Supervisor:
    """Starts ``count`` workers, each running ``command`` (an argv whose
    program takes WORKER_OPTION) on the inherited ``ports``; ``ready`` fires
    once every worker has printed a line starting with ``ready_line``."""

    def __init__(
        self,
        reactor: Any,
        command: Sequence[str],
        ports: dict[str, list[Any]],
        count: int,
        ready_line: str,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        """``environment``: the workers' (default: this process's), e.g. to
        hand them secrets that a command line would show to everyone (ps)."""
        self._reactor = reactor
        self._environment = dict(os.environ if environment is None else environment)
        self._ports = inherited(ports)
        self.ready_line = ready_line
        listening = [fd for group in self._ports.values() for fd, _ in group]
        # The worker's end of its heartbeat pipe: a number none of its other
        # descriptors has.
        self.heartbeat_fd = max([2, *listening]) + 1
        spec = WorkerSpec(self._ports, self.heartbeat_fd, os.getpid())
        self._command = [*command, WORKER_OPTION, spec.to_argument()]
        self._count = count
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._watch = task.LoopingCall.withCount(self._kill_the_silent)
        self._watch.clock = reactor
        self.ready: Deferred[None] = Deferred()

    def now(self) -> float:
        return self._reactor.seconds()

    def start(self) -> None:
        for number in range(self._count):
            self._spawn(number)
        self._watch.start(HEARTBEAT_EVERY, now=False)

    def _spawn(self, number: int) -> None:
        # From the reactor's thread, the supervisor's main thread: a worker's
        # parent-death signal fires when the thread that spawned it ends.
        worker = _Worker(self, number, self.now())
        descriptors: dict[int, Any] = {1: "r", 2: 2, self.heartbeat_fd: "r"}
        for group in self._ports.values():
            for fd, _ in group:
                descriptors[fd] = fd
        self._reactor.spawnProcess(
            worker,
            self._command[0],
            self._command,
            env=self._environment,
            childFDs=descriptors,
        )
        self._workers[number] = worker

    def _kill_the_silent(self, rounds: int) -> None:
        now = self.now()
        if rounds > 1:
            # Rounds were missed: this process was stopped or busy, and the
            # beats are still unread in the pipes. The silence is its own.
            for worker in self._workers.values():
                worker.last_beat = now
            return
        for worker in self._workers.values():
            silent = worker.silence(now)
            if silent is None:
                continue
            _log.warn(
                "worker {number} silent for {silent:.1f}s (no heartbeat); killing it",
                number=worker.number,
                silent=silent,
            )
            worker.killed = True
            _signal(worker, signal.SIGKILL)

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

    def signal_workers(self, signum: int) -> None:
        for worker in self._workers.values():
            _signal(worker, signum)

    def stop(self, drain_seconds: float) -> Deferred[None]:
        """SIGTERM to every worker; fires once all have exited (killing
        those still there ``drain_seconds`` + a grace later)."""
        self._stopping = True
        if self._watch.running:
            self._watch.stop()
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


def exit_with_supervisor(supervisor: int) -> None:
    """Have the kernel send SIGTERM to this worker when its supervisor dies
    (Linux; elsewhere the heartbeat's broken pipe says so a second later)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    if prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if os.getppid() != supervisor:  # it died before we asked
        raise SystemExit("pgblobs worker: the supervisor is gone")


class Heartbeat:
    """A byte on ``fd`` every HEARTBEAT_EVERY seconds, written by the reactor
    (so a worker whose reactor is stuck falls silent)."""

    def __init__(self, reactor: Any, fd: int) -> None:
        os.set_blocking(fd, False)  # never wait on a supervisor slow to read
        self._reactor = reactor
        self._fd = fd
        self._beating = task.LoopingCall(self._beat)
        self._beating.clock = reactor

    def start(self) -> None:
        self._beating.start(HEARTBEAT_EVERY)

    def _beat(self) -> None:
        try:
            os.write(self._fd, b".")
        except BlockingIOError:
            pass  # the pipe is full: the supervisor reads late, its clock will tell
        except BrokenPipeError:
            _log.warn("the supervisor is gone; stopping")
            self._beating.stop()
            self._reactor.stop()
