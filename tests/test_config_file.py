"""`pgblobs serve --config FILE` (and $PGBLOBS_CONFIG), and --print-config:
run as an operator runs them."""

import http.client
import os
import re
import signal
import socket
from pathlib import Path

import pytest

from pgblobs import settings
from pgblobs.commands.config_file import mask
from pgblobs.serve import ServeOptions, settings_of
from tests.helpers import pgblobs_cli, wait_until
from tests.processes import ServeProcess, free_port
from tests.test_serve import workers_of
from tests.test_workers import health, serving_pid

SAMPLE = Path(__file__).parent.parent / "contrib" / "pgblobs.toml"
# Neither a DSN nor a configuration file of the environment the suite runs in.
CLEAN = (settings.DSN_VARIABLE, settings.CONFIG_VARIABLE)


def configured(tmp_path: Path, text: str, *args: str, env: dict[str, str] | None = None):
    """`pgblobs serve --config FILE ARGS`, FILE holding ``text``."""
    path = tmp_path / "pgblobs.toml"
    path.write_text(text)
    return pgblobs_cli("serve", "--config", str(path), *args, env=env, unset=CLEAN)


def printed(tmp_path: Path, text: str, *args: str) -> dict[str, str]:
    """The effective settings --print-config prints, by key (values as written)."""
    run = configured(tmp_path, text, "--print-config", *args)
    assert run.returncode == 0, run.stderr
    return dict(re.findall(r"^([a-z-]+) = (.*)$", run.stdout, re.MULTILINE))


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("# a comment\npool-size = 16\n\npool_size = 3\n", "pool_size", 4),
        ('listen = ["tcp:9000"]\n[serve]\npool-size = 3\n', "serve", 2),
        ("pool-size = 3\n  serve.workers = 2\n", "serve", 2),
    ],
)
def test_an_unknown_key_is_refused_with_its_line_before_anything_starts(tmp_path, text, key, line):
    run = configured(tmp_path, text)
    assert run.returncode == 2
    assert f"line {line}, key {key!r}: unknown key" in run.stderr
    assert run.stdout == ""  # no database started, nothing listening


@pytest.mark.parametrize(
    ("text", "key", "line", "reason"),
    [
        ('\npool-size = "many"\n', "pool-size", 2, "invalid int value: 'many'"),
        ("workers = 0\n", "workers", 1, "must be at least 1"),
        ("max-blob-bytes = 4294967296\n", "max-blob-bytes", 1, "at most 4294967295"),
        ('access-log = "yes"\n', "access-log", 1, "must be true or false"),
        ('listen = "tcp:9000"\n', "listen", 1, "must be an array"),
        ("data-dir = 3\n", "data-dir", 1, "must be a string"),
        ('pool-size = "16"\n', "pool-size", 1, "must be a number, not a string"),
        ('drain-seconds = "7.5"\n', "drain-seconds", 1, "must be a number, not a string"),
        ('log-format = "xml"\n', "log-format", 1, "'xml' is none of 'text', 'json'"),
        (
            "statement-timeout = true\n",
            "statement-timeout",
            1,
            "must be a string or a number, not a boolean",
        ),
    ],
)
def test_a_value_of_the_wrong_type_or_range_is_refused_with_its_line(
    tmp_path, text, key, line, reason
):
    run = configured(tmp_path, text)
    assert run.returncode == 2
    assert f"line {line}, key {key!r}: {reason}" in run.stderr
    assert run.stdout == ""


def test_a_file_that_is_not_toml_is_a_usage_error(tmp_path):
    run = configured(tmp_path, "pool-size = \n")
    assert run.returncode == 2
    assert "not TOML" in run.stderr and "line 1" in run.stderr


def test_the_command_line_overrides_the_file(tmp_path):
    text = 'pool-size = 16\nlisten = ["tcp:1", "tcp:2"]\naccess-log = true\nworkers = 3\n'
    chosen = printed(tmp_path, text, "--pool-size", "8", "--listen", "tcp:3")
    # Given on the command line, even at its default value, the option wins;
    # a repeatable one replaces the file's list.
    assert chosen["pool-size"] == "8"
    assert chosen["listen"] == '["tcp:3"]'
    assert (chosen["access-log"], chosen["workers"]) == ("true", "3")
    assert printed(tmp_path, text)["listen"] == '["tcp:1", "tcp:2"]'


def test_the_environments_dsn_overrides_the_files(tmp_path):
    text = 'dsn = "host=from-the-file"\n'
    assert printed(tmp_path, text)["dsn"] == '"host=from-the-file"'
    environment = {settings.DSN_VARIABLE: "host=from-the-environment"}
    run = configured(tmp_path, text, "--print-config", env=environment)
    assert 'dsn = "host=from-the-environment"' in run.stdout
    overridden = configured(
        tmp_path, text, "--print-config", "--dsn", "host=given", env=environment
    )
    assert 'dsn = "host=given"' in overridden.stdout


