import cProfile
import pstats
import random
import time
import uuid

from pgblobs.db.sync import SyncConnection
from pgblobs.ops import importfs
from tests.ops.soledad_store import SoledadStore


def test_profile(dsn, tmp_path):
    store = SoledadStore(tmp_path)
    rng = random.Random(19)
    for n in range(2000):
        user = f"user{n % 10}"
        blob_id = uuid.UUID(int=rng.getrandbits(128)).hex
        store.write(user, blob_id, rng.randbytes(rng.choice([100, 2_000, 10_000, 20_000])))
        if n % 4 == 1:
            store.set_flags(user, blob_id, ["PENDING"])
    conns = [SyncConnection.connect_at_head(dsn) for _ in range(2)]
    t = time.monotonic()
    importfs.import_tree(conns, tmp_path)
    print("first", time.monotonic() - t)
    t = time.monotonic()
    r = importfs.import_tree(conns, tmp_path)
    print("second", time.monotonic() - t, r.unchanged)
    t = time.monotonic()
    list(importfs.scan(tmp_path, importfs.ImportReport()))
    print("scan", time.monotonic() - t)
    pr = cProfile.Profile()
    pr.enable()
    importfs.import_tree(conns[:1], tmp_path)
    pr.disable()
    pstats.Stats(pr).sort_stats("cumulative").print_stats(25)
