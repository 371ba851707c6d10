"""The large-object ceiling: how much of the OID space blob contents use.

A large object is named by a 32-bit OID, drawn from one counter per cluster
that every OID-using object shares: about 4.29 billion in all, minus the
16,384 below FirstNormalObjectId. Once the counter has wrapped, creating a
large object probes past used values, so creation slows as the space fills,
long before it runs out (docs/scaling.md: what to do then).
"""

from dataclasses import dataclass

from pgblobs.db.queries import Row
from pgblobs.db.sync import SyncConnection

OID_SPACE = 2**32 - 16384
# Past this share of the OID space in use, fsck warns: new large objects
# start to cost extra probes, and moving users to another cluster takes time.
WARN_FRACTION = 0.25


@dataclass(frozen=True)
class Capacity:
    large_objects: int
    disk_bytes: int  # pg_largeobject on disk, indexes included

    @property
    def oids_left(self) -> int:
        return OID_SPACE - self.large_objects

    @property
    def used_fraction(self) -> float:
        return self.large_objects / OID_SPACE

    @property
    def warning(self) -> str | None:
        if self.used_fraction < WARN_FRACTION:
            return None
        return (
            f"large objects use {self.used_fraction:.0%} of the cluster's OID space "
            f"({self.large_objects:,} of {OID_SPACE:,}): creating them slows from here; "
            "plan to move users to another cluster (docs/scaling.md)"
        )


def of_row(row: Row) -> Capacity:
    """A Capacity from a row of the ``large_objects`` statement."""
    return Capacity(int(row.large_objects), int(row.disk_bytes))


def measure(connection: SyncConnection) -> Capacity:
    """Exact figures (report, fsck)."""
    return of_row(connection.fetch("large_objects", {"exact": True})[0])
