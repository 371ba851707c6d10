"""pgblobs/db/notifications.py on a real PostgreSQL: a Listener whose
connection is cut says so, and says again when it hears once more (the change
feed reads again then: what it read while deaf may predate a notification
it missed)."""

from twisted.internet import reactor

from pgblobs.db.notifications import Listener
from tests.helpers import deferred_test, sql, until

CHANNEL = "pgblobs_test_channel"


@deferred_test
async def test_a_listener_cut_off_says_so_and_says_when_it_hears_again(dsn):
    heard, notified, resets = [], [], []
    listener = Listener(
        reactor,
        dsn,
        CHANNEL,
        notified.append,
        on_reset=lambda: resets.append(True),
        on_heard=lambda: heard.append(listener.listening),
    )
    await listener.start()
    try:
        assert heard == []  # the first LISTEN is the start's, not a return
        sql(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s",
            (f"LISTEN {CHANNEL}",),
        )
        await until(lambda: resets and listener.listening, "listening again", timeout=20)
        assert heard == [True]  # told once, and only once it listens
        sql(dsn, "SELECT pg_notify(%s, 'after')", (CHANNEL,))
        await until(lambda: notified == ["after"], "the next notification heard")
    finally:
        listener.stop()
