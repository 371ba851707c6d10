"""Removing rows in short batches: each batch its own statement (and so its
own transaction), run until one finds nothing left."""

from collections.abc import Callable

from pgblobs.ops.output import progress


def drain(batch: Callable[[], int], total: int, description: str, unit: str) -> int:
    """Run ``batch()``, which removes some rows and says how many, until it
    removes none; the number removed in all, shown against ``total`` on a
    progress bar (on a terminal)."""
    removed = 0
    with progress(total, description, unit=unit) as bar:
        while count := batch():
            removed += count
            bar.update(count)
    return removed
