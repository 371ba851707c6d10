"""`pgblobs serve --services-tokens-file PATH`: Soledad's services tokens
file, beside `pgblobs service-token`'s tokens, re-read on SIGHUP."""

import itertools
import signal
import urllib.request
from urllib.error import HTTPError

import pytest

from tests.helpers import pgblobs_cli, token_header, wait_until
from tests.processes import ServeProcess, free_port

_deliveries = itertools.count()


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / "services.tokens"
    path.write_text(
        "# services of the provider\n"
        "\n"
        "mx:mx-token-from-the-file\n"
        "  # an indented comment\n"
        "#mx:commented-out\n"
        "other:other-token\n"
    )
    return path


def serve(dsn, tokens_file, *more):
    services = free_port()
    node = ServeProcess(
        "--dsn",
        dsn,
        "--services-listen",
        f"tcp:{services}:interface=127.0.0.1",
        "--services-tokens-file",
        str(tokens_file),
        *more,
    )
    node.services_url = f"http://127.0.0.1:{services}"
    return node


def deliver(node, service, token):
    """The status of delivering a message to alice as ``service``."""
    request = urllib.request.Request(
        f"{node.services_url}/incoming/alice/mail-{next(_deliveries)}",
        data=b"an encrypted message",
        method="PUT",
    )
    request.add_header("Authorization", token_header(service, token))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except HTTPError as error:
        return error.code


def test_tokens_of_the_file_and_of_the_table(dsn, tokens_file):
    made = pgblobs_cli("service-token", "create", "mx", "--dsn", dsn)
    assert made.returncode == 0, made.stderr
    node = serve(dsn, tokens_file)
    try:
        assert deliver(node, "mx", "mx-token-from-the-file") == 200
        assert deliver(node, "other", "other-token") == 200
        assert deliver(node, "mx", made.stdout.strip()) == 200  # pgblobs service-token's
        assert deliver(node, "mx", "other-token") == 401  # another service's
        assert deliver(node, "mx", "commented-out") == 401
        assert deliver(node, "mx", "wrong") == 401
    finally:
        assert node.stop() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_re_reads_the_file_in_every_worker(dsn, tokens_file, workers):
    node = serve(dsn, tokens_file, "--workers", workers)
    try:
        assert deliver(node, "mx", "mx-token-from-the-file") == 200
        tokens_file.write_text("mx:a-new-token\n")
        node.process.send_signal(signal.SIGHUP)
        # Every worker says it re-read the file (the supervisor holds none).
        wait_until(
            lambda: "".join(node.errors).count(f"re-read {tokens_file}") == int(workers),
            "every worker re-reading the file",
        )
        # Each delivery is a new connection, which any worker may accept.
        wait_until(
            lambda: all(deliver(node, "mx", "a-new-token") == 200 for _ in range(6)),
            "the added token accepted",
        )
        assert [deliver(node, "mx", "mx-token-from-the-file") for _ in range(6)] == [401] * 6
        assert [deliver(node, "other", "other-token") for _ in range(6)] == [401] * 6
        # A bad file on reload: the tokens read before stay, and the log says why.
        tokens_file.write_text("mx:a-new-token\nno colon here\n")
        node.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "kept the services tokens read before" in "".join(node.errors),
            "the bad file reported",
        )
        assert [deliver(node, "mx", "a-new-token") for _ in range(6)] == [200] * 6
    finally:
        assert node.stop() == 0


def test_a_bad_file_at_start_is_an_error_before_serving(dsn, tmp_path):
    bad = tmp_path / "services.tokens"
    bad.write_text("mx:fine\n\nmx-without-a-token\n")
    run = pgblobs_cli("serve", "--dsn", dsn, "--services-tokens-file", str(bad))
    assert run.returncode == 2
    assert f"{bad}, line 3: not service:token" in run.stderr
    missing = pgblobs_cli("serve", "--dsn", dsn, "--services-tokens-file", str(tmp_path / "no"))
    assert missing.returncode == 2
    assert "No such file" in missing.stderr
