"""pgblobs under systemd: the units of contrib/systemd/ as systemd-analyze
verifies them, the notify protocol as systemd hears it (a datagram socket
this test binds), SIGHUP, and socket activation as systemd does it."""

import http.client
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pgblobs.systemd import SocketNotPassed
from tests.helpers import create_token, pgblobs_command, wait_until
from tests.processes import ServeProcess, free_port
from tests.test_serve import call, workers_of

UNITS = Path(__file__).parent.parent / "contrib" / "systemd"
INSTALLED_AT = "/opt/pgblobs/bin/pgblobs"  # where the units expect pgblobs (README)
WATCHDOG_USEC = 200_000  # pings every 0.1 s
_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    # The units as installed, but for pgblobs' path: this checkout's (verify
    # checks that the command exists).
    here = str(Path(sys.executable).parent / "pgblobs")
    copies = []
    for unit in sorted(UNITS.iterdir()):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED_AT, here))
        copies.append(str(copy))
    assert [Path(c).name for c in copies] == [
        "pgblobs-purge.service",
        "pgblobs-purge.timer",
        "pgblobs.service",
        "pgblobs.socket",
    ]
    run = subprocess.run(
        ["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 on a directive it does not know and only says so: any
    # line about these units fails.
    said = [line for line in (run.stdout + run.stderr).splitlines() if "pgblobs" in line]
    assert (run.returncode, said) == (0, [])


class NotifySocket:
    """What systemd listens on: a datagram socket, each message kept with
    the pid of its sender (SO_PASSCRED, as systemd checks NotifyAccess)."""

    def __init__(self, address):
        self.address = address
        self.messages = []  # (pid, the message's lines)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._socket.bind("\0" + address[1:] if address.startswith("@") else address)
        if not address.startswith("@"):
            os.chmod(address, 0o777)  # the embedded PostgreSQL's account could speak too
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self):
        while True:
            try:
                data, ancillary, _, _ = self._socket.recvmsg(4096, socket.CMSG_SPACE(12))
            except OSError:
                return  # closed
            pid = next(
                _CREDENTIALS.unpack(payload[:12])[0]
                for level, kind, payload in ancillary
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
            )
            self.messages.append((pid, data.decode().splitlines()))

    def lines(self):
        return [line for _, lines in self.messages for line in lines]

    def senders(self):
        return {pid for pid, _ in self.messages}

    def close(self):
        self._socket.close()


@pytest.fixture
def notify_socket(tmp_path):
    listening = NotifySocket(str(tmp_path / "notify"))
    yield listening
    listening.close()


def health(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status
    finally:
        connection.close()


def notified(socket_address, **env):
    return {"NOTIFY_SOCKET": socket_address, **env}


def test_serve_says_ready_once_serving_pings_the_watchdog_and_says_stopping(dsn, notify_socket):
    server = ServeProcess(
        "--dsn",
        dsn,
        env=notified(notify_socket.address, WATCHDOG_USEC=str(WATCHDOG_USEC)),
    )
    try:
        wait_until(lambda: "READY=1" in notify_socket.lines(), "READY=1")
        assert health(server.port) == 200
        lines = notify_socket.lines()
        assert lines[0] == "STATUS=starting"
        ready = lines.index("READY=1")
        assert lines[ready + 1] == f"STATUS=pgblobs is serving on 127.0.0.1:{server.port}"
        wait_until(lambda: notify_socket.lines().count("WATCHDOG=1") >= 5, "5 watchdog pings")
        assert "STOPPING=1" not in notify_socket.lines()
    finally:
        assert server.stop(signal.SIGTERM) == 0
    lines = notify_socket.lines()
    assert lines.index("STOPPING=1") > lines.index("READY=1")
    assert "STATUS=draining" in lines
    assert notify_socket.senders() == {server.process.pid}


def test_no_watchdog_pings_for_another_pid(dsn, notify_socket):
    server = ServeProcess(
        "--dsn",
        dsn,
        env=notified(notify_socket.address, WATCHDOG_USEC="1000", WATCHDOG_PID="1"),
    )
    try:
        wait_until(lambda: "READY=1" in notify_socket.lines(), "READY=1")
    finally:
        server.stop()
    assert "WATCHDOG=1" not in notify_socket.lines()


def test_an_abstract_notify_socket_and_a_database_not_answering_yet(tmp_path):
    address = f"@pgblobs-test-{os.getpid()}-{free_port()}"
    listening = NotifySocket(address)
    unreachable = f"host=127.0.0.1 port={free_port()} dbname=blobs connect_timeout=1"
    process = subprocess.Popen(
        pgblobs_command("serve", "--dsn", unreachable, "--listen", f"tcp:{free_port()}"),
        env=dict(os.environ, **notified(address)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: any(
                line.startswith("STATUS=waiting for the database") for line in listening.lines()
            ),
            "a status saying it waits for the database",
        )
        assert "READY=1" not in listening.lines()
    finally:
        process.terminate()
        assert process.wait(60) == 0
        listening.close()


def test_workers_and_the_embedded_database_leave_systemd_to_the_supervisor(open_tmp, notify_socket):
    server = ServeProcess(
        "--data-dir",
        str(open_tmp / "data"),
        "--workers",
        "2",
        env=notified(notify_socket.address, WATCHDOG_USEC=str(WATCHDOG_USEC)),
    )
    try:
        wait_until(lambda: "READY=1" in notify_socket.lines(), "READY=1")
        assert len(workers_of(server)) == 2
        wait_until(lambda: notify_socket.lines().count("WATCHDOG=1") >= 3, "3 watchdog pings")
        # SIGHUP (systemctl reload) is passed on, and ends none of them.
        workers = workers_of(server)
        server.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "".join(server.errors).count("SIGHUP: reloading") == 3,
            lambda: "the supervisor and both workers reloading:\n" + "".join(server.errors),
        )
        assert health(server.port) == 200
        assert workers_of(server) == workers
    finally:
        assert server.stop(signal.SIGTERM) == 0
    assert notify_socket.lines().count("READY=1") == 1
    assert "STOPPING=1" in notify_socket.lines()
    assert notify_socket.senders() == {server.process.pid}


def test_sighup_does_not_stop_a_single_process(dsn):
    server = ServeProcess("--dsn", dsn)
    try:
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: reloading" in "".join(server.errors), "a reload logged")
        assert health(server.port) == 200
    finally:
        assert server.stop() == 0


def activated(listener, *args, names="pgblobs.socket"):
    """`pgblobs serve ARGS --listen systemd:...` started as systemd starts a
    socket-activated service: ``listener`` on fd 3, LISTEN_FDS=1, LISTEN_PID
    its pid (known only in the child: a shell says it, then execs pgblobs),
    and LISTEN_FDNAMES unless ``names`` is None."""
    env = dict(os.environ, LISTEN_FDS="1", PYTHONUNBUFFERED="1")
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    command = pgblobs_command("serve", "--listen", "systemd:domain=INET:index=0", *args)
    return subprocess.Popen(
        ["sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', *command],
        env=env,
        pass_fds=(3,),
        preexec_fn=lambda: os.dup2(listener.fileno(), 3),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def listener():
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))
    bound.listen(64)
    yield bound
    bound.close()


def answers(port):
    try:
        return health(port) == 200
    except OSError:
        return False


@pytest.mark.parametrize("workers", ["1", "2"])
def test_socket_activation_serves_on_the_socket_systemd_passes(dsn, listener, workers):
    port = listener.getsockname()[1]
    process = activated(listener, "--dsn", dsn, "--workers", workers)
    listener.close()  # only the server holds it now, as when systemd hands it over
    try:
        wait_until(lambda: answers(port) or process.poll() is not None, "serving", timeout=60)
        assert process.poll() is None, process.communicate()
        token = create_token(dsn, "alice")
        url = f"http://127.0.0.1:{port}/blobs/alice/activated"
        assert call("PUT", url, "alice", token, data=b"through fd 3")[0] == 200
        assert call("GET", url, "alice", token) == (200, b"through fd 3")
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors


def test_a_systemd_endpoint_without_its_socket_is_one_readable_line(dsn, listener):
    # No LISTEN_FDNAMES: Twisted then takes nothing for passed (systemd has
    # set it since version 227, so serve does not guess names).
    process = activated(listener, "--dsn", dsn, names=None)
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 1
    assert errors.strip().splitlines()[-1] == "pgblobs: " + str(
        SocketNotPassed("systemd:domain=INET:index=0")
    )
