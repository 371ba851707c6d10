"""Removing old tombstones, in short batches."""

import datetime
import re

from pgblobs.db.sync import SyncConnection
from pgblobs.ops.batches import drain

_DURATION = re.compile(r"(\d+)([smhdw])")
# (letter in a duration, name, seconds), largest first
_UNITS = (
    ("w", "week", 604800),
    ("d", "day", 86400),
    ("h", "hour", 3600),
    ("m", "minute", 60),
    ("s", "second", 1),
)
_UNIT_SECONDS = {letter: seconds for letter, _, seconds in _UNITS}
BATCH = 1000


def parse_duration(text: str) -> datetime.timedelta:
    """'30d', '12h', '1w2d' -> timedelta; ValueError otherwise."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30d, 12h, 90m, 2w")
    return datetime.timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))


def describe(duration: datetime.timedelta) -> str:
    """timedelta(days=30) -> '30 days'; the largest whole unit that fits."""
    seconds = int(duration.total_seconds())
    # Zero is a whole number of every unit: it is said in seconds.
    name, size = next(
        ((name, size) for _, name, size in _UNITS if seconds and seconds % size == 0),
        ("second", 1),
    )
    count = seconds // size
    return f"{count} {name}{'s' if count != 1 else ''}"


def purge(connection: SyncConnection, older_than: datetime.timedelta, dry_run: bool = False) -> int:
    """Remove tombstones deleted more than ``older_than`` ago; the number removed
    (or, with ``dry_run``, that would be). Each batch is its own statement,
    and so its own transaction."""
    cutoff = datetime.datetime.now(datetime.UTC) - older_than
    total: int = connection.fetch("count_old_tombstones", {"cutoff": cutoff})[0].tombstones
    if dry_run or not total:
        return total
    return drain(
        lambda: int(
            connection.fetch("purge_tombstones", {"cutoff": cutoff, "batch": BATCH})[0].purged
        ),
        total,
        "purging",
        unit="tombstones",
    )
