"""`pgblobs serve` and the operator commands, as separate processes."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.error import HTTPError

import pytest

from pgblobs.serve import READY
from pgblobs.workers import WORKER_OPTION
from tests.helpers import pgblobs_cli, sql, token_header, wait_until
from tests.processes import ServeProcess, no_stray_postgres


def call(method, url, user, token, data=None, headers=None):
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": token_header(user, token), **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except HTTPError as error:
        return error.code, error.read()


def test_embedded_default_starts_from_nothing_and_keeps_its_data(open_tmp):
    data_dir = open_tmp / "embedded"
    server = ServeProcess("--data-dir", str(data_dir))
    try:
        token = server.dev_token()
        assert "curl" in "".join(server.output)
        status, _ = call("PUT", f"{server.url}/blobs/dev/first", "dev", token, data=b"hello")
        assert status == 200
        assert call("GET", f"{server.url}/blobs/dev/first", "dev", token) == (200, b"hello")
    finally:
        assert server.stop() == 0
    assert no_stray_postgres(data_dir)
    again = ServeProcess("--data-dir", str(data_dir))
    try:
        assert again.dev_token() == token
        assert call("GET", f"{again.url}/blobs/dev/first", "dev", token) == (200, b"hello")
        created = pgblobs_cli("token", "create", "erin", "--data-dir", str(data_dir))
        assert created.returncode == 0, created.stderr
        erin = created.stdout.strip()
        assert len(erin.split()) == 1 and len(erin) >= 40
        assert call("PUT", f"{again.url}/blobs/erin/x", "erin", erin, data=b"e")[0] == 200
    finally:
        assert again.stop(signal.SIGINT) == 0
    assert no_stray_postgres(data_dir)


def test_the_printed_mail_delivery_works_as_printed(open_tmp):
    """What `make run` prints for mail: paste the delivery, then the listing."""
    from tests.processes import free_port

    data_dir = open_tmp / "embedded"
    server = ServeProcess(
        "--data-dir", str(data_dir), "--services-listen", f"tcp:{free_port()}:interface=127.0.0.1"
    )
    try:
        printed = "".join(server.output)
        deliver, listing = [
            line.strip()
            for line in printed.splitlines()
            if "/incoming/dev/" in line or "filter_flag=PENDING" in line
        ]
        run = subprocess.run(
            ["bash", "-c", deliver], cwd=open_tmp, capture_output=True, text=True, timeout=30
        )
        assert run.returncode == 0, run.stderr
        listed = subprocess.run(["bash", "-c", listing], capture_output=True, text=True, timeout=30)
        assert json.loads(listed.stdout) == ["first-mail"]
    finally:
        assert server.stop() == 0
    assert no_stray_postgres(data_dir)


def test_embedded_default_explains_an_unreachable_data_dir(tmp_path):
    if os.geteuid() != 0:
        pytest.xfail("only root hands the cluster to the postgres account")
    done = pgblobs_cli(
        "serve", "--data-dir", str(tmp_path / "closed"), "--listen", "tcp:0:interface=127.0.0.1"
    )
    assert done.returncode != 0
    assert "cannot reach" in done.stderr and "Traceback" not in done.stderr


def test_serve_refuses_a_database_not_at_head(scratch_dsn):
    done = pgblobs_cli("serve", "--dsn", scratch_dsn, "--listen", "tcp:0:interface=127.0.0.1")
    assert done.returncode != 0
    assert "pgblobs db upgrade" in done.stderr
    assert "Traceback" not in done.stderr


def unread_by(port, peer_port):
    """Bytes the kernel holds, not yet read, for the local listener on ``port``
    on its connection from ``peer_port`` (Linux's /proc/net/tcp, in hex)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, _, queues = line.split()[1:5]
        if local.endswith(f":{port:04X}") and remote.endswith(f":{peer_port:04X}"):
            return int(queues.split(":")[1], 16)
    return None


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_sigterm_lets_a_request_in_flight_finish(dsn):
    token = pgblobs_cli("token", "create", "alice", "--dsn", dsn).stdout.strip()
    server = ServeProcess("--dsn", dsn)
    try:
        auth = token_header("alice", token).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(
                b"PUT /blobs/alice/slow HTTP/1.1\r\nHost: x\r\nAuthorization: "
                + auth
                + b"\r\nContent-Length: 10\r\n\r\n12345"
            )
            peer = client.getsockname()[1]
            wait_until(lambda: unread_by(server.port, peer) == 0, "read by the server")
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: not accepts(server.port), "no longer accepting")
            client.sendall(b"67890")
            answer = client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert server.stop() == 0
    finally:
        server.stop(signal.SIGKILL)
    assert sql(dsn, "SELECT size FROM pgblobs.blobs WHERE blob_id = 'slow'") == [(10,)]