def test_the_environments_user_tokens_override_the_files(tmp_path):
    # contrib/pgblobs.toml sets user-tokens at its default; a CouchDB URL kept
    # in the environment (its password out of the file) must still count.
    text = 'user-tokens = "pgblobs"\n'
    source = "couchdb:http://soledad:secret@127.0.0.1:5984"
    run = configured(tmp_path, text, "--print-config", env={settings.USER_TOKENS_VARIABLE: source})
    assert run.returncode == 0, run.stderr
    assert 'user-tokens = "couchdb:http://soledad:***@127.0.0.1:5984"' in run.stdout


def test_pgblobs_config_names_the_file_when_no_option_does(tmp_path):
    path = tmp_path / "from-the-environment.toml"
    path.write_text("pool-size = 5\n")
    run = pgblobs_cli(
        "serve",
        "--print-config",
        env={settings.CONFIG_VARIABLE: str(path)},
        unset=[settings.DSN_VARIABLE],
    )
    assert run.returncode == 0, run.stderr
    assert "\npool-size = 5\n" in run.stdout
    assert "\npool-size = 6\n" in configured(tmp_path, "pool-size = 6\n", "--print-config").stdout


def test_print_config_masks_passwords_and_gives_a_file_that_reads_back(tmp_path):
    text = (
        'dsn = "postgresql://blobs:s3cret@db.example/blobs"\n'
        "replica-dsn = [\"host=replica password='two words' dbname=blobs\", "
        '"host=other password=plain"]\n'
        'services-listen = ["tcp:9001:interface=127.0.0.1"]\n'
        'quota-blobs = "unlimited"\nidle-timeout = 2.5\n'
    )
    first = configured(tmp_path, text, "--print-config")
    assert first.returncode == 0, first.stderr
    for secret in ("s3cret", "two words", "plain"):
        assert secret not in first.stdout
    assert 'dsn = "postgresql://blobs:***@db.example/blobs"' in first.stdout
    assert "password=*** dbname=blobs" in first.stdout
    assert 'quota-blobs = "unlimited"' in first.stdout
    again = configured(tmp_path, first.stdout, "--print-config")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("couchdb:http://admin:pw@127.0.0.1:5984", "couchdb:http://admin:***@127.0.0.1:5984"),
        ("postgresql://u:p@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
        ("host=h password = 'a b\\'c' user=u", "host=h password = *** user=u"),
        ("tcp:9000:interface=127.0.0.1", "tcp:9000:interface=127.0.0.1"),
        ("host=h sslpassword=key-pass user=u", "host=h sslpassword=*** user=u"),
        ("postgresql://h/db?password=pw&user=u", "postgresql://h/db?password=***&user=u"),
    ],
)
def test_passwords_are_masked_wherever_they_are(value, shown):
    assert mask(value) == shown


def test_the_sample_file_names_every_key_at_its_default():
    keys = [name.replace("_", "-") for name, _, _ in settings_of(ServeOptions())]
    text = SAMPLE.read_text()
    missing = [key for key in keys if not re.search(rf"^(# )?{key} = ", text, re.MULTILINE)]
    assert missing == []
    sample = pgblobs_cli("serve", "--config", str(SAMPLE), "--print-config", unset=CLEAN)
    defaults = pgblobs_cli("serve", "--print-config", unset=CLEAN)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout == defaults.stdout


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_serve_runs_with_what_the_file_says(dsn, tmp_path):
    services = free_port()
    path = tmp_path / "pgblobs.toml"
    # The file's listener is replaced by the one ServeProcess gives on the command line.
    path.write_text(
        f'listen = ["tcp:{free_port()}:interface=127.0.0.1"]\n'
        f'services-listen = ["tcp:{services}:interface=127.0.0.1"]\n'
    )
    server = ServeProcess("--dsn", dsn, "--config", str(path))
    try:
        ready = wait_until(lambda: next((line for line in server.output if "serving" in line), ""))
        assert f"services on 127.0.0.1:{services}" in ready
        assert accepts(services) and accepts(server.port)
    finally:
        assert server.stop() == 0


def answered_by(server: ServeProcess) -> int:
    """The pid of the worker that answers a /health over a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        assert health(connection) == 200
        return serving_pid(connection, workers_of(server))
    finally:
        connection.close()


def test_a_worker_started_again_does_not_read_the_file_again(dsn, tmp_path):
    # Workers are told every option on their command line: a file edited
    # since the supervisor read it (here: broken) cannot stop them.
    path = tmp_path / "pgblobs.toml"
    path.write_text("workers = 2\n")
    server = ServeProcess("--dsn", dsn, env={settings.CONFIG_VARIABLE: str(path)})
    try:
        first = workers_of(server)
        assert len(first) == 2
        path.write_text("not-an-option = 1\n")
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: len(set(workers_of(server)) - {first[0]}) == 2, "a new worker")
        again = (set(workers_of(server)) - set(first)).pop()
        wait_until(lambda: answered_by(server) == again, "an answer from the new worker")
        assert "unknown key" not in "".join(server.errors)
    finally:
        assert server.stop() == 0
