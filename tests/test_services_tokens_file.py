"""`pgblobs serve --services-tokens-file`: Soledad's services.tokens opens
the services listener besides `pgblobs service-token`'s tokens, and SIGHUP
re-reads it (a bad file on reload keeps the previous one; at start, exits)."""

import signal
import urllib.request
from urllib.error import HTTPError

import pytest

from pgblobs import accounts
from pgblobs.db.sync import SyncConnection
from tests.helpers import pgblobs_cli, token_header, wait_until
from tests.processes import ServeProcess, free_port

FILE = """# services of this provider
mx:first-mx-token

  # an indented comment, and blank lines, count for nothing
mx:second-mx-token
"""


def deliver(services_url, token, blob_id, service="mx"):
    """The status of an MX's delivery of a message to alice."""
    request = urllib.request.Request(
        f"{services_url}/incoming/alice/{blob_id}",
        data=b"an encrypted message",
        method="PUT",
        headers={"Authorization": token_header(service, token)},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except HTTPError as error:
        return error.code


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / "services.tokens"
    path.write_text(FILE)
    return path


def start(dsn, tokens_file, *more):
    services_port = free_port()
    server = ServeProcess(
        "--dsn",
        dsn,
        "--services-listen",
        f"tcp:{services_port}:interface=127.0.0.1",
        "--services-tokens-file",
        str(tokens_file),
        *more,
    )
    return server, f"http://127.0.0.1:{services_port}"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_file_and_the_table_both_open_the_services_listener(dsn, tokens_file, workers):
    connection = SyncConnection.connect(dsn)
    try:
        table_token = accounts.create_service_token(connection, "mx")
    finally:
        connection.close()
    server, services = start(dsn, tokens_file, "--workers", workers)
    try:
        assert deliver(services, "first-mx-token", "m1") == 200
        assert deliver(services, "second-mx-token", "m2") == 200
        assert deliver(services, table_token, "m3") == 200
        assert deliver(services, "not-a-token", "m4") == 401
        # A comment is not a token, and a token is only its own service's.
        assert deliver(services, "services of this provider", "m5") == 401
        assert deliver(services, "first-mx-token", "m6", service="other") == 401

        # SIGHUP re-reads the file: a token added works, one removed is
        # refused, on every worker the supervisor passes the signal to.
        tokens_file.write_text("mx:second-mx-token\nmx:added-mx-token\n")
        server.process.send_signal(signal.SIGHUP)
        attempts = iter(range(10_000))

        def reread():
            number = next(attempts)
            return (
                deliver(services, "added-mx-token", f"a{number}") == 200
                and deliver(services, "first-mx-token", f"f{number}") == 401
            )

        wait_until(reread, "the file re-read")
        for number in range(6):  # new connections, spread over the workers
            assert deliver(services, "added-mx-token", f"b{number}") == 200
            assert deliver(services, "first-mx-token", f"c{number}") == 401
        assert deliver(services, table_token, "m7") == 200

        # A bad file on reload keeps the previous one, and says why.
        tokens_file.write_text("this line has no token\n")
        server.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: any("not reloaded" in line for line in server.errors + server.output),
            "the bad file reported",
        )
        assert deliver(services, "added-mx-token", "m8") == 200
        assert server.process.poll() is None
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    "text, reason",
    [
        ("mx first-mx-token\n", "line 1"),
        ("# fine\nmx:\n", "line 2: no token"),
        ("m x:token\n", "line 1"),
    ],
)
def test_a_bad_file_at_start_is_an_exit_before_serving(dsn, tmp_path, text, reason):
    path = tmp_path / "services.tokens"
    path.write_text(text)
    done = pgblobs_cli(
        "serve",
        "--dsn",
        dsn,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--services-tokens-file",
        str(path),
    )
    assert done.returncode == 1
    assert reason in done.stderr and "Traceback" not in done.stderr
    assert "is serving" not in done.stdout


def test_a_missing_file_at_start_is_an_exit(dsn, tmp_path):
    done = pgblobs_cli(
        "serve",
        "--dsn",
        dsn,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--services-tokens-file",
        str(tmp_path / "absent"),
    )
    assert done.returncode == 1
    assert "cannot read" in done.stderr and "Traceback" not in done.stderr
