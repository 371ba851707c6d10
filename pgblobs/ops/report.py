"""Usage reports from the reporting views (migrations/versions/0003), and the
resumable uploads in progress (pgblobs.uploads)."""

from pgblobs.db.sync import SyncConnection
from pgblobs.ops import capacity
from pgblobs.ops.output import human_size

USAGE_COLUMNS = [
    "user",
    "blobs",
    "bytes",
    "kib",
    "tombstones",
    "first_write",
    "last_write",
    "quota_bytes",
    "used_percent",
    # Uploads in progress: how many, the bytes they have received so far, and
    # the bytes they reserve of the quota (their whole lengths).
    "uploads",
    "received_bytes",
    "reserved_bytes",
]
UPLOADS_COLUMNS = ["uploads", "users", "received_bytes", "reserved_bytes"]
DAILY_COLUMNS = ["day", "blobs_written", "bytes_written", "blobs_deleted", "bytes_deleted"]
LARGE_OBJECT_COLUMNS = ["large_objects", "disk_bytes", "oids_left", "oids_used_percent"]
SIZE_COLUMNS = {
    "disk_bytes": human_size,
    "bytes": human_size,
    "quota_bytes": human_size,
    "bytes_written": human_size,
    "bytes_deleted": human_size,
    "received_bytes": human_size,
    "reserved_bytes": human_size,
}


def usage(
    connection: SyncConnection,
    default_quota: int | None,
    user: str | None = None,
    top: int | None = None,
) -> list[dict[str, object]]:
    """One dict per user (with blobs, tombstones or uploads in progress),
    biggest first. ``quota_bytes`` is the override, or ``default_quota`` for
    users without one (None: unlimited)."""
    rows = connection.fetch(
        "report_usage", {"user": user, "top": top, "default_quota": default_quota}
    )
    report = []
    for row in rows:
        quota = row.quota_bytes
        used = None if not quota else round(100.0 * row.live_bytes / quota, 1)
        report.append(
            {
                "user": row.user_id,
                "blobs": row.live_blobs,
                "bytes": int(row.live_bytes),
                "kib": int(row.live_kib),
                "tombstones": row.tombstones,
                "first_write": row.first_write,
                "last_write": row.last_write,
                "quota_bytes": quota,
                "used_percent": used,
                "uploads": row.uploads,
                "received_bytes": int(row.received_bytes),
                "reserved_bytes": int(row.reserved_bytes),
            }
        )
    return report


def daily(connection: SyncConnection, days: int) -> list[dict[str, object]]:
    """One dict per day of the last ``days``, the day's writes and deletes."""
    return [
        {column: getattr(row, column) for column in DAILY_COLUMNS}
        for row in connection.fetch("report_daily", {"days": days})
    ]


def large_objects(connection: SyncConnection) -> list[dict[str, object]]:
    """One row: the large objects, their bytes on disk, and the OIDs left."""
    measured = capacity.measure(connection)
    return [
        {
            "large_objects": measured.large_objects,
            "disk_bytes": measured.disk_bytes,
            "oids_left": measured.oids_left,
            "oids_used_percent": round(100 * measured.used_fraction, 4),
        }
    ]


def uploads(connection: SyncConnection) -> list[dict[str, object]]:
    """One row: the uploads in progress, of how many users, the bytes they
    have received and the bytes they reserve."""
    row = connection.fetch("uploads_in_progress")[0]
    return [{column: int(getattr(row, column)) for column in UPLOADS_COLUMNS}]
