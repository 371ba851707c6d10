"""An online upgrade: a node running the previous release's code keeps serving
reads and writes, without one error, while `pgblobs db upgrade` (this code)
applies the newest revision under its load.

The previous release is the commit before the one that added the newest
migration, taken from git (a clone with its history, as the CI has) and run
with this venv's python, its package shadowing the installed one.
"""

import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from pgblobs.db import schema
from tests.helpers import content, pgblobs_command, sql
from tests.processes import ServeProcess
from tests.reliability.clients import Client

ROOT = Path(__file__).resolve().parents[2]
PHASE_SECONDS = 2.0  # of load before the upgrade, and again after it
WORKERS = 3


def git(*args):
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        pytest.fail("git is needed to take the previous release's code, and it is not installed")
    if done.returncode != 0:
        pytest.fail(f"`git {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def previous_release(directory):
    """The code of the commit before the newest migration was added, as an
    importable ``pgblobs`` package (its migrations inside, where the package
    maps them) in ``directory``; its revision."""
    newest = schema.head_revision()
    [migration] = (ROOT / "migrations" / "versions").glob(f"{newest}_*.py")
    added = git("log", "--diff-filter=A", "--format=%H", "--", str(migration.relative_to(ROOT)))
    if not added.split():
        pytest.fail(
            f"git knows no commit that added {migration.name}: the previous release is taken "
            "from the history, so this test needs a clone with its full history"
        )
    commit = added.split()[-1]
    parent = git("rev-list", "--parents", "-n", "1", commit).split()[1:]
    if not parent:
        pytest.fail(f"{commit} has no parent here: a shallow clone? `git fetch --unshallow`")
    archive = directory / "previous.tar"
    git("archive", "--format=tar", "-o", str(archive), parent[0], "pgblobs", "migrations")
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    (directory / "migrations").rename(directory / "pgblobs" / "migrations")
    return schema.revisions()[-2]


def old_code(directory, *args):
    done = subprocess.run(
        pgblobs_command(*args),
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, **shadowing(directory)),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def shadowing(directory):
    """What the environment adds so that ``directory``'s pgblobs shadows the
    installed one (and the working directory's: PYTHONSAFEPATH keeps it off
    the path)."""
    return {"PYTHONPATH": str(directory), "PYTHONSAFEPATH": "1"}


class Load:
    """Clients of one node doing every kind of request in a loop, each answer
    checked against the one status it must have; what they saw, by phase."""

    def __init__(self, url, tokens):
        self.phase = "before"
        self.answers = {"before": 0, "during": 0, "after": 0}
        self.errors = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(Client(url, user, token), worker))
            for worker, (user, token) in enumerate(tokens.items())
        ]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _check(self, what, answer, status, body=None):
        phase = self.phase
        self.answers[phase] += 1
        if answer[0] != status or (body is not None and answer[2] != body):
            self.errors.append(f"{phase}: {what}: {answer[0]} {answer[2][:200]!r}")

    def _run(self, client, worker):
        user = client.user
        small, large = content(1000, seed=worker), content(300_000, seed=worker)
        round_number = 0
        while not self._stop.is_set():
            round_number += 1
            one, big, pair = f"s{round_number}", f"l{round_number}", f"p{round_number}"
            self._check("put small", client.put(one, small), 200)
            self._check("put large", client.put(big, large), 200)
            self._check("get small", client.get(one), 200, small)
            self._check("get large", client.get(big), 200, large)
            flags = f"/blobs/{user}/{one}"
            self._check("set flags", client.request("POST", flags, b'["PENDING"]'), 200)
            self._check(
                "get flags",
                client.request("GET", flags + "?only_flags=True"),
                200,
                b'["PENDING"]',
            )
            self._check("list", client.request("GET", f"/blobs/{user}/"), 200)
            self._check(
                "list flagged", client.request("GET", f"/blobs/{user}/?filter_flag=PENDING"), 200
            )
            listing = json.dumps([[f"{pair}a", len(small)], [f"{pair}b", len(small)]])
            self._check(
                "stream upload",
                client.request(
                    "POST",
                    f"/stream/{user}?direction=upload",
                    listing.encode() + b"\n" + small + small,
                ),
                200,
            )
            self._check(
                "stream download",
                client.request(
                    "POST",
                    f"/stream/{user}?direction=download",
                    json.dumps([one, f"{pair}b"]).encode(),
                ),
                200,
            )
            self._check("delete", client.request("DELETE", f"/blobs/{user}/{big}"), 200)
            self._check("get deleted", client.get(big), 404)


def wait_for_answers(load, phase, deadline_seconds):
    """Let the load run ``PHASE_SECONDS`` in ``phase`` with answers coming."""
    load.phase = phase
    started = time.monotonic()
    counted = load.answers[phase]
    while time.monotonic() - started < PHASE_SECONDS or load.answers[phase] == counted:
        assert time.monotonic() - started < deadline_seconds, f"no answers {phase} the upgrade"
        time.sleep(0.05)


def test_a_node_of_the_previous_release_serves_through_the_upgrade(scratch_dsn, open_tmp):
    revision = previous_release(open_tmp)
    shadowed = subprocess.run(
        [sys.executable, "-c", "import pgblobs; print(pgblobs.__file__)"],
        capture_output=True,
        text=True,
        env=shadowing(open_tmp),
    ).stdout.strip()
    print("previous release runs from", shadowed)
    assert shadowed == str(open_tmp / "pgblobs" / "__init__.py")
    old_code(open_tmp, "db", "upgrade", "--dsn", scratch_dsn)
    assert sql(scratch_dsn, "SELECT version_num FROM pgblobs.alembic_version") == [(revision,)]

    users = [f"user{worker}" for worker in range(WORKERS)]
    tokens = {
        user: old_code(open_tmp, "token", "create", user, "--dsn", scratch_dsn).strip()
        for user in users
    }
    node = ServeProcess("--dsn", scratch_dsn, env=shadowing(open_tmp))
    try:
        with Load(node.url, tokens) as load:
            wait_for_answers(load, "before", 30)
            load.phase = "during"
            upgraded = subprocess.run(
                pgblobs_command("db", "upgrade", "--dsn", scratch_dsn),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert upgraded.returncode == 0, upgraded.stderr
            wait_for_answers(load, "after", 30)
    finally:
        node.stop()
    assert load.errors == [], "\n".join(load.errors[:20])
    assert all(load.answers.values()), load.answers
    assert sql(scratch_dsn, "SELECT version_num FROM pgblobs.alembic_version") == [
        (schema.head_revision(),)
    ]