def test_token_and_quota_commands(dsn):
    created = pgblobs_cli("token", "create", "carol", "--dsn", dsn)
    assert created.returncode == 0
    assert sql(dsn, "SELECT count(*) FROM pgblobs.tokens WHERE user_id = 'carol'") == [(1,)]
    stored = sql(dsn, "SELECT token_sha256 FROM pgblobs.tokens")[0][0]
    assert created.stdout.strip().encode() not in bytes(stored)
    assert pgblobs_cli("quota", "set", "carol", "1000", env={"PGBLOBS_DSN": dsn}).returncode == 0
    shown = pgblobs_cli("quota", "show", "carol", "--dsn", dsn)
    assert "1000 bytes" in shown.stdout
    assert pgblobs_cli("quota", "set", "carol", "unlimited", "--dsn", dsn).returncode == 0
    assert "unlimited" in pgblobs_cli("quota", "show", "carol", "--dsn", dsn).stdout
    assert pgblobs_cli("quota", "set", "carol", "default", "--dsn", dsn).returncode == 0
    assert "server default" in pgblobs_cli("quota", "show", "carol", "--dsn", dsn).stdout
    revoked = pgblobs_cli("token", "revoke", "carol", "--dsn", dsn)
    assert revoked.returncode == 0 and "1" in revoked.stdout
    assert sql(dsn, "SELECT count(*) FROM pgblobs.tokens") == [(0,)]
    for bad in (
        ["token", "create", "a/b", "--dsn", dsn],
        ["quota", "set", "carol", "-5", "--dsn", dsn],
        ["quota", "set", "carol", "lots", "--dsn", dsn],
        ["serve", "--quota-bytes", "default", "--dsn", dsn],
        ["report", "usage", "--quota-bytes", "default", "--dsn", dsn],
    ):
        failed = pgblobs_cli(*bad)
        assert failed.returncode != 0 and "Traceback" not in failed.stderr, bad


def test_a_json_log_line_per_event(dsn):
    server = ServeProcess("--dsn", dsn, "--log-format", "json", "--access-log")
    try:
        urllib.request.urlopen(f"{server.url}/", timeout=10).read()
    finally:
        assert server.stop() == 0
    # Every log line is a JSON object (beside the one "serving" announcement),
    # and the request we made is among them.
    lines = [line for line in server.output if not line.startswith(READY)]
    events = [json.loads(line) for line in lines]
    assert any('"GET / HTTP/1.1" 200' in event.get("log_io", "") for event in events), lines


@pytest.mark.slow
def test_memory_stays_bounded_during_a_1gib_put_and_a_1gib_get(dsn, tmp_path):
    token = pgblobs_cli("token", "create", "alice", "--dsn", dsn).stdout.strip()
    server = ServeProcess("--dsn", dsn, "--quota-bytes", "unlimited")
    auth = "Authorization: " + token_header("alice", token)
    gib = 1024**3

    def upload(blob_id):
        return subprocess.Popen(
            f"head -c {gib} /dev/urandom | curl -sS -o /dev/null -w '%{{http_code}}' "
            f"-T - -H '{auth}' {server.url}/blobs/alice/{blob_id}",
            shell=True,
            stdout=subprocess.PIPE,
            text=True,
        )

    try:
        first = upload("first")
        assert first.communicate(timeout=600)[0] == "200"
        baseline = server.rss_kib()
        second = upload("second")
        reading = subprocess.Popen(
            [
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
                "-H",
                auth,
                f"{server.url}/blobs/alice/first",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        peak = baseline
        while second.poll() is None or reading.poll() is None:
            peak = max(peak, server.rss_kib())
            time.sleep(0.05)
        assert second.communicate()[0] == "200"
        assert reading.communicate()[0] == f"200 {gib}"
        growth_mib = (peak - baseline) / 1024
        print(f"server RSS: {baseline / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB")
        assert growth_mib < 100, f"RSS grew by {growth_mib:.0f} MiB"
    finally:
        assert server.stop() == 0


def test_the_blob_size_limit_fits_a_stream_download(migrated_dsn):
    # A stream record carries a size in 8 hex digits: 4 GiB - 1 at most.
    refused = pgblobs_cli("serve", "--dsn", migrated_dsn, "--max-blob-bytes", str(4 * 1024**3))
    assert refused.returncode != 0
    assert "at most 4294967295" in refused.stderr
    token = pgblobs_cli("token", "create", "alice", "--dsn", migrated_dsn).stdout.strip()
    auth = token_header("alice", token).encode()
    server = ServeProcess("--dsn", migrated_dsn)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(
                b"PUT /blobs/alice/huge HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: " + auth + b"\r\n"
                b"Content-Length: 4294967296\r\n\r\n"
            )
            assert connection.recv(100).startswith(b"HTTP/1.1 413 ")
    finally:
        server.stop()


def workers_of(server):
    """The pids of a supervisor's worker processes."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    found = []
    for pid in children.read_text().split():
        try:
            if WORKER_OPTION.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(int(pid))
        except FileNotFoundError:
            pass  # it has just exited
    return found


def test_workers_share_the_socket_come_back_and_stop_with_the_embedded_database(open_tmp):
    data_dir = open_tmp / "workers"
    server = ServeProcess("--data-dir", str(data_dir), "--workers", "2")
    try:
        assert "(2 workers)" in "".join(server.output)
        token = server.dev_token()
        first = workers_of(server)
        assert len(first) == 2
        for i in range(40):
            status, _ = call("PUT", f"{server.url}/blobs/dev/b{i}", "dev", token, data=b"x")
            assert status == 200
        # A worker that dies is replaced, and the node keeps serving meanwhile.
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while len(set(workers_of(server)) - {first[0]}) < 2:
            assert time.monotonic() < deadline, "the worker was not started again"
            assert call("GET", f"{server.url}/blobs/dev/b1", "dev", token) == (200, b"x")
            time.sleep(0.1)
        assert call("GET", f"{server.url}/blobs/dev/", "dev", token)[0] == 200
        remaining = workers_of(server)
    finally:
        assert server.stop(signal.SIGINT) == 0
    for pid in remaining:
        assert not Path(f"/proc/{pid}").exists()
    assert no_stray_postgres(data_dir)


def test_workers_auto_is_one_per_core(migrated_dsn):
    server = ServeProcess("--dsn", migrated_dsn, "--workers", "auto")
    try:
        assert len(workers_of(server)) == os.cpu_count()
    finally:
        assert server.stop() == 0
