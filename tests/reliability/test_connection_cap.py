"""`--max-connections`: a flood of connections that never finish a request
cannot take a node's descriptors; past the cap a new connection is answered
503 at once, and clients already connected are served as before."""

import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import token_header
from tests.processes import ServeProcess, free_port
from tests.reliability.clients import token_for

REQUEST_LINE = b"GET /health HTTP/1.1\r\n"  # and never the rest of the request


def flood(port, count):
    """``count`` connections to ``port``, each having sent only a request line."""
    sockets = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        connection.sendall(REQUEST_LINE)
        sockets.append(connection)
    return sockets


def health_on_a_new_connection(port):
    """(status, body) of GET /health on a fresh connection; (0, reason) if it broke."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as error:
        return 0, repr(error).encode()
    finally:
        connection.close()


def open_descriptors(pid):
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_a_flood_of_connections_is_refused_and_connected_clients_are_served(dsn):
    token = token_for(dsn, "alice")
    server = ServeProcess("--dsn", dsn, "--max-connections", "768", "--header-timeout", "120")
    # The descriptor limit of the node, set on the running server.
    subprocess.run(["prlimit", f"--pid={server.process.pid}", "--nofile=1024:1024"], check=True)
    flooding = []
    try:
        connected = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        headers = {"Authorization": token_header("alice", token)}
        connected.request("GET", "/blobs/alice/", headers=headers)
        assert connected.getresponse().read() == b"[]"
        flooding = flood(server.port, 1200)
        # Past the cap, each new connection is told at once, and the node keeps
        # its descriptors: the 432 connections past the cap got a 503 each.
        answered = 0
        for connection in flooding[768:]:
            answer = connection.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"Retry-After: " in answer and b"too many connections" in answer
            answered += 1
        assert answered == 432
        assert open_descriptors(server.process.pid) < 1000
        status, body = health_on_a_new_connection(server.port)
        assert (status, b"too many connections" in body) == (503, True)
        # A client connected before the flood is served as before.
        connected.request("GET", "/blobs/alice/", headers=headers)
        assert connected.getresponse().read() == b"[]"
        connected.close()
        for connection in flooding:
            connection.close()
        deadline = time.monotonic() + 30
        while health_on_a_new_connection(server.port)[0] != 200:
            assert time.monotonic() < deadline, "new connections stayed refused"
            time.sleep(0.1)
    finally:
        for connection in flooding:
            connection.close()
        assert server.stop() == 0


def test_the_services_listener_has_a_cap_of_its_own(migrated_dsn):
    services_port = free_port()
    server = ServeProcess(
        "--dsn",
        migrated_dsn,
        "--services-listen",
        f"tcp:{services_port}:interface=127.0.0.1",
        "--max-connections",
        "50",
        "--max-services-connections",
        "5",
        "--header-timeout",
        "120",
    )
    flooding = []
    try:
        flooding = flood(services_port, 5)
        status, body = health_on_a_new_connection(services_port)
        assert (status, b"too many connections" in body) == (503, True)
        # The public listener's connections are counted apart.
        flooding += flood(server.port, 40)
        assert health_on_a_new_connection(server.port)[0] == 200
        for connection in flooding[:5]:
            connection.close()
        deadline = time.monotonic() + 30
        while health_on_a_new_connection(services_port)[0] != 200:
            assert time.monotonic() < deadline, "the services listener stayed refusing"
            time.sleep(0.1)
    finally:
        for connection in flooding:
            connection.close()
        assert server.stop() == 0


def test_the_default_cap_leaves_room_below_the_descriptor_limit():
    default = subprocess.run(
        [
            "prlimit",
            "--nofile=1024:1024",
            sys.executable,
            "-c",
            "from pgblobs import settings; print(settings.max_connections())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert default.stdout.strip() == "768"
