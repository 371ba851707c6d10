"""Removing old tombstones, in short batches."""

import datetime
import re

from pgblobs.ops.output import progress

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
BATCH = 1000


def parse_duration(text):
    """'30d', '12h', '1w2d' -> timedelta; ValueError otherwise."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30d, 12h, 90m, 2w")
    return datetime.timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))


def describe(duration):
    """timedelta(days=30) -> '30 days'; the largest whole unit that fits."""
    seconds = int(duration.total_seconds())
    for name, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            count = seconds // size
            return f"{count} {name}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def purge(connection, older_than, dry_run=False):
    """Remove tombstones deleted more than ``older_than`` ago; the number removed
    (or, with ``dry_run``, that would be). Each batch is its own statement,
    and so its own transaction."""
    cutoff = datetime.datetime.now(datetime.UTC) - older_than
    total = connection.fetch_one("count_old_tombstones", {"cutoff": cutoff}).tombstones
    if dry_run or not total:
        return total
    removed = 0
    with progress(total, "tombstones", "purging") as bar:
        while True:
            batch = connection.execute("purge_tombstones", {"cutoff": cutoff, "batch": BATCH})
            removed += batch
            bar.update(batch)
            if batch == 0:
                return removed
