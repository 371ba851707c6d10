"""A plain (not editable) install migrates and serves from any directory."""

import os
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from pgblobs.db import schema
from tests.processes import free_port

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parent.parent


def run(*command, cwd):
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_an_installed_package_migrates_and_serves_outside_the_checkout(scratch_dsn, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "-w",
        str(tmp_path / "dist"),
        str(REPOSITORY),
        cwd=elsewhere,
    )
    (wheel,) = (tmp_path / "dist").glob("pgblobs-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv), cwd=elsewhere)
    run(
        str(venv / "bin" / "pip"),
        "install",
        "--quiet",
        "--no-deps",
        "--no-index",
        str(wheel),
        cwd=elsewhere,
    )
    # The dependencies come from the test environment; pgblobs itself only from the wheel.
    site = Path(
        run(
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            cwd=elsewhere,
        ).strip()
    )
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    location = run(
        str(venv / "bin" / "python"), "-c", "import pgblobs; print(pgblobs.__file__)", cwd=elsewhere
    )
    assert location.startswith(str(site)), location

    pgblobs = str(venv / "bin" / "pgblobs")
    upgraded = run(pgblobs, "db", "upgrade", "--dsn", scratch_dsn, cwd=elsewhere)
    assert f"revision {schema.head_revision()}" in upgraded
    port = free_port()
    server = subprocess.Popen(
        [pgblobs, "serve", "--dsn", scratch_dsn, "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=elsewhere,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "pgblobs serve did not answer"
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(60)
    assert server.returncode == 0
