"""The cutover from Soledad's filesystem store, step by step (README,
"Switching from Soledad's blobs server"): how long each `pgblobs import-fs`
and `pgblobs export-fs` of the switch takes, through the real CLI, on a new
cluster with fsync on.

A Soledad tree of random bytes (PostgreSQL compresses repeats; clients send
encrypted blobs) is written as Soledad's FilesystemBlobsBackend writes it
(tests/ops/soledad_store.py): SMALL blobs of 10 KB over USERS users, LARGE
of 8 MiB, a tenth flagged, 2 % deleted. Then: the first import; 1 % new
blobs, 0.5 % deleted and 0.5 % flagged again, as Soledad would while the
import ran, and the catch-up import; an import over the unchanged store;
export-fs into an empty directory (the way back), and again over it.
Writes bench/cutover.md.

    python -m bench.cutover [SMALL [LARGE]]
"""

import datetime
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.scratch import new_database
from tests.ops.soledad_store import SoledadStore

USERS = 4
SMALL, SMALL_SIZE = 20_000, 10_000
LARGE, LARGE_SIZE = 20, 8 * 1024 * 1024
FLAGS = ["PENDING"]
RESULTS = Path(__file__).with_name("cutover.md")


def _cli(*args: str) -> tuple[float, str]:
    """Seconds `pgblobs ARGS` took, and its last line; a failure stops the bench."""
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pgblobs.cli", *args], capture_output=True, text=True
    )
    took = time.monotonic() - started
    if run.returncode != 0:
        raise SystemExit(f"pgblobs {args[0]} failed ({run.returncode}):\n{run.stderr[-2000:]}")
    lines = (run.stdout + run.stderr).strip().splitlines()
    return took, lines[-1] if lines else ""


class _Store:
    """The Soledad tree, and the ids it holds live."""

    def __init__(self, root: Path) -> None:
        self.soledad = SoledadStore(root)
        self.live: list[tuple[str, str]] = []
        self._next = 0

    def write(self, count: int, size: int) -> None:
        for _ in range(count):
            user, blob_id = f"user{self._next % USERS}", f"blob{self._next:08d}"
            self._next += 1
            self.soledad.write(user, blob_id, os.urandom(size))
            self.live.append((user, blob_id))

    def flag(self, count: int, chooser: random.Random) -> None:
        for user, blob_id in chooser.sample(self.live, count):
            self.soledad.set_flags(user, blob_id, FLAGS)

    def delete(self, count: int, chooser: random.Random) -> None:
        for user, blob_id in chooser.sample(self.live, count):
            self.soledad.delete(user, blob_id)
            self.live.remove((user, blob_id))


def main(small: int = SMALL, large: int = LARGE) -> None:
    chooser = random.Random(19)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="pgblobs-cutover-") as work,
        new_database("pgblobs-cutover-db-") as dsn,
    ):
        root, back = Path(work) / "soledad", Path(work) / "back"
        store = _Store(root)
        store.write(small, SMALL_SIZE)
        store.write(large, LARGE_SIZE)
        store.flag(small // 10, chooser)
        store.delete(small // 50, chooser)
        total = small * SMALL_SIZE + large * LARGE_SIZE
        first, said = _cli("import-fs", str(root), "--dsn", dsn)
        rows.append(
            ("first import", f"{small + large:,} blobs, {total / 2**20:,.0f} MiB", first, said)
        )

        store.write(small // 100, SMALL_SIZE)
        store.delete(small // 200, chooser)
        store.flag(small // 200, chooser)
        took, said = _cli("import-fs", str(root), "--dsn", dsn)
        changes = f"{small // 100:,} new, {small // 200:,} deleted, {small // 200:,} flagged"
        rows.append(("catch-up import", changes, took, said))

        unchanged, said = _cli("import-fs", str(root), "--dsn", dsn)
        rows.append(("import, store unchanged", "nothing changed", unchanged, said))

        took, said = _cli("export-fs", str(back), "--dsn", dsn)
        rows.append(("export-fs (the way back)", "everything, into an empty directory", took, said))
        took, said = _cli("export-fs", str(back), "--dsn", dsn)
        rows.append(("export-fs again", "over the first export", took, said))
    _write(rows, unchanged / first)


def _write(rows: list[tuple[str, str, float, str]], ratio: float) -> None:
    lines = [
        "# The cutover from Soledad's filesystem store, step by step",
        "",
        f"`python -m bench.cutover`, {datetime.date.today()}, {os.cpu_count()} cores "
        "(shared: other work ran meanwhile); each step through the real CLI (its own "
        "start-up, about 1 s, included), fsync on.",
        "",
        "| step | what | seconds | what the command said |",
        "|---|---|---|---|",
        *(f"| {step} | {what} | {took:.1f} | {said} |" for step, what, took, said in rows),
        "",
        f"The import over the unchanged store took {ratio:.2f}x the first import's time.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(*(int(argument) for argument in sys.argv[1:3]))
