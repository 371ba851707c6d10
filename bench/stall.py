"""One user's big stream upload against everyone else's small writes (issue
17, item 3).

On a new cluster, one `pgblobs serve` (``--max-stream-ids`` raised to let it
through): a stream upload of ``BLOBS`` empty blobs for one user, two 1-byte
PUTs of that user, and, while they run, ``OTHERS`` 1-byte PUTs of 40 other
users. Prints the other users' PUT latency (p50 and max) alone and meanwhile:
they must not wait for the upload's rows.

    python -m bench.stall [BLOBS]
"""

import json
import statistics
import sys
import threading
import time

import psycopg2
import treq
from twisted.internet import defer, task

from bench.scratch import new_database, serving
from pgblobs import accounts
from pgblobs.db.sync import SyncConnection
from tests.helpers import token_header

BLOBS = 30_000
OTHERS = 320
OTHER_USERS = 40


async def _timed(request):
    """Seconds until the answer is in; a failed request counts as never answered."""
    started = time.monotonic()
    try:
        response = await request
        await response.content()
    except Exception:
        return float("inf")
    return time.monotonic() - started if response.code == 200 else float("inf")


async def _others(url, tokens, prefix):
    """Seconds each of the other users' 1-byte PUTs took, sent all at once."""
    return await defer.gatherResults(
        [
            defer.ensureDeferred(
                _timed(
                    treq.put(
                        f"{url}/blobs/u{i % OTHER_USERS}/{prefix}{i}",
                        data=b"x",
                        headers=tokens[f"u{i % OTHER_USERS}"],
                    )
                )
            )
            for i in range(OTHERS)
        ]
    )


def _summary(seconds):
    failed = sum(1 for s in seconds if s == float("inf"))
    answered = [s for s in seconds if s != float("inf")] or [float("inf")]
    return f"p50 {statistics.median(seconds):.3f} s, max {max(answered):.3f} s" + (
        f", {failed} failed" if failed else ""
    )


# Whether the lock of the user "heavy" is held: an advisory lock's 64-bit key
# shows in pg_locks as two 32-bit halves.
_HEAVY_LOCK_HELD = """
    WITH k AS (SELECT pgblobs.user_lock_key('heavy') AS key)
    SELECT count(*) FROM pg_locks, k
    WHERE locktype = 'advisory' AND granted
      AND classid::bigint = (key >> 32) & 4294967295 AND objid::bigint = key & 4294967295
"""


class _LockWatch:
    """Watches, from a thread, whether a writer holds the lock of "heavy";
    ``held`` fires when it is first seen."""

    def __init__(self, reactor, dsn):
        self.held = defer.Deferred()
        self.seconds = 0.0  # seen held, in all
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(reactor, dsn), daemon=True)
        self._thread.start()

    def _watch(self, reactor, dsn):
        connection = psycopg2.connect(dsn)
        connection.autocommit = True
        with connection.cursor() as cursor:
            first = None
            while not self._stop.is_set():
                cursor.execute(_HEAVY_LOCK_HELD)
                now = time.monotonic()
                if cursor.fetchone()[0]:
                    if first is None:
                        first = now
                        reactor.callFromThread(self.held.callback, None)
                    self.seconds = now - first
                time.sleep(0.005)
        connection.close()

    def stop(self):
        self._stop.set()
        self._thread.join()


async def _run(reactor, url, dsn, tokens, blobs):
    alone = await _others(url, tokens, "alone")
    listing = json.dumps([[f"s{i}", 0] for i in range(blobs)]).encode() + b"\n"
    watch = _LockWatch(reactor, dsn)
    upload = defer.ensureDeferred(
        _timed(
            treq.post(f"{url}/stream/heavy?direction=upload", data=listing, headers=tokens["heavy"])
        )
    )
    # The moment the upload's rows start to commit (under its user's lock),
    # or its end if the lock is held too briefly to be seen.
    await defer.DeferredList([watch.held, upload], fireOnOneCallback=True)
    own = [
        defer.ensureDeferred(
            _timed(treq.put(f"{url}/blobs/heavy/p{i}", data=b"x", headers=tokens["heavy"]))
        )
        for i in range(2)
    ]
    meanwhile = await _others(url, tokens, "meanwhile")
    upload_seconds = await upload
    own_seconds = await defer.gatherResults(own)
    watch.stop()
    print(f"{OTHERS} 1-byte PUTs of {OTHER_USERS} users, alone: {_summary(alone)}")
    print(
        f"the same once one user's stream upload of {blobs:,} empty blobs commits its rows: "
        f"{_summary(meanwhile)}"
    )
    print(
        f"the stream upload: {upload_seconds:.1f} s, its user's lock seen held for "
        f"{watch.seconds:.2f} s; that user's own 1-byte PUTs: {max(own_seconds):.2f} s"
    )


def main(blobs):
    with new_database("pgblobs-stall-") as dsn:
        connection = SyncConnection.connect(dsn)
        tokens = {
            user: {b"Authorization": [token_header(user, accounts.create_token(connection, user))]}
            for user in ["heavy", *(f"u{i}" for i in range(OTHER_USERS))]
        }
        connection.close()
        options = ("--max-stream-ids", str(blobs), "--max-json-bytes", "16777216")
        with serving(dsn, *options) as node:
            task.react(
                lambda reactor: defer.ensureDeferred(_run(reactor, node.url, dsn, tokens, blobs))
            )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else BLOBS)
