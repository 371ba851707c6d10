"""The `pgblobs serve` options and ServeOptions: one name per setting, one
default, and a command line that gives the same options back (how a
supervisor tells its workers what to serve)."""

from dataclasses import fields, is_dataclass
from typing import Any

import pytest

from pgblobs import settings
from pgblobs.cli import build_parser
from pgblobs.commands.config_file import STEERING
from pgblobs.commands.serve import serve_options
from pgblobs.serve import BackendOptions, ServeOptions, command_line
from pgblobs.web.site import Limits
from pgblobs.workers import WORKER_OPTION, WorkerSpec

# Every setting away from its default (test_the_sample_changes_every_setting).
SAMPLE = ServeOptions(
    dsn="host=/tmp/db dbname=blobs",
    listen=["tcp:9100:interface=127.0.0.1", "unix:/tmp/blobs.sock"],
    services_listen=["tcp:9101:interface=127.0.0.1"],
    data_dir="/srv/blobs",
    backend=BackendOptions(
        quota_bytes=None,
        quota_blobs=5,
        pool_size=3,
        max_waiting=7,
        statement_timeout=1.5,
        max_transfers_per_user=2,
        max_buffered_bytes=1000,
        replica_dsn=["host=replica1", "host=replica2"],
        replica_max_lag=0.25,
        max_held_changes_per_user=4,
        max_held_changes=40,
        upload_expiry=120.5,
        max_uploads_per_user=3,
    ),
    limits=Limits(
        max_blob_bytes=10,
        max_json_bytes=11,
        max_stream_ids=12,
        idle_timeout=1.25,
        header_timeout=2.5,
        min_upload_rate=0,
        upload_rate_window=0.1,
        max_connections=99,
        max_services_connections=3,
    ),
    drain_seconds=0.5,
    token_cache_seconds=0.0,
    user_tokens="couchdb:http://soledad:secret@127.0.0.1:5984",
    services_tokens_file="/etc/soledad/services.tokens",
    workers=3,
    log_format="json",
    access_log=True,
)


@pytest.fixture(autouse=True)
def no_dsn_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """--dsn defaults to $PGBLOBS_DSN; these tests compare with ServeOptions' None."""
    monkeypatch.delenv(settings.DSN_VARIABLE, raising=False)


def settings_of(options: Any) -> dict[str, Any]:
    """Every setting of ``options`` by name, those of its groups in their place."""
    found = {}
    for field in fields(options):
        value = getattr(options, field.name)
        found.update(settings_of(value) if is_dataclass(value) else {field.name: value})
    return found


def parsed(*arguments: str) -> ServeOptions:
    return serve_options(build_parser().parse_args(["serve", *arguments]))


def test_each_serve_option_is_the_setting_of_its_name() -> None:
    """But for the options that only steer the command (config_file.STEERING:
    --config, --print-config) and the hidden worker option."""
    args = vars(build_parser().parse_args(["serve"]))
    options = set(args) - {"command", "run", "worker"} - STEERING
    assert options == set(settings_of(ServeOptions()))


def test_the_options_default_to_the_python_defaults() -> None:
    assert parsed() == ServeOptions()


def test_the_sample_changes_every_setting() -> None:
    defaults = settings_of(ServeOptions())
    changed = settings_of(SAMPLE)
    assert [name for name in defaults if changed[name] == defaults[name]] == []


def test_a_command_line_gives_its_options_back() -> None:
    assert parsed(*command_line(SAMPLE)) == SAMPLE
    assert parsed(*command_line(ServeOptions())) == ServeOptions()
    assert (
        command_line(ServeOptions(backend=BackendOptions(quota_blobs=None))).count(
            "--quota-blobs=unlimited"
        )
        == 1
    )


def test_a_worker_is_told_its_sockets_on_the_serve_command_line() -> None:
    spec = WorkerSpec({"public": [(5, 2), (6, 10)], "services": []}, heartbeat_fd=7, supervisor=42)
    args = build_parser().parse_args(
        ["serve", *command_line(SAMPLE), WORKER_OPTION, spec.to_argument()]
    )
    assert args.worker == spec
    assert serve_options(args) == SAMPLE
