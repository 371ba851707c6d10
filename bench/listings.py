"""Another user's latency while big listings run (issue 17, item 9).

One user has 1,000,000 blobs; 8 clients list them all (newest first) again
and again while another user GETs a 1-byte blob, one request after another.
Figures: that GET alone and among the listings (p50, max), and the time of
one listing alone and among the others.

Run: python -m bench.listings [IDS]   (default 1000000); writes bench/listings.md.
"""

import statistics
import sys
import threading
import time
from pathlib import Path

from bench.measure import machine
from bench.scratch import new_database, serving
from pgblobs import accounts
from pgblobs.db.sync import SyncConnection
from tests.helpers import LISTED_SEED
from tests.reliability.clients import Client

HERE = Path(__file__).resolve().parent
LISTINGS = 8
ROUNDS = 3  # listings each client makes while the other user's GETs are timed
ALONE = 200  # GETs timed on an idle server


def timed(call):
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def client(node, connection, user):
    return Client(node.url, user, accounts.create_token(connection, user), timeout=300)


def measure(node, heavy, bob):
    path = "/blobs/heavy/?order_by=-date"

    def get_small():
        assert bob.get("small")[::2] == (200, b"1")

    def list_all():
        status, _, body = heavy.request("GET", path)
        assert status == 200 and body.startswith(b'["listed-'), status

    list_all()  # warm
    get_small()
    figures = {
        "GET alone": [timed(get_small) for _ in range(ALONE)],
        "listing alone": [timed(list_all) for _ in range(3)],
        "GET among listings": [],
        "listing among listings": [],
    }
    done = threading.Event()

    def list_again_and_again():
        for _ in range(ROUNDS):
            figures["listing among listings"].append(timed(list_all))
        done.set()

    listers = [threading.Thread(target=list_again_and_again) for _ in range(LISTINGS)]
    for lister in listers:
        lister.start()
    while not done.is_set():  # until the first client has made its listings
        figures["GET among listings"].append(timed(get_small))
    for lister in listers:
        lister.join()
    return figures


def main(count):
    info = machine()
    with new_database("pgblobs-bench-listings-") as dsn:
        connection = SyncConnection.connect(dsn)
        with connection.raw.cursor() as cursor:
            cursor.execute(LISTED_SEED, {"count": count})
            cursor.execute("VACUUM ANALYZE pgblobs.blobs")
        with serving(dsn, "--quota-bytes", "unlimited") as node:
            heavy, bob = client(node, connection, "heavy"), client(node, connection, "bob")
            connection.close()
            assert bob.put("small", b"1")[0] == 200
            print(f"{count:,} ids, {LISTINGS} clients listing them {ROUNDS} times each", flush=True)
            figures = measure(node, heavy, bob)
    lines = [
        "# Another user's GET while big listings run",
        "",
        f"{info['date']}, {info['revision']}; {info['machine']}; {info['postgres']}.",
        f"{count:,} ids listed newest first by {LISTINGS} clients at once, {ROUNDS} times each,",
        "while another user GETs a 1-byte blob, one request after another.",
        "Produced by `python -m bench.listings`.",
        "",
        "| figure | requests | p50 | max |",
        "|---|---:|---:|---:|",
    ]
    for name, times in figures.items():
        lines.append(
            f"| {name} | {len(times)} | {statistics.median(times) * 1000:.1f} ms "
            f"| {max(times) * 1000:.1f} ms |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "listings.md").write_text(text)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
