"""The liveness of `pgblobs serve --workers N`: a worker that stops answering
is replaced, and nothing outlives a supervisor that is killed."""

import http.client
import os
import signal
import time
from pathlib import Path

from pgblobs.workers import SILENCE_LIMIT
from tests.processes import ServeProcess
from tests.test_serve import workers_of


def _hex_port(port: int) -> str:
    return f"{port:04X}"


def serving_pid(connection: http.client.HTTPConnection, pids: list[int]) -> int:
    """Which of ``pids`` holds the server's end of ``connection`` (a loopback TCP one)."""
    assert connection.sock is not None
    client_port = connection.sock.getsockname()[1]
    server_port = connection.sock.getpeername()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if (local, remote) == (_hex_port(server_port), _hex_port(client_port)):
            inode = fields[9]
    assert inode is not None, "the server's end of the connection is not in /proc/net/tcp"
    for pid in pids:
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(descriptor) == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                pass  # closed meanwhile
    raise AssertionError(f"no worker of {pids} holds socket {inode}")


def is_gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie nobody reaped has exited too)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def health(connection: http.client.HTTPConnection) -> int:
    connection.request("GET", "/health")
    response = connection.getresponse()
    response.read()
    return response.status


def test_a_stopped_worker_is_replaced_and_its_clients_answered_again(migrated_dsn):
    server = ServeProcess("--dsn", migrated_dsn, "--workers", "2")
    stopped = None
    connections = [
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=60) for _ in range(12)
    ]
    try:
        for connection in connections:
            assert health(connection) == 200
        pids = workers_of(server)
        stopped = serving_pid(connections[0], pids)
        os.kill(stopped, signal.SIGSTOP)
        # Each keep-alive client is answered, or its connection is closed
        # (the stopped worker killed) and a new one is answered; none waits
        # past the generous socket timeout.
        for connection in connections:
            try:
                status = health(connection)
            except TimeoutError:
                raise AssertionError("a keep-alive client got no answer in 60 s") from None
            except (OSError, http.client.HTTPException):
                connection.close()
                status = health(connection)
            assert status == 200
        assert is_gone(stopped)
        deadline = time.monotonic() + 60
        while len(set(workers_of(server)) - {stopped}) < 2:
            assert time.monotonic() < deadline, "the stopped worker was not replaced"
            time.sleep(0.1)
        assert "silent" in "".join(server.errors), server.errors
    finally:
        for connection in connections:
            connection.close()
        if stopped is not None and not is_gone(stopped):
            os.kill(stopped, signal.SIGKILL)
        assert server.stop() == 0


def test_nothing_outlives_a_killed_supervisor(open_tmp):
    data_dir = open_tmp / "orphans"
    server = ServeProcess("--data-dir", str(data_dir), "--workers", "2")
    postmaster = int((data_dir / "data" / "postmaster.pid").read_text().split()[0])
    left = [*workers_of(server), postmaster]
    assert len(left) == 3
    server.process.kill()
    server.process.wait()
    deadline = time.monotonic() + 30
    try:
        while not all(is_gone(pid) for pid in left):
            assert time.monotonic() < deadline, [pid for pid in left if not is_gone(pid)]
            time.sleep(0.1)
    finally:
        for pid in left:
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_paused_supervisor_does_not_blame_its_workers(migrated_dsn):
    server = ServeProcess("--dsn", migrated_dsn, "--workers", "2")
    first, second = workers_of(server)
    try:
        os.kill(server.process.pid, signal.SIGSTOP)
        time.sleep(SILENCE_LIMIT + 3)  # the pause itself, longer than a worker may be silent
        os.kill(server.process.pid, signal.SIGCONT)
        # Its watch runs again, and a worker stopped now is the only one killed.
        os.kill(first, signal.SIGSTOP)
        deadline = time.monotonic() + 60
        while not is_gone(first):
            assert time.monotonic() < deadline, "the stopped worker was not killed"
            time.sleep(0.1)
        assert second in workers_of(server)
        assert "".join(server.errors).count("no heartbeat") == 1, server.errors
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        if not is_gone(first):
            os.kill(first, signal.SIGKILL)
        assert server.stop() == 0
