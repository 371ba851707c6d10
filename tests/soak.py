"""`make soak`: two nodes, ~50 clients, a node killed and PostgreSQL restarted.

Not part of `make test`. Run: python -m tests.soak [--minutes N] [--clients N]
At the end every blob a client was told was stored must read back
byte-identical, per-user counts and usage must match the clients' own
ledgers, and fsck must find no unreferenced large object.
"""

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from pgblobs.cluster import LocalCluster
from pgblobs.db import schema
from tests.helpers import pgblobs_command, sql
from tests.processes import ServeProcess
from tests.reliability.clients import Client, token_for

SIZES = [10, 200, 4_000, 60_000, 300_000, 2_000_000]


class Worker(threading.Thread):
    """One user: a mixed workload, and a ledger of what the servers promised."""

    def __init__(self, number, token, clients, stop, statuses):
        super().__init__(daemon=True)
        self.user = f"soak{number}"
        self.token = token
        self.clients = clients  # one per node; replaced when a node restarts
        self.stop_event = stop
        self.statuses = statuses
        self.random = random.Random(number)
        self.stored = {}  # blob id -> bytes, acknowledged with 200
        self.uncertain = set()  # PUT/DELETE whose answer was lost: may or may not have happened

    def client(self):
        return self.random.choice(self.clients)

    def run(self):
        serial = 0
        while not self.stop_event.is_set():
            action = self.random.choices(
                ["put", "get", "list", "flags", "delete"], [5, 4, 1, 1, 2]
            )[0]
            if action == "put" or not self.stored:
                serial += 1
                blob_id = f"b{serial}"
                data = self.random.randbytes(self.random.choice(SIZES))
                status = self.client().put(blob_id, data)[0]
                self.statuses[status] += 1
                if status == 200:
                    self.stored[blob_id] = data
                elif status not in (507, 409):
                    # 503 or a broken connection: the commit may have happened anyway.
                    self.uncertain.add(blob_id)
                continue
            blob_id = self.random.choice(sorted(self.stored))
            client = self.client()
            if action == "get":
                status, _, body = client.get(blob_id)
                self.statuses[status] += 1
                assert status != 200 or body == self.stored[blob_id], (
                    f"{self.user}/{blob_id} differs"
                )
            elif action == "list":
                self.statuses[client.request("GET", f"/blobs/{self.user}/")[0]] += 1
            elif action == "flags":
                status = client.request(
                    "POST", f"/blobs/{self.user}/{blob_id}", body=b'["PROCESSED"]'
                )[0]
                self.statuses[status] += 1
            else:
                status = client.request("DELETE", f"/blobs/{self.user}/{blob_id}")[0]
                self.statuses[status] += 1
                if status == 200:
                    del self.stored[blob_id]
                elif status != 404:
                    self.uncertain.add(blob_id)
                    del self.stored[blob_id]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pgblobs-soak-"))
    os.chmod(workdir, 0o755)
    cluster = LocalCluster(workdir / "pg")
    cluster.start()
    nodes = []
    try:
        schema.upgrade(cluster.dsn)
        serve_args = ("--dsn", cluster.dsn, "--quota-bytes", "unlimited")
        nodes = [ServeProcess(*serve_args), ServeProcess(*serve_args)]
        stop, statuses = threading.Event(), collections.Counter()
        workers = []
        for number in range(args.clients):
            token = token_for(cluster.dsn, f"soak{number}")
            workers.append(
                Worker(
                    number,
                    token,
                    [Client(n.url, f"soak{number}", token) for n in nodes],
                    stop,
                    statuses,
                )
            )
        for worker in workers:
            worker.start()
        third = args.minutes * 60 / 3
        time.sleep(third)
        print("killing node 1 (SIGKILL) and starting it again", flush=True)
        nodes[1].stop(signal.SIGKILL)
        nodes[1] = ServeProcess(*serve_args)
        for worker in workers:
            worker.clients[1] = Client(nodes[1].url, worker.user, worker.token)
        time.sleep(third)
        print("restarting PostgreSQL (fast shutdown)", flush=True)
        cluster.stop()
        cluster.start()
        time.sleep(third)
        stop.set()
        for worker in workers:
            worker.join(120)
        print(f"requests by status: {dict(sorted(statuses.items()))}")
        check(cluster, nodes, workers)
    finally:
        for node in nodes:
            node.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def check(cluster, nodes, workers):
    blobs = mismatched = 0
    for worker in workers:
        client = worker.clients[0]
        for blob_id, data in worker.stored.items():
            status, _, body = client.get(blob_id)
            blobs += 1
            if (status, body) != (200, data):
                mismatched += 1
                print(f"LOST {worker.user}/{blob_id}: {status}, {len(body)} bytes")
        live = {
            blob_id
            for (blob_id,) in sql(
                cluster.dsn,
                """
            SELECT blob_id FROM pgblobs.blobs WHERE user_id = %s AND deleted_at IS NULL""",
                (worker.user,),
            )
        }
        unexplained = live - set(worker.stored) - worker.uncertain
        missing = set(worker.stored) - live
        if unexplained or missing:
            mismatched += 1
            print(
                f"{worker.user}: counts disagree: extra {sorted(unexplained)}, "
                f"missing {sorted(missing)}"
            )
        kib = sql(
            cluster.dsn,
            "SELECT live_kib FROM pgblobs.usage_by_user WHERE user_id = %s",
            (worker.user,),
        )
        expected = sql(
            cluster.dsn,
            """SELECT (coalesce(sum(size), 0)::bigint + 1023) / 1024
                       FROM pgblobs.blobs WHERE user_id = %s AND deleted_at IS NULL""",
            (worker.user,),
        )
        if kib and kib != expected:
            mismatched += 1
            print(f"{worker.user}: usage {kib} but blobs add up to {expected}")
    fsck = subprocess.run(
        pgblobs_command("fsck", "--dsn", cluster.dsn), capture_output=True, text=True
    )
    uncertain = sum(len(w.uncertain) for w in workers)
    print(
        f"checked {blobs} acknowledged blobs of {len(workers)} users: "
        f"{mismatched} problem(s); {uncertain} answer(s) lost in the faults; "
        f"fsck: {fsck.stdout.strip()}"
    )
    if mismatched or fsck.returncode != 0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
