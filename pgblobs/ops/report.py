"""Usage reports from the reporting views (migrations/versions/0003)."""
from pgblobs import queries
from pgblobs.ops.output import human_size

USAGE_COLUMNS = ["user", "blobs", "bytes", "kib", "tombstones", "first_write", "last_write",
                 "quota_bytes", "used_percent"]
DAILY_COLUMNS = ["day", "blobs_written", "bytes_written", "blobs_deleted", "bytes_deleted"]
SIZE_COLUMNS = {"bytes": human_size, "quota_bytes": human_size,
                "bytes_written": human_size, "bytes_deleted": human_size}


def usage(connection, default_quota, user=None, top=None):
    """One dict per user, biggest first. ``quota_bytes`` is the override, or
    ``default_quota`` for users without one (None: unlimited)."""
    with connection.cursor() as cursor:
        rows = queries.execute(cursor, "report_usage", {
            "user": user, "top": top, "default_quota": default_quota}).fetchall()
    connection.rollback()
    report = []
    for user_id, blobs, live_bytes, kib, tombstones, first, last, quota in rows:
        used = None if not quota else round(100.0 * live_bytes / quota, 1)
        report.append({"user": user_id, "blobs": blobs, "bytes": int(live_bytes),
                       "kib": int(kib), "tombstones": tombstones, "first_write": first,
                       "last_write": last, "quota_bytes": quota, "used_percent": used})
    return report


def daily(connection, days):
    with connection.cursor() as cursor:
        rows = queries.execute(cursor, "report_daily", {"days": days}).fetchall()
    connection.rollback()
    return [dict(zip(DAILY_COLUMNS, row)) for row in rows]
